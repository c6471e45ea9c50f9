"""Build the Serve application from a ServeConfig, and export it as a Serve config file.

The same ``build`` is the import path of the exported config (``serve.app:build``), so
``mistral-serve up``, ``serve deploy`` and the Helm chart run one construction.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from model.config import ModelConfig
from serve.autoscaling import autoscaling_policy_config
from serve.config import IngressSettings, ServeConfig
from serve.ingress.deployment import Ingress
from serve.server.deployment import LLMServer

ROUTER_PATH = "serve.routing.router:PrefixSessionRouter"


def _cluster_has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


# CPU replicas share the machine's cores (torch uses all of them whatever Ray books), so
# each books half a CPU: two replicas and the Ingress fit a 2-core machine.
CPU_REPLICA_CPUS = 0.5
# What each tensor-parallel worker of a CPU replica books (its own process and rank).
CPU_WORKER_CPUS = 1.0
INGRESS_CPUS = 0.25
# How long Serve gives a draining Ingress replica before killing it: above its own drain of
# the streams in flight (serve/ingress/deployment.py).
INGRESS_SHUTDOWN_S = 30.0


def uses_gpus(config: ServeConfig) -> bool:
    return config.engine.device != "cpu" and (
        config.accelerator == "gpu" or (config.accelerator == "auto" and _cluster_has_gpus()))


def llm_server_options(config: ServeConfig) -> dict[str, Any]:
    """Replica resources: bundle 0 for the replica, then one bundle per tensor-parallel rank
    (a GPU each on GPU clusters), STRICT_PACK so a model copy never spans nodes."""
    tp = config.tensor_parallel_size
    gpu = uses_gpus(config)
    options: dict[str, Any] = {
        # Each Ingress replica's output channel holds one call open (serve/server/channel.py).
        "max_ongoing_requests": config.replica_max_ongoing_requests
        + (config.ingress_replicas if config.prefix_routing else 0),
        "max_queued_requests": config.caller_max_queued_requests,
        "request_router_config": RequestRouterConfig(
            request_router_class=ROUTER_PATH,
            request_router_kwargs={"redis_url": config.redis_url,
                                   "session_ttl_s": config.session_ttl_s},
            request_routing_stats_period_s=2.0) if config.prefix_routing
        else RequestRouterConfig(),
        "graceful_shutdown_timeout_s": 30.0,
        "health_check_period_s": 10.0,
    }
    if config.autoscaling is not None:
        bounds = config.autoscaling
        autoscaling: dict[str, Any] = {
            "min_replicas": bounds.min_replicas, "max_replicas": bounds.max_replicas,
            "target_ongoing_requests": bounds.target_ongoing_requests,
            # Scale on the engines' waiting queues and KV use (serve/autoscaling.py).
            "policy": autoscaling_policy_config(bounds.target_waiting_requests,
                                                bounds.target_kv_cache_usage)}
        for delay in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(bounds, delay) is not None:
                autoscaling[delay] = getattr(bounds, delay)
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = config.replicas
    if tp == 1:
        options["ray_actor_options"] = {"num_cpus": 1 if gpu else CPU_REPLICA_CPUS,
                                        "num_gpus": 1 if gpu else 0}
    else:
        worker = {"GPU": 1} if gpu else {"CPU": CPU_WORKER_CPUS}
        options["ray_actor_options"] = {"num_cpus": 0.5}
        options["placement_group_bundles"] = [{"CPU": 0.5}] + [dict(worker)] * tp
        options["placement_group_strategy"] = "STRICT_PACK"
    if config.replica_env:
        # Ray hands a runtime env on to the actors the replica starts (its TP workers).
        options["ray_actor_options"]["runtime_env"] = {"env_vars": dict(config.replica_env)}
    return options


def replica_cpu_threads(config: ServeConfig, gpu: bool, machine_cpus: int,
                        num_nodes: int) -> int | None:
    """Threads each rank of a CPU replica computes with: ``engine.cpu_threads`` when set,
    else the cores the replica owns. On one machine that is the machine's cores split over
    every rank the app may run there (a lone replica uses them all, two halve them); on a
    cluster, the CPUs a rank books, since Ray may pack other replicas beside it. GPU ranks
    keep torch's default (their host threads only launch kernels).

    Example: 2 cores, 1 replica, tp=1 → 2; ``--replicas 2`` → 1 each; 16 cores, tp=2,
    ``--max-replicas 2`` → 4 per rank."""
    if config.engine.cpu_threads is not None or gpu:
        return config.engine.cpu_threads
    replicas = config.autoscaling.max_replicas if config.autoscaling else config.replicas
    ranks = replicas * config.tensor_parallel_size
    if num_nodes <= 1:
        return max(1, machine_cpus // ranks)
    booked = CPU_REPLICA_CPUS if config.tensor_parallel_size == 1 else CPU_WORKER_CPUS
    return max(1, math.ceil(booked))


def _machine_shape() -> tuple[int, int]:
    """This machine's usable cores and the Ray cluster's live nodes (1 without Ray)."""
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive")) if ray.is_initialized() else 1
    return len(os.sched_getaffinity(0)), nodes


def ingress_options(config: ServeConfig) -> dict[str, Any]:
    """The Ingress replicas serve their clients on their own servers, outside Serve's
    request accounting: Serve calls them only for stats and probes."""
    options: dict[str, Any] = {
        "num_replicas": config.ingress_replicas,
        "max_ongoing_requests": 16,
        "ray_actor_options": {"num_cpus": INGRESS_CPUS},
        "graceful_shutdown_timeout_s": INGRESS_SHUTDOWN_S,
        "health_check_period_s": 10.0,
    }
    if config.ingress_replicas_per_node is not None:
        # A cluster: spread the front door over the nodes that take traffic.
        options["max_replicas_per_node"] = config.ingress_replicas_per_node
    return options


def build_app(config: ServeConfig) -> Any:
    model = config.resolved_model()
    model_config = ModelConfig.from_pretrained(model)
    engine = config.engine_config(model)
    engine.cpu_threads = replica_cpu_threads(config, uses_gpus(config), *_machine_shape())
    max_model_len = engine.max_model_len or model_config.max_position_embeddings
    llm = LLMServer.options(**llm_server_options(config)).bind(
        engine, config.redis_url, config.index_resync_s)
    settings = IngressSettings(
        model_name=config.model or "SmolLM2-135M-Instruct",
        tokenizer=engine.tokenizer or engine.model, block_size=engine.block_size,
        tensor_parallel_size=engine.tensor_parallel_size, max_model_len=max_model_len,
        api_key=config.api_key, limits=config.limits, output_channels=config.prefix_routing,
        grpc_port=config.grpc_port, http_host=config.host, http_port=config.http_port)
    return Ingress.options(**ingress_options(config)).bind(llm, settings)


def required_resources(config: ServeConfig) -> dict[str, float]:
    """What the app books from Ray at its largest."""
    options = llm_server_options(config)
    replicas = config.autoscaling.max_replicas if config.autoscaling else config.replicas
    per_replica: dict[str, float] = {}
    bundles = options.get("placement_group_bundles") or [
        {"CPU": options["ray_actor_options"]["num_cpus"],
         "GPU": options["ray_actor_options"]["num_gpus"]}]
    for bundle in bundles:
        for name, amount in bundle.items():
            per_replica[name] = per_replica.get(name, 0.0) + amount
    needed = {name: amount * replicas for name, amount in per_replica.items() if amount}
    needed["CPU"] = needed.get("CPU", 0.0) + INGRESS_CPUS * config.ingress_replicas
    return needed


def check_fits(config: ServeConfig, available: dict[str, float]) -> None:
    """Fail at once, saying what to change, when this machine cannot hold the app (Serve
    would otherwise wait forever for resources that never come)."""
    for name, amount in required_resources(config).items():
        have = available.get(name, 0.0)
        if amount > have + 1e-9:
            raise ValueError(
                f"the service needs {amount:g} {name} but this Ray cluster has {have:g}: "
                f"lower --replicas/--max-replicas (now "
                f"{config.autoscaling.max_replicas if config.autoscaling else config.replicas})"
                f" or --tp (now {config.tensor_parallel_size}), or start Ray with more "
                f"{name}s")


def build(args: dict[str, Any]) -> Any:
    """Serve application builder: ``import_path: serve.app:build`` with ServeConfig args.

    The environment fills what the args leave out, so secrets (API key, Redis password in
    the URL) reach the app from Kubernetes Secrets instead of the plain-text Serve config.
    """
    return build_app(ServeConfig.from_env(**args))


def serve_config(config: ServeConfig) -> dict[str, Any]:
    """A Serve config (``serve deploy`` / KubeRay ``serveConfigV2``) for this ServeConfig.

    Serve's proxies are disabled: the Ingress replicas serve the ports themselves, and
    answer KubeRay's probe path (``/-/healthz``) on the HTTP port."""
    args = config.model_dump(exclude_none=True, exclude={
        "engine", "limits", "replica_env"})
    if "host" not in config.model_fields_set:
        # A deployed app serves other machines: its HTTP server binds every interface
        # (``up``'s local default is loopback only).
        args["host"] = "0.0.0.0"
    # Limits and replica env vars only as given: their defaults are the service's own.
    args["limits"] = config.limits.model_dump(exclude_unset=True, exclude_none=True)
    if config.replica_env:
        args["replica_env"] = dict(config.replica_env)
    # Only the engine settings given: the engine's defaults stay the engine's to choose.
    args["engine"] = config.engine.model_dump(exclude_unset=True)
    return {
        "proxy_location": "Disabled",
        "applications": [{"name": config.app_name, "route_prefix": "/",
                          "import_path": "serve.app:build", "args": args}],
    }


def start_serve(config: ServeConfig) -> None:
    """Run the app on this Ray cluster. Serve's proxies stay off: nothing here needs them
    (the Ingress replicas serve gRPC and HTTP on the service's ports)."""
    serve.start(proxy_location="Disabled")
    serve.run(build_app(config), name=config.app_name, route_prefix=None, blocking=False)
