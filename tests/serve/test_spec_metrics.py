"""Speculative decoding's metrics from the engine's stats: counters advancing by what was
proposed and accepted since the last poll, the acceptance rate and mean accepted length."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from serve.metrics import ServerMetrics
from tests.serve.test_tier_metrics import STATS, Recorder


def test_speculation_metrics_follow_the_engine_stats() -> None:
    metrics = ServerMetrics()
    names = ("spec_drafts", "spec_draft_tokens", "spec_accepted_tokens",
             "spec_acceptance_rate", "spec_mean_accepted")
    recorders: dict[str, Any] = {name: Recorder() for name in names}
    for name, recorder in recorders.items():
        setattr(metrics, name, recorder)
    metrics.record_engine_stats(STATS)  # nothing drafted yet: nothing recorded
    assert all(not recorder.calls for recorder in recorders.values())
    first = replace(STATS, num_spec_drafts=10, num_spec_draft_tokens=40,
                    num_spec_accepted_tokens=30)
    metrics.record_engine_stats(first)
    metrics.record_engine_stats(replace(first, num_spec_drafts=12, num_spec_draft_tokens=48,
                                        num_spec_accepted_tokens=32))
    assert recorders["spec_drafts"].calls == [("inc", 10, None), ("inc", 2, None)]
    assert recorders["spec_draft_tokens"].calls == [("inc", 40, None), ("inc", 8, None)]
    assert recorders["spec_accepted_tokens"].calls == [("inc", 30, None), ("inc", 2, None)]
    assert recorders["spec_acceptance_rate"].calls == [("set", 0.75, None),
                                                       ("set", 32 / 48, None)]
    assert recorders["spec_mean_accepted"].calls == [("set", 3.0, None), ("set", 32 / 12, None)]
