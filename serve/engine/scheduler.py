"""Iteration-level scheduling under a token budget, with chunked prefill and preemption.

Each step first serves the running requests in arrival order (a decode costs one token, an
unfinished prefill takes what budget is left: that is chunked prefill), then admits waiting
requests while budget, sequence slots and KV blocks remain. When a running request cannot
get a block, the most recently admitted running request is preempted: its blocks are freed
(they stay in the prefix cache) and it is recomputed later.

With a speculator, a decoding request may also get draft tokens (serve/engine/speculator.py):
it then computes ``1 + len(drafts)`` tokens, the drafts' slots allocated as pending tokens
(never hashed), and when blocks are short its drafts go first, before anyone is preempted.
Steps scheduled ahead get no drafts: the step before is still deciding how many of its
tokens hold.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from serve.engine.block_manager import BlockManager
from serve.engine.errors import QueueFullError
from serve.engine.request import Request, RequestStatus
from serve.engine.speculator import Speculator


@dataclass(slots=True)
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    block_table: list[int]
    # The chunk reaches the request's last token (known or pending), so the step samples one.
    samples: bool
    # Draft tokens after the last known one (a decode with drafts; verified at collect).
    draft_token_ids: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    # Set by ``schedule(ahead=True)`` when a running request could not get its blocks
    # without preempting: it and the requests after it wait (no admissions either).
    incomplete: bool = False

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(item.num_new_tokens for item in self.scheduled)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int,
                 max_num_batched_tokens: int, max_waiting_requests: int,
                 speculator: Speculator | None = None) -> None:
        self.block_manager = block_manager
        self.speculator = speculator
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_waiting_requests = max_waiting_requests
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, request: Request) -> None:
        # Requests the next step can start (free running slots) do not wait: a burst that
        # arrives between two steps is not refused while the engine has room to run it.
        free_slots = max(0, self.max_num_seqs - len(self.running))
        if len(self.waiting) >= self.max_waiting_requests + free_slots:
            raise QueueFullError(f"the waiting queue is full ({self.max_waiting_requests} "
                                 "requests); retry later")
        self.waiting.append(request)

    def schedule(self, ahead: bool = False) -> SchedulerOutput:
        """The next step. ``ahead``: the step before has not been collected yet, so its
        sampled tokens are pending; a request whose pending token is its last by length is
        left out, and a shortage of blocks preempts nobody, because preempting needs the
        pending tokens in hand: the requests scheduled so far are the step, and the output is
        marked ``incomplete``. (Discarding such a step instead would leave the blocks it
        registered in the prefix cache without their KV, if their request were then
        preempted before any step computed them.)"""
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        index = 0
        allocate = self.block_manager.allocate_slots
        running = self.running
        speculator = self.speculator
        if speculator is not None and (ahead or not speculator.enabled_for_batch(len(running))):
            speculator = None
        while index < len(running) and budget > 0:
            request = running[index]
            pending = request.num_pending_tokens
            if pending and request.num_output_tokens + pending >= request.max_tokens:
                index += 1  # it finishes when its pending token arrives
                continue
            num_known = len(request.token_ids) + pending
            num_new = min(num_known - request.num_computed_tokens, budget)
            drafts: list[int] = []
            if speculator is not None and num_new == 1 and not pending:
                # Every emitted token counts against max_tokens: the bonus token and drafts.
                room = request.max_tokens - request.num_output_tokens - 1
                drafts = speculator.draft(request, min(room, budget - 1))
            # The common case first, one call; short of blocks, preempt and retry.
            table = allocate(request.request_id, request.token_ids, request.num_computed_tokens,
                             num_new + len(drafts), num_pending_tokens=pending + len(drafts))
            if table is not None and drafts:
                num_new += len(drafts)
            elif table is None and drafts:  # drafts are the first thing to give up
                drafts = []
                table = allocate(request.request_id, request.token_ids,
                                 request.num_computed_tokens, num_new)
            if table is None:
                if ahead:
                    out.incomplete = True
                    return out
                table = self._allocate_or_preempt(request, num_new, out)
            if table is None:
                break
            out.scheduled.append(ScheduledRequest(
                request, num_new, table,
                request.num_computed_tokens + num_new == num_known + len(drafts), drafts))
            budget -= num_new
            index += 1
        if out.preempted:
            return out  # memory is short: do not admit new work in the same step
        while self.waiting and budget > 0 and len(running) < self.max_num_seqs:
            request = self.waiting[0]
            hits, num_hit_tokens = self.block_manager.get_computed_blocks(
                request.request_id, request.token_ids, request.cache_salt)
            num_new = min(request.num_tokens - num_hit_tokens, budget)
            table = self.block_manager.allocate_slots(
                request.request_id, request.token_ids, num_hit_tokens, num_new, hits,
                request.cache_salt)
            if table is None:
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_hit_tokens
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit_tokens
            running.append(request)
            out.scheduled.append(ScheduledRequest(
                request, num_new, table, num_hit_tokens + num_new == request.num_tokens))
            budget -= num_new
        return out

    def _allocate_or_preempt(self, request: Request, num_new: int, out: SchedulerOutput
                             ) -> list[int] | None:
        while True:
            table = self.block_manager.allocate_slots(
                request.request_id, request.token_ids, request.num_computed_tokens, num_new)
            if table is not None:
                return table
            # Victims come from the tail, so a request already scheduled this step (nearer
            # the head) is never preempted after the fact.
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is request:
                return None

    def _preempt(self, request: Request) -> None:
        self.block_manager.free(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.waiting.appendleft(request)

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Take the request out of the queues and return its blocks (idempotent)."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_manager.free(request.request_id)
        if not request.is_finished:
            request.status = status
