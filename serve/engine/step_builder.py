"""The step message: what the scheduler chose for a step, as the ``StepInput`` the runners get.

The runners keep each request's prompt, sampling parameters and generator between steps, so
a request's prompt and parameters travel once, in the first step that schedules it
(``NewRequest``; a preempted request is recomputed without being sent again), and once it
has finished its id travels in the next step, so the runners drop that state.

Building a step also does its token accounting: the scheduled tokens count as computed from
the moment the step is launched, and a sampling request gets one pending token until the
engine collects the step. Example: a decoding request scheduled ahead, while the step before
is still sampling its 41st token::

    before: len(token_ids) == 40, num_computed_tokens == 40, num_pending_tokens == 1
    sequence: token_ids == [PENDING_TOKEN], num_computed_tokens == 40, sample == True
    after:  num_computed_tokens == 41, num_pending_tokens == 2
"""

from __future__ import annotations

from model.step import BlockCopies, NewRequest, ScheduledSequence, StepInput
from serve.engine.request import Request
from serve.engine.scheduler import SchedulerOutput
from serve.engine.step_runner import PENDING_TOKEN


class StepBuilder:
    def __init__(self) -> None:
        # Finished since the last step was built, and known to the runners.
        self._finished_ids: list[str] = []

    def forget(self, request: Request) -> None:
        """The request finished: the next step tells the runners to drop its state, if they
        were ever sent it."""
        if request.sent_to_runner:
            self._finished_ids.append(request.request_id)

    def build(self, scheduled: SchedulerOutput, copies: BlockCopies | None
              ) -> tuple[StepInput, list[ScheduledSequence]]:
        """The step message, and its sequences whose input token is still pending. Marks the
        scheduled tokens computed (a failed step fails the request, so there is nothing to
        undo) and the sampled ones pending until the engine collects the step. ``copies``:
        the block moves between the KV tiers that the step runs before its forward."""
        sequences = []
        pending = []
        new: list[NewRequest] = []
        for item in scheduled.scheduled:
            request = item.request
            if not request.sent_to_runner:
                new.append(NewRequest(request.request_id, request.prompt_token_ids,
                                      request.params))
                request.sent_to_runner = True
            start = request.num_computed_tokens
            num_new = item.num_new_tokens
            drafts = item.draft_token_ids
            token_ids = request.token_ids[start:start + num_new - len(drafts)]
            token_ids.extend(drafts)
            seq = ScheduledSequence(request.request_id, token_ids, start, item.block_table,
                                    item.samples, len(drafts))
            if len(token_ids) < num_new:  # the last token is the one the step before samples
                token_ids.append(PENDING_TOKEN)
                pending.append(seq)
            sequences.append(seq)
            request.num_computed_tokens = start + num_new
            if item.samples:
                request.num_pending_tokens += 1
        step = StepInput(sequences, new, self._finished_ids, copies)
        self._finished_ids = []
        return step, pending
