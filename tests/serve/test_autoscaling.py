"""The LLM autoscaling policy: decisions on constructed contexts, then on a real deployment.

The unit tests build Ray's own ``AutoscalingContext`` and call the policy the way Serve's
controller does (deserialized from the ``AutoscalingPolicy`` config, instantiated with its
kwargs). The end-to-end test deploys the app with min 1 / max 2 replicas at the engine's default
``max_num_seqs``, sends more gRPC streams than one engine runs at once through the proxy and
the Ingress, and waits for Serve to start the second.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy

from serve.autoscaling import (
    POLICY_PATH,
    REASON_KEY,
    STREAK_KEY,
    LLMAutoscalingPolicy,
    autoscaling_policy_config,
)
from serve.config import AutoscalingBounds, ServeConfig
from serve.engine.config import EngineOptions

DEPLOYMENT = DeploymentID(name="LLMServer", app_name="mistral")


def replicas(count: int) -> list[ReplicaID]:
    return [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(count)]


def context(
    running: int,
    target: int | None = None,
    *,
    ongoing: float = 0.0,
    waiting: list[float] | None = None,
    num_running: list[float] | None = None,
    kv: list[float] | None = None,
    low: int = 1,
    high: int = 4,
    target_ongoing: float = 16.0,
    state: dict[str, Any] | None = None,
) -> AutoscalingContext:
    """A context as the controller builds it; ``waiting``/``num_running``/``kv`` are the
    per-replica custom metrics (None: no replica reported any)."""
    ids = replicas(running)
    metrics: dict[str, dict[ReplicaID, float]] = {}
    for name, values in (("num_waiting", waiting), ("num_running", num_running),
                         ("kv_cache_usage", kv)):
        if values is not None:
            metrics[name] = dict(zip(ids, values, strict=False))
    config = AutoscalingConfig(min_replicas=low, max_replicas=high,
                               target_ongoing_requests=target_ongoing)
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name=DEPLOYMENT.name, app_name="mistral",
        current_num_replicas=running, target_num_replicas=running if target is None else target,
        running_replicas=ids, total_num_requests=ongoing, total_queued_requests=0.0,
        aggregated_metrics=metrics, raw_metrics={}, capacity_adjusted_min_replicas=low,
        capacity_adjusted_max_replicas=high, policy_state=dict(state or {}),
        last_scale_up_time=None, last_scale_down_time=None, current_time=time.time(),
        config=config)


@pytest.fixture
def policy() -> LLMAutoscalingPolicy:
    """The policy as Serve's controller gets it: cloudpickled by value from the import path
    in the config, then instantiated once with ``policy_kwargs``."""
    config = AutoscalingPolicy(**autoscaling_policy_config(target_waiting_requests=4.0,
                                                           target_kv_cache_usage=0.8))
    policy_class = config.get_policy()
    assert isinstance(policy_class, type)
    made = policy_class(**config.policy_kwargs)
    assert (made.target_waiting_requests, made.target_kv_cache_usage) == (4.0, 0.8)
    return made


def settle(policy: LLMAutoscalingPolicy, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """The same signals for as many decisions as a scale-down needs: the first change, or
    the hold."""
    for _ in range(policy.downscale_after_decisions):
        decision, state = policy(ctx)
        if decision != ctx.target_num_replicas:
            break
        ctx.policy_state = state
    return decision, state


def test_growing_queue_scales_up_within_bounds(policy: LLMAutoscalingPolicy) -> None:
    # 1 replica, 6 waiting vs a target of 4 per replica: 2 replicas.
    decision, state = policy(context(1, ongoing=8, waiting=[6], num_running=[2], kv=[0.3]))
    assert (decision, state[REASON_KEY]) == (2, "queue")
    # 2 replicas with 13 waiting in all: 4.
    decision, _ = policy(context(2, ongoing=20, waiting=[7, 6], num_running=[4, 3], kv=[0.3, 0.3]))
    assert decision == 4
    # 40 waiting would want 10; max_replicas is 4.
    decision, _ = policy(context(2, ongoing=48, waiting=[20, 20], num_running=[4, 4],
                                 kv=[0.5, 0.5]))
    assert decision == 4
    # Under the target: no change.
    decision, state = policy(context(2, ongoing=8, waiting=[1, 2], num_running=[3, 3],
                                     kv=[0.4, 0.4]))
    assert (decision, state[REASON_KEY]) == (2, "hold")


def test_nearly_full_kv_cache_scales_up(policy: LLMAutoscalingPolicy) -> None:
    # Nothing waits yet, but the KV cache is 95 % used against a target of 80 %.
    decision, state = policy(context(1, ongoing=3, waiting=[0], num_running=[3], kv=[0.95]))
    assert (decision, state[REASON_KEY]) == (2, "kv_cache")
    decision, _ = policy(context(2, ongoing=6, waiting=[0, 0], num_running=[3, 3],
                                 kv=[0.97, 0.95]))
    assert decision == 3


def test_idle_scales_down_to_min_after_a_streak(policy: LLMAutoscalingPolicy) -> None:
    idle = context(3, waiting=[0, 0, 0], num_running=[0, 0, 0], kv=[0, 0, 0], low=1)
    decisions = []
    for _ in range(policy.downscale_after_decisions):
        decision, state = policy(idle)
        decisions.append(decision)
        idle.policy_state = state
    # Held for the streak, then straight to the minimum.
    assert decisions == [3] * (policy.downscale_after_decisions - 1) + [1]
    assert state[REASON_KEY] == "idle" and state[STREAK_KEY] == 0

    # A busy decision in the middle of the streak restarts it.
    busy = context(3, ongoing=30, waiting=[4, 4, 4], num_running=[8, 8, 8], kv=[0.6] * 3)
    _, state = policy(context(3, waiting=[0] * 3, num_running=[0] * 3, kv=[0] * 3))
    assert state[STREAK_KEY] == 1
    busy.policy_state = state
    _, state = policy(busy)
    assert state[STREAK_KEY] == 0

    # min_replicas 0: idle goes to zero.
    decision, _ = settle(policy, context(1, waiting=[0], num_running=[0], kv=[0], low=0))
    assert decision == 0


def test_partial_load_scales_down_only_below_the_headroom(policy: LLMAutoscalingPolicy) -> None:
    # 4 replicas, 1 waiting, KV 0.2 each: the signals fit in 2 replicas at 80 % headroom
    # (kv 0.8 / 0.8 = 1.0, / 0.8 headroom = 1.25 -> 2).
    decision, state = settle(policy, context(4, ongoing=8, waiting=[1, 0, 0, 0],
                                             num_running=[2] * 4, kv=[0.2] * 4))
    assert (decision, state[REASON_KEY]) == (2, "kv_cache")
    # 2 replicas at KV 0.7: one would hold 1.4 / 0.8 = 1.75 replicas' worth: stay at 2.
    decision, state = settle(policy, context(2, ongoing=8, waiting=[0, 0], num_running=[4, 4],
                                             kv=[0.7, 0.7]))
    assert (decision, state[REASON_KEY]) == (2, "hold")


def test_without_custom_metrics_falls_back_to_ongoing_requests(
        policy: LLMAutoscalingPolicy) -> None:
    # No replica reported engine signals: Serve's ongoing-requests rule, 40 / 10 = 4.
    decision, state = policy(context(1, ongoing=40, target_ongoing=10.0))
    assert (decision, state[REASON_KEY]) == (4, "ongoing")
    decision, _ = policy(context(1, ongoing=25, target_ongoing=10.0))
    assert decision == 3
    # And idle by that rule too.
    decision, state = settle(policy, context(3, ongoing=0, target_ongoing=10.0))
    assert (decision, state[REASON_KEY]) == (1, "idle")
    # With engine signals present, ongoing requests still floor the decision.
    decision, state = policy(context(1, ongoing=50, waiting=[0], num_running=[50], kv=[0.1],
                                     target_ongoing=16.0))
    assert (decision, state[REASON_KEY]) == (4, "ongoing")


def test_replicas_that_have_not_reported_count_as_empty(policy: LLMAutoscalingPolicy) -> None:
    # 3 replicas, only the first has reported: its 6 waiting are the deployment's 6 waiting.
    ctx = context(3, ongoing=10, waiting=[6], num_running=[4], kv=[0.5])
    assert len(ctx.aggregated_metrics["num_waiting"]) == 1
    decision, state = settle(policy, ctx)
    assert (decision, state[REASON_KEY]) == (2, "queue")  # 6 / 4 = 1.5 -> 2
    # While a scale-up is under way (target 3, 2 running), the target holds.
    ctx = context(2, target=3, ongoing=10, waiting=[9], num_running=[1], kv=[0.5])
    assert policy(ctx)[0] == 3


def test_zero_waiting_target_adds_a_replica_per_decision() -> None:
    policy = LLMAutoscalingPolicy(target_waiting_requests=0)
    assert policy(context(2, ongoing=9, waiting=[1, 0], num_running=[4, 4], kv=[0.1, 0.1]))[0] == 3
    assert policy(context(2, ongoing=8, waiting=[0, 0], num_running=[4, 4], kv=[0.1, 0.1]))[0] == 2


def test_bad_policy_kwargs_are_refused() -> None:
    with pytest.raises(ValueError, match="target_kv_cache_usage"):
        LLMAutoscalingPolicy(target_kv_cache_usage=1.5)
    with pytest.raises(ValueError, match="target_waiting_requests"):
        LLMAutoscalingPolicy(target_waiting_requests=-1)


def test_app_wires_the_policy_only_when_autoscaling_is_configured() -> None:
    from serve.app import llm_server_options

    fixed = llm_server_options(ServeConfig(replicas=2, accelerator="cpu"))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    bounds = AutoscalingBounds(min_replicas=1, max_replicas=3, target_ongoing_requests=8,
                               target_waiting_requests=2, target_kv_cache_usage=0.9,
                               upscale_delay_s=5)
    scaling = llm_server_options(ServeConfig(autoscaling=bounds, accelerator="cpu"))
    config = AutoscalingConfig(**scaling["autoscaling_config"])
    assert (config.min_replicas, config.max_replicas, config.target_ongoing_requests) == (1, 3, 8)
    assert config.policy.policy_function == POLICY_PATH
    assert config.policy.policy_kwargs == {"target_waiting_requests": 2,
                                           "target_kv_cache_usage": 0.9}
    assert config.upscale_delay_s == 5
    assert config.downscale_delay_s == AutoscalingConfig().downscale_delay_s  # Serve's default


# --- end to end: gRPC clients past one replica's capacity start the second -----------------

APP = "autoscaling-test"
# The engine's default max_num_seqs: more streams than it runs at once must wait in its
# queue, and only the real path (gRPC proxy, Ingress, LLMServer) carries them there.
MAX_NUM_SEQS = EngineOptions().max_num_seqs
STREAMS = MAX_NUM_SEQS + 24


@pytest.fixture(scope="module")
def autoscaling_app(ray_cluster: None, tiny_checkpoint: Path) -> Iterator[ServeConfig]:
    from tests.serve.conftest import start_service

    for running in start_service(
            model=str(tiny_checkpoint), ingress_replicas=1, app_name=APP,
            engine={"num_kv_blocks": 4096, "dtype": "float32"},
            # Ongoing requests alone would ask for 2 only past 2 x 512: the engine queue must.
            autoscaling=AutoscalingBounds(min_replicas=1, max_replicas=2,
                                          target_ongoing_requests=512,
                                          target_waiting_requests=2,
                                          upscale_delay_s=0, downscale_delay_s=600)):
        _wait_running(APP, timeout_s=60)
        yield running.config


def _wait_running(app: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status is not None and status.status == "RUNNING":
            return
        time.sleep(0.5)
    raise AssertionError(f"{app} did not start: {serve.status().applications.get(app)}")


def _llm_replicas(app: str) -> int:
    """Replicas Serve runs or starts for LLMServer: its current target."""
    from ray import serve

    deployment = serve.status().applications[app].deployments["LLMServer"]
    return sum(deployment.replica_states.values())


class _GrpcLoad:
    """``streams`` long generations over gRPC with the SDK, each restarted when it ends,
    until stopped (then cancelled)."""

    def __init__(self, target: str, streams: int) -> None:
        self.target = target
        self.streams = streams
        self.tokens = 0
        self.errors: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _one(self, client: Any, worker: int) -> None:
        from serve.client import ClientError

        while True:
            try:
                async for chunk in client.stream_generate(
                        [5 + worker % 50, 7, 11, 13], max_tokens=400, ignore_eos=True,
                        temperature=0.0, timeout_s=120):
                    self.tokens += len(chunk.token_ids)
            except ClientError as error:
                self.errors.append(f"{error.code.name}: {error.details}")
                await asyncio.sleep(0.5)

    async def _run(self) -> None:
        from serve.client import AsyncLLMClient

        self.loop = asyncio.get_running_loop()
        client = AsyncLLMClient(self.target, timeout_s=120)
        try:
            self.task = asyncio.ensure_future(
                asyncio.gather(*(self._one(client, i) for i in range(self.streams))))
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        finally:
            await client.close()

    def __enter__(self) -> _GrpcLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=30)


def test_grpc_load_past_one_replica_starts_a_second(autoscaling_app: ServeConfig) -> None:
    app = autoscaling_app.app_name
    assert _llm_replicas(app) == 1
    seen = []
    with _GrpcLoad(f"localhost:{autoscaling_app.grpc_port}", STREAMS) as load:
        # Replicas report engine stats every few seconds and push them every 10 s.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen.append(_llm_replicas(app))
            if seen[-1] >= 2:
                break
            time.sleep(0.5)
    assert seen[-1] == 2, (f"no scale-up within 90 s: replicas seen {sorted(set(seen))}; "
                           f"{load.tokens} tokens streamed; errors {load.errors[:3]}")
    assert max(seen) <= 2  # never past max_replicas
    assert load.tokens > 0
