"""Service metrics on Ray's metrics pipeline: the Ray dashboard and Prometheus.

Every metric is a ``ray.serve.metrics`` object, so Serve adds the ``deployment``,
``replica`` and ``application`` tags, and Ray's metrics agent exports it on each node's
metrics port with a ``ray_`` prefix (counters also gain ``_total``)::

    mistral_serve_requests{finish_reason="stop"}  ->  ray_mistral_serve_requests_total{...}

LLMServer replicas record requests, tokens, latencies and engine gauges
(:class:`ServerMetrics`); the router, in the Ingress replicas, records its decisions and the
prefix index's failures (:class:`RouterMetrics`). Recording is per finished request or per
stats poll, never per token, and never raises: a metrics failure is logged once and the
request is served as if metrics were off.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

PREFIX = "mistral_serve_"

FINISH_REASONS = ("stop", "length", "abort", "error")
ROUTING_REASONS = ("session", "prefix", "load", "fallback")
# Seconds. TTFT spans queueing and prefill (long prompts on a busy replica take seconds);
# TPOT is one decode step shared by the batch.
TTFT_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
TPOT_BOUNDARIES_S = [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5]

F = TypeVar("F", bound=Callable[..., Any])


def _never_raises(method: F) -> F:
    """Metrics must never fail a request: log the first failure of a method, then stay
    quiet (a broken exporter would otherwise log on every request)."""
    failed = False

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        try:
            return method(*args, **kwargs)
        except Exception:
            if not failed:
                failed = True
                logger.warning("recording metrics failed (%s); the request is unaffected",
                               method.__qualname__, exc_info=True)
            return None

    return wrapper  # type: ignore[return-value]


class _NoMetric:
    """Stands in for a metric Ray could not create (no Ray, a name clash): records nothing."""

    def inc(self, *args: Any, **kwargs: Any) -> None: ...
    def set(self, *args: Any, **kwargs: Any) -> None: ...
    def observe(self, *args: Any, **kwargs: Any) -> None: ...


def _make(kind: str, name: str, description: str, **options: Any) -> Any:
    try:
        from ray.serve import metrics

        return getattr(metrics, kind)(PREFIX + name, description=description, **options)
    except Exception:
        logger.warning("metric %s%s is disabled", PREFIX, name, exc_info=True)
        return _NoMetric()


@dataclass
class RequestRecord:
    """What one finished (or failed, or abandoned) request reports."""

    finish_reason: str  # stop / length / abort / error
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float | None = None  # None: no token was produced
    tpot_s: float | None = None  # None: fewer than two tokens


class ServerMetrics:
    """The LLMServer replica's metrics (one instance per replica)."""

    def __init__(self) -> None:
        self.requests = _make("Counter", "requests", "Finished requests by finish reason "
                              "(stop, length, abort, error).", tag_keys=("finish_reason",))
        self.prompt_tokens = _make("Counter", "prompt_tokens", "Prompt tokens of finished "
                                   "requests.")
        self.generated_tokens = _make("Counter", "generated_tokens", "Tokens generated.")
        self.cached_tokens = _make("Counter", "cached_prompt_tokens", "Prompt tokens served "
                                   "from the prefix cache (no prefill).")
        self.ttft = _make("Histogram", "time_to_first_token_s", "Seconds from a request's "
                          "arrival at the replica to its first token.",
                          boundaries=TTFT_BOUNDARIES_S)
        self.tpot = _make("Histogram", "time_per_output_token_s", "Mean seconds between "
                          "output tokens after the first, per request.",
                          boundaries=TPOT_BOUNDARIES_S)
        self.kv_blocks_used = _make("Gauge", "kv_blocks_used", "KV blocks held by requests.")
        self.kv_blocks_free = _make("Gauge", "kv_blocks_free", "KV blocks free (including "
                                    "cached blocks that can be evicted).")
        self.kv_cache_usage = _make("Gauge", "kv_cache_usage", "Fraction of KV blocks held "
                                    "by requests.")
        self.num_waiting = _make("Gauge", "num_waiting_requests", "Requests waiting for a "
                                 "batch slot or KV blocks (the queue).")
        self.num_running = _make("Gauge", "num_running_requests", "Requests in the running "
                                 "batch.")
        self.hit_rate = _make("Gauge", "prefix_cache_hit_rate", "Cached prompt tokens / "
                              "prompt tokens over the replica's lifetime.")
        self.tier_hit_rate = _make("Gauge", "prefix_cache_hit_rate_by_tier", "Prompt tokens "
                                   "found in the device cache or the KV host tier / prompt "
                                   "tokens looked up, over the replica's lifetime.",
                                   tag_keys=("tier",))
        self.host_blocks_used = _make("Gauge", "kv_host_blocks_used", "KV host tier blocks "
                                      "holding a block the device evicted.")
        self.host_blocks_free = _make("Gauge", "kv_host_blocks_free", "KV host tier blocks "
                                      "free.")
        self.offloaded_blocks = _make("Counter", "kv_offloaded_blocks", "KV blocks copied "
                                      "from the device to the host tier on eviction.")
        self.restored_blocks = _make("Counter", "kv_restored_blocks", "KV blocks copied "
                                     "back from the host tier for a prefix hit.")
        self.tier_bytes = _make("Counter", "kv_tier_bytes", "Bytes of KV moved between the "
                                "device and the host tier (all ranks), by direction.",
                                tag_keys=("direction",))
        self.spec_drafts = _make("Counter", "spec_decode_drafts", "Decode steps of a "
                                 "request that verified draft tokens (speculative decoding).")
        self.spec_draft_tokens = _make("Counter", "spec_decode_draft_tokens", "Draft tokens "
                                       "proposed and verified.")
        self.spec_accepted_tokens = _make("Counter", "spec_decode_accepted_tokens", "Draft "
                                          "tokens the target model accepted.")
        self.spec_acceptance_rate = _make("Gauge", "spec_decode_acceptance_rate", "Accepted "
                                          "/ proposed draft tokens since the replica started.")
        self.spec_mean_accepted = _make("Gauge", "spec_decode_mean_accepted_tokens", "Draft "
                                        "tokens accepted per drafted step, on average.")
        self._prompt_total = 0
        self._cached_total = 0
        # The engine's cumulative counters at the previous poll: counters advance by the
        # difference.
        self._last_totals: dict[str, int] = {}

    @_never_raises
    def record_request(self, record: RequestRecord) -> None:
        self.requests.inc(1, tags={"finish_reason": record.finish_reason})
        if record.prompt_tokens:
            self.prompt_tokens.inc(record.prompt_tokens)
            self._prompt_total += record.prompt_tokens
        if record.generated_tokens:
            self.generated_tokens.inc(record.generated_tokens)
        if record.cached_tokens:
            self.cached_tokens.inc(record.cached_tokens)
            self._cached_total += record.cached_tokens
        self._set_hit_rate()
        if record.ttft_s is not None:
            self.ttft.observe(record.ttft_s)
        if record.tpot_s is not None:
            self.tpot.observe(record.tpot_s)

    def _set_hit_rate(self) -> None:
        if self._prompt_total:
            self.hit_rate.set(self._cached_total / self._prompt_total)

    @_never_raises
    def record_engine_stats(self, stats: Any) -> None:
        """Gauges from an ``EngineStats``. Called every few seconds: Ray's exporter drops a
        gauge that was not set again within two export intervals, so every gauge is set
        here, the hit rate included."""
        self._set_hit_rate()
        self.kv_blocks_used.set(stats.num_kv_blocks - stats.num_free_kv_blocks)
        self.kv_blocks_free.set(stats.num_free_kv_blocks)
        self.kv_cache_usage.set(stats.kv_cache_usage)
        self.num_waiting.set(stats.num_waiting)
        self.num_running.set(stats.num_running)
        self._record_tiers(stats)
        self._record_speculation(stats)

    def _advance(self, stats: Any, name: str, counter: Any,
                 tags: dict[str, str] | None = None) -> None:
        """Advance ``counter`` by how much the engine's cumulative ``stats.<name>`` grew."""
        total = getattr(stats, name)
        delta = total - self._last_totals.get(name, 0)
        if delta > 0:
            counter.inc(delta, tags=tags)
        self._last_totals[name] = total

    def _record_speculation(self, stats: Any) -> None:
        if not stats.num_spec_drafts:
            return
        for name, counter in (("num_spec_drafts", self.spec_drafts),
                              ("num_spec_draft_tokens", self.spec_draft_tokens),
                              ("num_spec_accepted_tokens", self.spec_accepted_tokens)):
            self._advance(stats, name, counter)
        self.spec_acceptance_rate.set(stats.num_spec_accepted_tokens
                                      / max(stats.num_spec_draft_tokens, 1))
        self.spec_mean_accepted.set(stats.num_spec_accepted_tokens / stats.num_spec_drafts)

    def _record_tiers(self, stats: Any) -> None:
        if stats.num_prefix_query_tokens:
            for tier, hits in (("device", stats.num_device_hit_tokens),
                               ("host", stats.num_host_hit_tokens)):
                self.tier_hit_rate.set(hits / stats.num_prefix_query_tokens,
                                       tags={"tier": tier})
        if not stats.num_host_kv_blocks:
            return
        self.host_blocks_used.set(stats.num_host_kv_blocks - stats.num_free_host_kv_blocks)
        self.host_blocks_free.set(stats.num_free_host_kv_blocks)
        for name, counter, tags in (
                ("num_offloaded_blocks", self.offloaded_blocks, None),
                ("num_restored_blocks", self.restored_blocks, None),
                ("kv_bytes_offloaded", self.tier_bytes, {"direction": "offload"}),
                ("kv_bytes_restored", self.tier_bytes, {"direction": "restore"})):
            self._advance(stats, name, counter, tags)


class RouterMetrics:
    """The router's metrics: one per process (routers and index clients share it)."""

    def __init__(self) -> None:
        self.decisions = _make("Counter", "routing_decisions", "Requests routed, by reason: "
                               "session affinity, cached prefix, load, or fallback to load "
                               "because the prefix index failed.", tag_keys=("reason",))
        self.index_errors = _make("Counter", "prefix_index_errors", "Prefix index calls that "
                                  "failed or were skipped while the index (Redis, or the "
                                  "in-cluster index actor) was down.",
                                  tag_keys=("backend", "operation"))

    @_never_raises
    def record_decision(self, reason: str) -> None:
        self.decisions.inc(1, tags={"reason": reason})

    @_never_raises
    def record_index_error(self, backend: str, operation: str) -> None:
        self.index_errors.inc(1, tags={"backend": backend, "operation": operation})


@functools.cache
def router_metrics() -> RouterMetrics:
    return RouterMetrics()
