"""`mistral-serve up` with no flags, then `mistral-serve chat` from another process."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.serve.conftest import free_port

READY_TIMEOUT_S = 300


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _lines(stream, sink: queue.Queue[str]) -> None:
    for line in stream:
        sink.put(line)


def test_up_then_chat_answers_with_the_embedded_model(smollm2_dir: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "serve.cli", "up"]
    grpc_port = 9000
    # No flags, as a user would type it; flags only if this machine already uses the ports.
    if not (_port_free(9000) and _port_free(8000)):
        grpc_port = free_port()
        command += ["--grpc-port", str(grpc_port), "--http-port", str(free_port())]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, start_new_session=True)
    output: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(server.stdout, output), daemon=True).start()
    log: list[str] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not any(line.startswith("ready:") for line in log):
            assert server.poll() is None, "up exited early:\n" + "".join(log[-40:])
            assert time.monotonic() < deadline, "up not ready in time:\n" + "".join(log[-40:])
            with contextlib.suppress(queue.Empty):
                log.append(output.get(timeout=1.0))
        chat = subprocess.run(
            [sys.executable, "-m", "serve.cli", "chat", "What is the capital of France?",
             "--target", f"localhost:{grpc_port}", "--max-tokens", "24"],
            capture_output=True, text=True, timeout=120, env=env)
        assert chat.returncode == 0, chat.stderr
        assert "Paris" in chat.stdout
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
