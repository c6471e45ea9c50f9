"""An Ingress upgrade under a stream: Serve starts the new replica (it binds the same ports,
SO_REUSEPORT), then stops the old one, which stops accepting and lets its streams in flight
finish before it goes. The stream loses nothing and new requests reach the new replica.

Steps are slowed (MISTRAL_SERVE_FAULT_STEP_DELAY_S in the LLMServer only) so that the
stream is still running while the old replica drains."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.envs import FAULT_STEP_DELAY_ENV
from serve.client import LLMClient
from tests.serve.conftest import Service, start_service

STEP_DELAY_S = 0.4
TOKENS = 24  # about 10 s of steps: longer than the new replica takes to start


@pytest.fixture(scope="module")
def service(ray_cluster: None, tiny_checkpoint: Path) -> Iterator[Service]:
    yield from start_service(model=str(tiny_checkpoint), app_name="drain",
                             replica_env={FAULT_STEP_DELAY_ENV: str(STEP_DELAY_S)},
                             engine={"num_kv_blocks": 256, "dtype": "float32"})


def test_an_ingress_upgrade_lets_its_streams_finish(service: Service) -> None:
    from ray import serve

    from serve.app import build_app

    before = set(service.replica_actors("Ingress"))
    first_token = threading.Event()
    result: dict[str, Any] = {}

    def stream() -> None:
        try:
            with LLMClient(service.target, timeout_s=120) as client:
                chunks = []
                for chunk in client.stream_generate("drain me", max_tokens=TOKENS,
                                                    temperature=0.0, ignore_eos=True):
                    chunks.append(chunk)
                    first_token.set()
                result["chunks"] = chunks
        except Exception as exc:  # reported by the assertions below
            result["error"] = exc
        finally:
            first_token.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_token.wait(60), "the stream never started"
    # A new Ingress version (its settings changed, the LLMServer's not): a rolling update.
    upgraded = service.config.model_copy(
        update={"limits": service.config.limits.model_copy(update={"max_messages": 512})})
    serve.run(build_app(upgraded), name=service.app, route_prefix=None, blocking=False)
    reader.join(120)
    assert not reader.is_alive()
    assert "error" not in result, result.get("error")
    chunks = result["chunks"]
    assert sum(len(c.token_ids) for c in chunks) == TOKENS
    assert chunks[-1].finish_reason == "length"
    after = set(service.replica_actors("Ingress"))
    assert after and not after & before  # the old replica is gone, a new one serves
    with LLMClient(service.target, timeout_s=60) as client:
        assert client.generate("after", max_tokens=2, ignore_eos=True).finish_reason \
            == "length"
