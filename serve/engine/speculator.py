"""Which requests get drafts this step, how many, and what came of them.

The scheduler asks ``draft`` for each running request it is about to decode; the engine
reports each verified step to ``record``. Speculation must never cost throughput, so:

- no drafts while ``disable_by_batch_size`` or more requests run (the step is compute-bound
  and every rejected draft is work thrown away);
- per request, the draft length adapts (``adaptive``): it grows by one after a step whose
  drafts were all accepted, falls to one past the accepted count after a partial one, and
  after a step with none accepted it halves and the request pauses for a number of steps that
  doubles with each consecutive miss (1, 2, 4, ... 32), so a request whose text is not
  predictable decodes as if speculation were off;
- a request steps aside (plain decoding) when it has structured output (its grammar matcher
  would have to walk the drafts before they are verified) or asks for no drafts
  (``SamplingParams.num_speculative_tokens=0``).
"""

from __future__ import annotations

from dataclasses import dataclass

from serve.engine.request import Request
from serve.engine.spec_config import SpeculativeConfig
from serve.engine.spec_proposer import Proposer, build_proposer

_MAX_PAUSE_STEPS = 32


@dataclass
class _Adaptive:
    num_tokens: int
    pause: int = 0  # steps left without drafts
    next_pause: int = 1


@dataclass
class SpecCounters:
    """Totals since the engine started (metrics read them from ``EngineStats``)."""

    num_drafts: int = 0  # verification rows: steps of a request that carried drafts
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0


class Speculator:
    def __init__(self, config: SpeculativeConfig, proposer: Proposer | None = None) -> None:
        self.config = config
        self.proposer = proposer if proposer is not None else build_proposer(config)
        self.counters = SpecCounters()
        self._states: dict[str, _Adaptive] = {}

    def enabled_for_batch(self, num_running: int) -> bool:
        return num_running < self.config.disable_by_batch_size

    def draft(self, request: Request, max_tokens: int) -> list[int]:
        """Draft tokens to follow the request's tokens (at most ``max_tokens``; may be [])."""
        params = request.params
        limit = self.config.num_speculative_tokens
        if params.num_speculative_tokens is not None:
            limit = min(limit, params.num_speculative_tokens)
        if limit <= 0 or max_tokens <= 0 or params.structured_outputs is not None:
            return []
        state = self._states.get(request.request_id)
        if state is None:
            state = self._states[request.request_id] = _Adaptive(limit)
        if state.pause > 0:
            state.pause -= 1
            return []
        return self.proposer.propose(request, min(state.num_tokens, limit, max_tokens))

    def record(self, request: Request, num_draft_tokens: int, num_accepted: int) -> None:
        """A verified step: ``num_accepted`` of the request's ``num_draft_tokens`` held."""
        counters = self.counters
        counters.num_drafts += 1
        counters.num_draft_tokens += num_draft_tokens
        counters.num_accepted_tokens += num_accepted
        request.num_draft_tokens += num_draft_tokens
        request.num_accepted_draft_tokens += num_accepted
        state = self._states.get(request.request_id)
        if state is None or not self.config.adaptive:
            return
        limit = self.config.num_speculative_tokens
        if num_accepted == num_draft_tokens:
            state.num_tokens = min(limit, state.num_tokens + 1)
            state.next_pause = 1
        elif num_accepted > 0:
            state.num_tokens = num_accepted + 1
            state.next_pause = 1
        else:
            state.num_tokens = max(1, state.num_tokens // 2)
            state.pause = state.next_pause
            state.next_pause = min(_MAX_PAUSE_STEPS, state.next_pause * 2)

    def finish(self, request: Request) -> None:
        self._states.pop(request.request_id, None)
        self.proposer.finish(request)
