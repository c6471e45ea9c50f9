"""The KV host tier's metrics from the engine's stats: gauges as read, counters advancing by
what moved since the last poll, hit rates by tier."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from serve.engine.stats import EngineStats
from serve.metrics import ServerMetrics


class Recorder:
    """Stands in for one exported metric and keeps what was recorded on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str] | None]] = []

    def inc(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("inc", value, tags))

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("set", value, tags))


STATS = EngineStats(num_running=0, num_waiting=0, num_kv_blocks=40, num_free_kv_blocks=40,
                    kv_cache_usage=0.0, num_cached_blocks=10, num_kv_tokens=640,
                    num_host_kv_blocks=100, num_free_host_kv_blocks=70,
                    num_offloaded_blocks=50, num_restored_blocks=20, kv_bytes_offloaded=5000,
                    kv_bytes_restored=2000, num_prefix_query_tokens=1000,
                    num_device_hit_tokens=300, num_host_hit_tokens=200)


def test_tier_metrics_follow_the_engine_stats() -> None:
    metrics = ServerMetrics()
    names = ("tier_hit_rate", "host_blocks_used", "host_blocks_free", "offloaded_blocks",
             "restored_blocks", "tier_bytes")
    recorders: dict[str, Any] = {name: Recorder() for name in names}
    for name, recorder in recorders.items():
        setattr(metrics, name, recorder)
    metrics.record_engine_stats(STATS)
    later = replace(STATS, num_offloaded_blocks=58, kv_bytes_offloaded=5800,
                    num_free_host_kv_blocks=62, num_host_hit_tokens=260,
                    num_prefix_query_tokens=1200)
    metrics.record_engine_stats(later)
    metrics.record_engine_stats(later)  # nothing moved: no counter advances
    assert recorders["tier_hit_rate"].calls[-2:] == [("set", 0.25, {"tier": "device"}),
                                                     ("set", 260 / 1200, {"tier": "host"})]
    assert recorders["host_blocks_used"].calls == [("set", 30, None), ("set", 38, None),
                                                   ("set", 38, None)]
    assert recorders["host_blocks_free"].calls[-1] == ("set", 62, None)
    assert recorders["offloaded_blocks"].calls == [("inc", 50, None), ("inc", 8, None)]
    assert recorders["restored_blocks"].calls == [("inc", 20, None)]
    assert recorders["tier_bytes"].calls == [("inc", 5000, {"direction": "offload"}),
                                             ("inc", 2000, {"direction": "restore"}),
                                             ("inc", 800, {"direction": "offload"})]


def test_no_host_tier_records_only_the_device_hit_rate() -> None:
    metrics = ServerMetrics()
    hit_rate, used = Recorder(), Recorder()
    metrics.tier_hit_rate, metrics.host_blocks_used = hit_rate, used
    metrics.record_engine_stats(replace(STATS, num_host_kv_blocks=0, num_free_host_kv_blocks=0,
                                        num_host_hit_tokens=0))
    assert ("set", 0.3, {"tier": "device"}) in hit_rate.calls
    assert used.calls == []
