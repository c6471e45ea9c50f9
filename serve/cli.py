"""``mistral-serve``: run the service and talk to it.

    mistral-serve up                      # local Ray, SmolLM2, in-process index, :9000/:8000
    mistral-serve chat "Hello!"           # one answer over gRPC (no message: interactive)
    mistral-serve generate "Once upon"    # complete a prompt
    mistral-serve status                  # model and endpoint information
    mistral-serve config > serve.yaml     # the Serve config for `serve deploy` / Helm
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any


def _service_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="checkpoint directory or preset (default: embedded SmolLM2)")
    parser.add_argument("--tp", type=int, default=None, help="tensor-parallel size")
    parser.add_argument("--replicas", type=int, default=None, help="fixed number of replicas")
    parser.add_argument("--min-replicas", type=int, default=None, help="autoscaling lower bound")
    parser.add_argument("--max-replicas", type=int, default=None, help="autoscaling upper bound")
    parser.add_argument("--redis", default=None, help="redis:// URL of the prefix index")
    parser.add_argument("--api-key", default=None, help="require this API key")
    parser.add_argument("--grpc-port", type=int, default=None)
    parser.add_argument("--http-port", type=int, default=None)
    parser.add_argument("--host", default=None, help="HTTP bind address (default 127.0.0.1)")
    parser.add_argument("--accelerator", choices=["auto", "cpu", "gpu"], default=None)
    parser.add_argument("--kv-host-memory", default=None, metavar="SIZE",
                        help="host memory per tensor-parallel rank for a second KV tier that "
                             "keeps blocks the GPU evicts, e.g. 8GiB (default: none)")
    parser.add_argument("--cpu-threads", type=int, default=None, metavar="N",
                        help="threads each CPU replica (each tensor-parallel rank) computes "
                             "with (default: the cores it owns; a lone replica uses them all)")
    parser.add_argument("--speculative-config", default=None, metavar="JSON",
                        help="speculative decoding, as vLLM names it, e.g. "
                             "'{\"method\": \"ngram\", \"num_speculative_tokens\": 4}' "
                             "(methods: ngram, suffix; default: off)")


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="localhost:9000", help="gRPC address")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--offline", action="store_true",
                        help="run the engine in this process instead of calling a service")
    parser.add_argument("--model", default=None, help="with --offline: the checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mistral-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    _service_args(commands.add_parser("up", help="start the service on a local Ray"))
    _service_args(commands.add_parser("config", help="print the Serve config YAML"))
    chat = commands.add_parser("chat", help="chat with the service")
    chat.add_argument("message", nargs="?", help="omit for an interactive session")
    chat.add_argument("--system", default=None)
    _client_args(chat)
    generate = commands.add_parser("generate", help="complete a prompt")
    generate.add_argument("prompt")
    _client_args(generate)
    status = commands.add_parser("status", help="show what the service runs")
    status.add_argument("--target", default="localhost:9000")
    status.add_argument("--api-key", default=None)
    return parser


def serve_config_from(args: argparse.Namespace) -> Any:
    from serve.config import AutoscalingBounds, ServeConfig

    autoscaling = None
    if args.min_replicas is not None or args.max_replicas is not None:
        low = args.min_replicas if args.min_replicas is not None else 1
        autoscaling = AutoscalingBounds(min_replicas=low,
                                        max_replicas=max(low, args.max_replicas or low))
    return ServeConfig.from_env(
        model=args.model, tensor_parallel_size=args.tp, replicas=args.replicas,
        autoscaling=autoscaling, redis_url=args.redis, api_key=args.api_key,
        grpc_port=args.grpc_port, http_port=args.http_port, host=args.host,
        accelerator=args.accelerator,
        engine=_engine_flags(args))


def _engine_flags(args: argparse.Namespace) -> dict[str, Any] | None:
    """The engine settings given as flags (None: the engine's defaults)."""
    flags = {"kv_host_memory": args.kv_host_memory, "cpu_threads": args.cpu_threads,
             "speculative_config": args.speculative_config}
    given = {key: value for key, value in flags.items() if value is not None}
    return given or None


def cmd_up(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from serve.app import check_fits, start_serve

    config = serve_config_from(args)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    ray.init(namespace="mistral-serve")
    try:
        check_fits(config, ray.cluster_resources())
        start_serve(config)
        print(f"ready: gRPC on localhost:{config.grpc_port}, HTTP on "
              f"http://{config.host}:{config.http_port} (Ctrl-C stops)", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from serve.app import serve_config

    yaml.safe_dump(serve_config(serve_config_from(args)), sys.stdout, sort_keys=False)
    return 0


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature}


def _offline_answer(args: argparse.Namespace, messages: list[dict[str, str]] | None,
                    prompt: str | None) -> str:
    from model.sampling_params import SamplingParams
    from serve.llm import LLM

    llm = LLM(args.model)
    try:
        params = SamplingParams(**_sampling(args))
        output = llm.chat(messages, params) if messages else llm.generate(prompt, params)
        return output[0].outputs[0].text
    finally:
        llm.shutdown()


def cmd_chat(args: argparse.Namespace) -> int:
    from serve.client import LLMClient

    if args.message is not None:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": args.message})
        if args.offline:
            print(_offline_answer(args, messages, None))
            return 0
        with LLMClient(args.target, api_key=args.api_key, timeout_s=args.timeout) as client:
            for chunk in client.stream_chat(messages, **_sampling(args)):
                print(chunk.text, end="", flush=True)
        print()
        return 0
    with LLMClient(args.target, api_key=args.api_key, timeout_s=args.timeout) as client:
        conversation = client.conversation(system=args.system)
        for line in sys.stdin:
            if line.strip():
                print(conversation.send(line.strip(), **_sampling(args)).text, flush=True)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if args.offline:
        print(_offline_answer(args, None, args.prompt))
        return 0
    from serve.client import LLMClient

    with LLMClient(args.target, api_key=args.api_key, timeout_s=args.timeout) as client:
        for chunk in client.stream_generate(args.prompt, **_sampling(args)):
            print(chunk.text, end="", flush=True)
    print()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from serve.client import LLMClient

    with LLMClient(args.target, api_key=args.api_key, timeout_s=10.0) as client:
        info = client.model_info()
    print(f"model: {info.model}\nmax_model_len: {info.max_model_len}\n"
          f"tensor_parallel_size: {info.tensor_parallel_size}\nversion: {info.version}")
    return 0


# A plain install is the SDK alone; these commands run the service or the engine.
SERVER_MODULES = ("torch", "ray", "pydantic", "transformers")


def missing_server_packages() -> list[str]:
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"up": cmd_up, "config": cmd_config, "chat": cmd_chat,
                "generate": cmd_generate, "status": cmd_status}
    needs_server = args.command in ("up", "config") or getattr(args, "offline", False)
    if needs_server and (missing := missing_server_packages()):
        print(f"error: '{args.command}' runs the service and needs {', '.join(missing)}: "
              "install the server with pip install 'mistral-serve[server]'", file=sys.stderr)
        return 2
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a CLI prints what went wrong, not a traceback
        # pydantic's ValidationError is a ValueError: a bad config lands here too.
        if isinstance(exc, (ValueError, OSError)) or \
                type(exc).__module__.startswith("serve.client"):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
