"""The engine: admit requests, schedule a step, run it, turn tokens into outputs.

Synchronous and single-threaded by design (the asyncio front in ``async_engine.py`` runs
it in one thread); every request ends in exactly one finished output, whether it stopped,
hit its length, was aborted or failed.

A step has three parts. ``launch`` schedules and hands the step to the step runner;
``collect`` waits for its tokens and applies them (token-level stops free blocks here);
``render`` turns them into text and outputs (detokenization, stop strings). ``step`` runs
the three in series.

The service's loop (``advance``) schedules step N+1 while step N is still running, and
chains it behind N on the step runner: the input token of a request that N is sampling is
a placeholder the runner fills in, so the model goes from step N to N+1 with no engine work
between them. Collecting and rendering N then overlap N+1. What changes against the series
loop is only when work joins and leaves, never a token: a request that stops on a token of
step N also ran in N+1 (its extra token is dropped, its blocks freed at N's collect), a
stop string found while rendering ends the request a step later (the same), and a waiting
request is admitted a step later when N's finishes free its room. Scheduling ahead never
preempts: short of blocks, it launches the requests that got theirs (the rest wait a step,
keeping their blocks), and when none did, the loop collects N first and schedules in series.
So every block a pass registers in the prefix cache belongs to a step that runs: a request
whose blocks were allocated in a pass is computed by that pass's step.

Speculative decoding (``speculative_config``): a decoding request may carry draft tokens
that the step verifies (model/spec_verify.py), emitting one to k + 1 tokens. Collect rolls
``num_computed_tokens`` back past the rejected drafts and frees their blocks. A step with
drafts is never chained ahead of (how many of its tokens hold is unknown until it answers),
and while the speculator is on for the batch size the loop runs in series, so drafts are
proposed from every token known.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from model.config import ModelConfig
from model.sampling_params import SamplingParams
from model.step import SampledToken, StepOutput
from model.tokenizer import Tokenizer
from serve.engine.block_manager import BlockManager
from serve.engine.config import EngineConfig
from serve.engine.constraints import RequestConstraints
from serve.engine.errors import EngineDeadError, InvalidRequestError
from serve.engine.executor import Executor, host_tier_size
from serve.engine.kv_events import KVEventSink
from serve.engine.output import OutputProcessor
from serve.engine.request import FINISHED, Request, RequestOutput, RequestStatus
from serve.engine.scheduler import ScheduledRequest, Scheduler, SchedulerOutput
from serve.engine.speculator import Speculator
from serve.engine.stats import EngineStats, engine_stats
from serve.engine.step_builder import StepBuilder
from serve.engine.step_runner import InlineStepRunner, StepRunner
from serve.engine.token_apply import append_tokens, take_back

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Launched:
    """A step handed to the step runner, not collected yet."""

    scheduled: SchedulerOutput
    result: concurrent.futures.Future[StepOutput]
    has_drafts: bool = False


# Collected tokens waiting to be rendered: the request, its new tokens (one, or up to k + 1
# from a step with drafts), their logprobs entries (None: not asked for).
Collected = tuple[Request, list[int], list[dict[int, float]] | None]


class LLMEngine:
    def __init__(self, config: EngineConfig, executor: Executor, tokenizer: Tokenizer,
                 model_config: ModelConfig, event_sink: KVEventSink | None = None) -> None:
        self.config = config
        self.executor = executor
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.num_aborted = 0
        self.max_model_len = executor.max_model_len
        num_host_blocks, self.host_block_bytes = host_tier_size(executor)
        self.block_manager = BlockManager(executor.num_kv_blocks, config.block_size,
                                          config.enable_prefix_caching, num_host_blocks)
        spec = config.speculative_config
        self.speculator = Speculator(spec) if spec is not None else None
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   config.max_num_batched_tokens, config.max_waiting_requests,
                                   self.speculator)
        self.outputs = OutputProcessor(tokenizer)
        # The prompt, logit masks and grammars, checked (and grammars compiled) when a request
        # is added.
        self.constraints = RequestConstraints(tokenizer, model_config.vocab_size,
                                              config.tokenizer or config.model)
        self.event_sink = event_sink
        self.eos_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None \
            else model_config.eos_token_id
        self.requests: dict[str, Request] = {}
        self.step_runner: StepRunner = InlineStepRunner(executor)
        self.step_builder = StepBuilder()
        self._pending_outputs: list[RequestOutput] = []
        # Set when the model workers fail: the engine refuses new work from then on.
        self.dead_reason: str | None = None

    @property
    def kv_capacity_tokens(self) -> int:
        return self.block_manager.num_blocks * self.config.block_size

    # ---- requests ---------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: str | Sequence[int],
                    params: SamplingParams | None = None, cache_salt: str | None = None
                    ) -> Request:
        params = params or SamplingParams()
        if self.dead_reason is not None:
            raise EngineDeadError(self.dead_reason)
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        if params.n != 1:  # the callers fan out (serve/engine/choices.py)
            raise InvalidRequestError(f"an engine request makes one choice, got n={params.n}: "
                                      "add one request per choice")
        if isinstance(prompt, str):
            text, token_ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, token_ids = None, [int(t) for t in prompt]
        self.constraints.check_prompt(token_ids, self.max_model_len, self.kv_capacity_tokens)
        params = self.constraints.prepare(params)
        room = min(self.max_model_len, self.kv_capacity_tokens) - len(token_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        request = Request(request_id, token_ids, params, max_tokens, self.eos_token_id,
                          cache_salt=cache_salt, prompt=text)
        self.scheduler.add(request)
        self.requests[request_id] = request
        return request

    def abort(self, request_ids: str | Sequence[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        for request_id in ids:
            request = self.requests.get(request_id)
            if request is not None:
                self.num_aborted += 1
                self._finish(request, RequestStatus.FINISHED_ABORTED)
                self._pending_outputs.append(self.outputs.make_output(request, []))

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0 or bool(self._pending_outputs)

    def _finish(self, request: Request, status: RequestStatus, error: str | None = None
                ) -> None:
        self.scheduler.finish(request, status)
        if self.speculator is not None:
            self.speculator.finish(request)
        if error is not None:
            request.error = error
        self.requests.pop(request.request_id, None)
        self.step_builder.forget(request)

    def fail_all(self, message: str) -> list[RequestOutput]:
        """Finish every live request with an error (workers died); frees all blocks."""
        outputs = []
        for request in list(self.requests.values()):
            self._finish(request, RequestStatus.FINISHED_ERROR, message)
            outputs.append(self.outputs.make_output(request, []))
        # Blocks were registered when allocated, before their KV was written: after a
        # failed step some cached blocks may hold garbage, so drop every cached key.
        self.block_manager.reset_prefix_cache()
        return outputs

    # ---- the step ---------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One step in series: launch, collect, render."""
        launched = self.launch()
        return self.render(self.collect(launched) if launched is not None else [])

    def advance(self, launched: Launched | None,
                between: Callable[[], None] | None = None) -> tuple[Launched | None,
                                                                    list[RequestOutput]]:
        """The overlapped step: collect ``launched`` (step N), run ``between`` (admit new
        requests, aborts), launch step N+1, and render step N while N+1 runs. Returns step
        N+1 (collect it next) and step N's outputs."""
        if between is not None:
            between()
        following = None
        if launched is not None and self.step_runner.chains and not launched.has_drafts \
                and not self._speculating():
            following = self.launch(ahead=True)
        collected = [] if launched is None else self.collect(launched)
        if following is None and self.has_unfinished_requests():
            following = self.launch()
        return following, self.render(collected)

    def launch(self, ahead: bool = False) -> Launched | None:
        """Schedule the next step and hand it to the step runner (None: nothing to run, or,
        ``ahead`` of collecting the step before, nothing that can run yet)."""
        if self.dead_reason is not None:
            return None
        scheduled = self.scheduler.schedule(ahead)
        if not scheduled.scheduled:
            return None
        step, pending = self.step_builder.build(scheduled, self.block_manager.drain_copies())
        has_drafts = any(item.draft_token_ids for item in scheduled.scheduled)
        return Launched(scheduled, self.step_runner.submit(step, pending), has_drafts)

    def _speculating(self) -> bool:
        """Whether the next step may carry drafts (then it is scheduled in series)."""
        return self.speculator is not None and \
            self.speculator.enabled_for_batch(len(self.scheduler.running))

    def collect(self, launched: Launched) -> list[Collected]:
        """Wait for the step's tokens and apply them; a failed step fails every request."""
        try:
            result = launched.result.result()
        except Exception as exc:
            if self.dead_reason is None:  # a step chained behind a failed one fails too
                logger.exception("model execution failed")
                self.dead_reason = f"model execution failed: {exc}"
            self._pending_outputs.extend(self.fail_all(self.dead_reason))
            return []
        sampled: dict[str, list[SampledToken]] = {}
        for token in result.sampled:
            sampled.setdefault(token.request_id, []).append(token)
        collected: list[Collected] = []
        for item in launched.scheduled.scheduled:
            if not item.samples:
                continue  # mid-prefill
            request = item.request
            request.num_pending_tokens -= 1
            tokens = sampled.get(request.request_id)
            if item.draft_token_ids and tokens:
                self._settle_drafts(item, len(tokens) - 1)
            if tokens is None or request.status in FINISHED:
                continue  # finished since the launch: its token is dropped
            token_ids, entries, status = append_tokens(request, tokens, self.max_model_len)
            if status is not None:
                self._finish(request, status)
            collected.append((request, token_ids, entries))
        return collected

    def _settle_drafts(self, item: ScheduledRequest, num_accepted: int) -> None:
        """Roll the request back past its rejected drafts: their KV is garbage, and the
        blocks that held only them go back to the pool (they were never hashed)."""
        request = item.request
        num_rejected = len(item.draft_token_ids) - num_accepted
        request.num_computed_tokens -= num_rejected
        self.block_manager.trim(request.request_id, request.num_computed_tokens)
        assert self.speculator is not None
        self.speculator.record(request, len(item.draft_token_ids), num_accepted)

    def render(self, collected: list[Collected]) -> list[RequestOutput]:
        """Text and outputs for collected tokens, after the outputs made in between (aborts,
        failures); a request whose finished output was already made is skipped."""
        outputs, self._pending_outputs = self._pending_outputs, []
        make_output, add_tokens = self.outputs.make_output, self.outputs.add_tokens
        for request, token_ids, entries in collected:
            if request.final_emitted:
                continue
            if len(token_ids) > 1 and request.params.stop:
                delta_text, stopped, keep = self.outputs.add_run(request, token_ids)
                take_back(request, token_ids, entries, keep)
            else:
                delta_text, stopped = add_tokens(request, token_ids)
            if stopped and not request.is_finished:
                self._finish(request, RequestStatus.FINISHED_STOPPED)
            elif stopped:
                request.status = RequestStatus.FINISHED_STOPPED
            outputs.append(make_output(request, token_ids, delta_text, entries))
        self._publish_events()
        return outputs

    def _publish_events(self) -> None:
        events = self.block_manager.drain_events()
        if events and self.event_sink is not None:
            try:
                self.event_sink.publish(events)
            except Exception:  # the index is advisory; serving must not fail with it
                logger.exception("publishing %d KV events failed", len(events))

    # ---- introspection ----------------------------------------------------------------

    def stats(self) -> EngineStats:
        return engine_stats(self.scheduler, self.speculator, self.kv_capacity_tokens,
                            self.num_aborted, self.host_block_bytes)
