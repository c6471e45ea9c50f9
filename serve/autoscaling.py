"""Autoscaling the LLMServer deployment on what an LLM replica is short of: batch slots and KV.

Serve's default policy scales on ongoing requests per replica. For an LLM engine that count
says little: one replica may hold 64 cheap requests or choke on 4 long ones. Each LLMServer
replica reports its engine's signals through ``record_autoscaling_stats`` (see
``serve/server/deployment.py``), and Serve hands their look-back aggregate to this policy as
``ctx.aggregated_metrics[name][replica_id]``:

- ``num_waiting``: requests the scheduler could not fit into the running batch yet;
- ``kv_cache_usage``: the fraction of KV blocks held by requests (cached free blocks count
  as free);
- ``num_running``: requests in the running batch (only used to tell "idle").

Each signal says how many replicas would bring it to its target, summed over replicas so
that a replica that has not reported yet (just started, empty) counts as idle::

    by_queue   = sum(num_waiting)    / target_waiting_requests
    by_kv      = sum(kv_cache_usage) / target_kv_cache_usage
    by_ongoing = total ongoing requests (Serve's own count) / target_ongoing_requests

    e.g. 2 replicas, 10 and 6 waiting, KV 0.9 and 0.7, 30 ongoing, targets 4 / 0.85 / 16:
    by_queue = 16 / 4 = 4.0, by_kv = 1.6 / 0.85 = 1.9, by_ongoing = 30 / 16 = 1.9 -> 4

The policy wants ``ceil(max(...))`` replicas. ``by_ongoing`` is a floor under the LLM
signals (no replica is removed while the others could not take its requests) and the whole
rule when no replica reports LLM signals (an engine that cannot answer, an older replica).

Scaling up happens at once (Serve then applies ``upscale_delay_s``). Scaling down has two
guards against flapping between n and n+1: a dead band (a smaller count must keep every
signal under ``downscale_headroom`` of its target) and a streak (it must be wanted for
``downscale_after_decisions`` consecutive decisions, kept in ``policy_state``); Serve's
``downscale_delay_s`` comes on top. A deployment with nothing waiting, running or ongoing
is idle and goes to its minimum. Serve clamps the result to
``capacity_adjusted_min_replicas`` / ``capacity_adjusted_max_replicas``; the policy clamps
too, so its own ``policy_state`` never records a count Serve would not run.

Serve pickles this module by value into its controller, so it imports nothing of the
project and no heavy library.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

logger = logging.getLogger("ray.serve")

POLICY_PATH = "serve.autoscaling:LLMAutoscalingPolicy"

# The keys LLMServer.record_autoscaling_stats reports.
NUM_WAITING = "num_waiting"
NUM_RUNNING = "num_running"
KV_CACHE_USAGE = "kv_cache_usage"

# policy_state keys (prefixed: Serve keeps its own delay bookkeeping in the same dict).
STREAK_KEY = "llm_downscale_streak"
REASON_KEY = "llm_reason"
PROPOSED_KEY = "llm_proposed_replicas"
SIGNALS_KEY = "llm_signals"

# Ratios this close to a whole number count as that number (float sums of usages).
_EPS = 1e-6


def _total(metrics: dict[str, dict[Any, float]], name: str) -> float | None:
    """Sum of a custom metric over the replicas that reported it; None when none did."""
    by_replica = metrics.get(name)
    if not by_replica:
        return None
    return float(sum(value for value in by_replica.values() if value is not None))


def _replicas_for(ratio: float) -> int:
    return max(0, math.ceil(ratio - _EPS))


class LLMAutoscalingPolicy:
    """A Serve deployment autoscaling policy (``AutoscalingPolicy.policy_function``).

    Serve instantiates the class once with ``policy_kwargs`` and calls it every control-loop
    tick with an ``AutoscalingContext``; it returns ``(replicas, policy_state)``.
    """

    def __init__(self, target_waiting_requests: float = 4.0,
                 target_kv_cache_usage: float = 0.85, downscale_headroom: float = 0.8,
                 downscale_after_decisions: int = 3) -> None:
        if target_waiting_requests < 0:
            raise ValueError(f"target_waiting_requests must be >= 0, got {target_waiting_requests}")
        if not 0 < target_kv_cache_usage <= 1:
            raise ValueError(f"target_kv_cache_usage must be in (0, 1], got {target_kv_cache_usage}")
        if not 0 < downscale_headroom <= 1:
            raise ValueError(f"downscale_headroom must be in (0, 1], got {downscale_headroom}")
        self.target_waiting_requests = target_waiting_requests
        self.target_kv_cache_usage = target_kv_cache_usage
        self.downscale_headroom = downscale_headroom
        self.downscale_after_decisions = max(1, downscale_after_decisions)

    # ---- the signals -------------------------------------------------------------------

    def desired_replicas(self, ctx: AutoscalingContext) -> tuple[float, str, dict[str, float]]:
        """(replicas the load needs, as a ratio; the signal that set it; every signal)."""
        ongoing = float(ctx.total_num_requests or 0.0)
        target_ongoing = float(ctx.config.get_target_ongoing_requests()) if ctx.config else 16.0
        signals = {"ongoing": ongoing / target_ongoing}
        metrics = ctx.aggregated_metrics or {}
        waiting = _total(metrics, NUM_WAITING)
        kv_usage = _total(metrics, KV_CACHE_USAGE)
        running = _total(metrics, NUM_RUNNING)
        if waiting is not None:
            if self.target_waiting_requests > 0:
                signals["queue"] = waiting / self.target_waiting_requests
            else:  # any waiting request is one too many: one more replica at a time
                signals["queue"] = ctx.current_num_replicas + 1.0 if waiting > 0 else 0.0
        if kv_usage is not None:
            signals["kv_cache"] = kv_usage / self.target_kv_cache_usage
        if ongoing == 0 and not waiting and not running:
            return 0.0, "idle", signals
        reason = max(signals, key=lambda name: signals[name])
        return signals[reason], reason, signals

    # ---- the decision ------------------------------------------------------------------

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        state = dict(ctx.policy_state or {})
        low = ctx.capacity_adjusted_min_replicas
        high = max(low, ctx.capacity_adjusted_max_replicas)
        current = ctx.target_num_replicas

        def clamp(replicas: int) -> int:
            return max(low, min(high, replicas))

        ratio, reason, signals = self.desired_replicas(ctx)
        state[SIGNALS_KEY] = {name: round(value, 3) for name, value in signals.items()}
        needed = clamp(_replicas_for(ratio))
        if needed > current:
            state[STREAK_KEY] = 0
            return self._decide(state, current, needed, reason)
        # Down only to a count that keeps every signal under the headroom, and only when
        # the idle deployment goes to its minimum or the load left the band for a while.
        candidate = low if reason == "idle" else clamp(
            _replicas_for(ratio / self.downscale_headroom))
        if candidate >= current:
            state[STREAK_KEY] = 0
            return self._decide(state, current, clamp(current), "hold")
        streak = int(state.get(STREAK_KEY, 0)) + 1
        if streak < self.downscale_after_decisions:
            state[STREAK_KEY] = streak
            return self._decide(state, current, clamp(current), "hold")
        state[STREAK_KEY] = 0
        return self._decide(state, current, candidate, reason)

    @staticmethod
    def _decide(state: dict[str, Any], current: int, replicas: int,
                reason: str) -> tuple[int, dict[str, Any]]:
        # Logged once per new proposal, not every control-loop tick of Serve's delay.
        if replicas != current and state.get(PROPOSED_KEY) != replicas:
            logger.info("LLM autoscaling: %d -> %d replicas (%s; signals %s)", current,
                        replicas, reason, state.get(SIGNALS_KEY))
        state[REASON_KEY] = reason
        state[PROPOSED_KEY] = replicas
        return replicas, state


def autoscaling_policy_config(target_waiting_requests: float,
                              target_kv_cache_usage: float) -> dict[str, Any]:
    """The ``policy`` entry of a Serve ``autoscaling_config`` (JSON, for config files)."""
    return {"policy_function": POLICY_PATH,
            "policy_kwargs": {"target_waiting_requests": target_waiting_requests,
                              "target_kv_cache_usage": target_kv_cache_usage}}
