"""The service's metrics on Ray's Prometheus export: real Serve, gRPC, redis-server.

A few requests (a conversation, a repeated prompt, an abandoned stream, requests during a
Redis outage) go through the app; the node's metrics port then shows every metric of
``serve/metrics.py`` with values that follow from them.
"""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.client import LLMClient
from serve.metrics import RequestRecord, RouterMetrics, ServerMetrics
from tests.serve.conftest import RedisServer, start_service

APP = "metrics-test"
GREEDY = {"temperature": 0.0, "ignore_eos": True}
# Ray flushes metrics to the node's exporter every few seconds (10 s by default).
EXPORT_TIMEOUT_S = 45.0


@pytest.fixture(scope="module")
def metrics_app(ray_cluster: None, tiny_checkpoint: Path,
                redis_server: RedisServer) -> Iterator[str]:
    # Two LLMServer replicas: with one, the router has nothing to weigh and asks no index.
    for running in start_service(model=str(tiny_checkpoint), replicas=2, ingress_replicas=1,
                                 app_name=APP, redis_url=redis_server.url,
                                 engine={"num_kv_blocks": 256, "dtype": "float32"}):
        yield running.target


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape() -> Samples:
    """This app's samples on the node's Prometheus endpoint: name -> [(labels, value)]."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    port = ray.nodes()[0]["MetricsExportPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        if "mistral_serve_" not in family.name:
            continue
        for sample in family.samples:
            if sample.labels.get("application") == APP:
                samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(value for sample_labels, value in samples.get(name, [])
               if labels.items() <= sample_labels.items())


# Exported names: Ray's "ray_" prefix, "_total" on counters, "_count"/"_sum" on histograms.
EXPECTED = {
    "requests (length)": ("ray_mistral_serve_requests_total", {"finish_reason": "length"}),
    "prompt tokens": ("ray_mistral_serve_prompt_tokens_total", {}),
    "generated tokens": ("ray_mistral_serve_generated_tokens_total", {}),
    "cached prompt tokens": ("ray_mistral_serve_cached_prompt_tokens_total", {}),
    "time to first token": ("ray_mistral_serve_time_to_first_token_s_count", {}),
    "time per output token": ("ray_mistral_serve_time_per_output_token_s_count", {}),
    "KV blocks free": ("ray_mistral_serve_kv_blocks_free", {}),
    "prefix cache hit rate": ("ray_mistral_serve_prefix_cache_hit_rate", {}),
    "routed by session": ("ray_mistral_serve_routing_decisions_total", {"reason": "session"}),
    "routed by prefix": ("ray_mistral_serve_routing_decisions_total", {"reason": "prefix"}),
    "routed on fallback": ("ray_mistral_serve_routing_decisions_total", {"reason": "fallback"}),
    "Redis errors": ("ray_mistral_serve_prefix_index_errors_total", {"backend": "redis"}),
}
PRESENT = ["ray_mistral_serve_kv_blocks_used", "ray_mistral_serve_kv_cache_usage",
           "ray_mistral_serve_num_waiting_requests", "ray_mistral_serve_num_running_requests"]


def test_requests_show_up_in_prometheus(metrics_app: str,
                                        redis_server_restored: RedisServer) -> None:
    conversation = [{"role": "user", "content": "A question long enough to fill a few "
                     "blocks of sixteen tokens each, so that the next turn hits the cache."}]
    with LLMClient(metrics_app, timeout_s=60) as client:
        first = client.chat(conversation, max_tokens=6, session_id="metrics", **GREEDY)
        again = client.chat(conversation, max_tokens=6, session_id="metrics", **GREEDY)
        assert again.usage.cached_tokens > 0
        # The same prompt without a session: the replica holding its prefix.
        client.chat(conversation, max_tokens=6, **GREEDY)
        # A stream the client leaves after its first chunk ("abort", unless the tiny model
        # finishes it before the cancellation arrives; the abort itself is tested below).
        stream = client.stream_generate("an abandoned stream", max_tokens=400, **GREEDY)
        next(stream)
        stream.close()
        redis_server_restored.stop()
        for i in range(2):  # long enough for a full block: the router asks the index
            prompt = f"During the outage, request {i}: " + "more words " * 12
            assert client.generate(prompt, max_tokens=4, **GREEDY).finish_reason == "length"
    prompt_tokens = 3 * first.usage.prompt_tokens

    deadline = time.monotonic() + EXPORT_TIMEOUT_S
    while True:
        samples = scrape()
        missing = [what for what, (name, labels) in EXPECTED.items()
                   if total(samples, name, **labels) <= 0]
        missing += [name for name in PRESENT if name not in samples]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not missing, f"not exported within {EXPORT_TIMEOUT_S} s: {missing}; {dict(samples)}"

    assert total(samples, "ray_mistral_serve_requests_total", finish_reason="length") >= 5
    assert total(samples, "ray_mistral_serve_requests_total") >= 6
    assert total(samples, "ray_mistral_serve_prompt_tokens_total") >= prompt_tokens
    assert total(samples, "ray_mistral_serve_generated_tokens_total") >= 3 * 6 + 2 * 4
    cached = total(samples, "ray_mistral_serve_cached_prompt_tokens_total")
    assert cached >= again.usage.cached_tokens
    assert 0 < total(samples, "ray_mistral_serve_prefix_cache_hit_rate") < 1
    assert total(samples, "ray_mistral_serve_kv_blocks_free") > 0
    assert total(samples, "ray_mistral_serve_time_to_first_token_s_sum") > 0


def test_each_request_is_recorded_once_with_its_outcome(
        ray_cluster: None, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LLMServer.generate in-process: finished, abandoned and refused requests."""
    import asyncio

    from model.sampling_params import SamplingParams
    from serve.engine.config import EngineConfig
    from serve.protocol import ServeRequest
    from serve.server.deployment import LLMServer

    server = LLMServer.func_or_class(EngineConfig(model=str(tiny_checkpoint), dtype="float32",
                                                  device="cpu", num_kv_blocks=64))
    records: list[RequestRecord] = []
    monkeypatch.setattr(server.metrics, "record_request", records.append)
    prompt = [5, 7, 11, 13] * 5

    def params(max_tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def scenario() -> None:
        async for _ in server.generate(ServeRequest("done", prompt, params(8))):
            pass
        stream = server.generate(ServeRequest("left", prompt, params(400)))
        await stream.__anext__()
        await stream.aclose()
        chunks = [c async for c in server.generate(ServeRequest("long", [5] * 600, params(4)))]
        assert chunks[-1].error_code is not None

    try:
        asyncio.run(scenario())
    finally:
        server.engine.shutdown()
    done, left, refused = records
    assert (done.finish_reason, done.prompt_tokens, done.generated_tokens) == ("length", 20, 8)
    assert done.cached_tokens == 0
    assert 0 < done.ttft_s < 60 and 0 < done.tpot_s < 60
    assert left.finish_reason == "abort" and 1 <= left.generated_tokens < 400
    # The same prompt again: its full blocks came from the prefix cache.
    assert left.cached_tokens == 16
    assert refused == RequestRecord("error")


def test_metrics_never_break_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray, or with a recorder that raises, recording is a no-op."""
    server, router = ServerMetrics(), RouterMetrics()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter down")

    for metric in (server.requests, server.ttft, server.kv_blocks_free, router.decisions,
                   router.index_errors):
        for method in ("inc", "observe", "set"):
            if hasattr(metric, method):
                monkeypatch.setattr(metric, method, broken)
    server.record_request(RequestRecord("stop", 10, 5, 4, 0.1, 0.01))
    router.record_decision("load")
    router.record_index_error("redis", "match_prefix")

    class Stats:
        num_kv_blocks, num_free_kv_blocks, kv_cache_usage = 8, 6, 0.25
        num_waiting, num_running = 0, 1

    server.record_engine_stats(Stats())
    server.record_engine_stats(object())  # not even stats
