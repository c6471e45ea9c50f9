"""What an LLMServer replica makes of its engine's outputs: the chunks it streams, the
usage of a request's several choices, and the timing its metrics record."""

from __future__ import annotations

import logging
import time

from serve.engine.request import RequestOutput
from serve.errors import REPLICA_FAILED, Status
from serve.metrics import RequestRecord
from serve.protocol import ServeChunk, ServeRequest

logger = logging.getLogger(__name__)


def output_chunk(output: RequestOutput, request_id: str, replica_id: str, index: int = 0
           ) -> ServeChunk:
    completion = output.outputs[0]
    chunk = ServeChunk(
        request_id=request_id,
        text=completion.delta_text,
        token_ids=completion.delta_token_ids,
        logprobs=completion.delta_logprobs,
        finish_reason=completion.finish_reason,
        stop_reason=completion.stop_reason,
        replica_id=replica_id,
        index=index,
    )
    if output.finished:
        chunk.final = True
        chunk.prompt_tokens = len(output.prompt_token_ids)
        chunk.completion_tokens = completion.num_tokens
        chunk.cached_tokens = output.num_cached_tokens
        if completion.finish_reason == "error":
            chunk.error_code, chunk.error = Status.UNAVAILABLE, REPLICA_FAILED
    return chunk


def log_failure(request: ServeRequest, output: RequestOutput) -> None:
    if output.finished and output.outputs[0].finish_reason == "error":
        logger.error("request %s (client id %r) failed: %s", request.request_id,
                     request.client_request_id, output.error)


class ChoiceUsage:
    """The usage of a request's choices, so that only its last chunk says the request is
    done, with every choice's tokens and the prompt once (the first choice's cache hit)."""

    def __init__(self, n: int) -> None:
        self.n = n
        # Per finished choice: its (prompt, completion, cached) token counts.
        self.finished: dict[int, tuple[int, int, int]] = {}

    def mark(self, chunk: ServeChunk) -> ServeChunk:
        if self.n == 1 or not chunk.final:
            return chunk
        if chunk.error_code is not None:
            return chunk  # one failed choice fails the request
        self.finished[chunk.index] = (chunk.prompt_tokens, chunk.completion_tokens,
                                      chunk.cached_tokens)
        if len(self.finished) < self.n:
            chunk.final = False
            chunk.prompt_tokens = chunk.completion_tokens = chunk.cached_tokens = 0
            return chunk
        chunk.prompt_tokens, _, chunk.cached_tokens = self.finished[0]
        chunk.completion_tokens = sum(counts[1] for counts in self.finished.values())
        return chunk


class RequestTiming:
    """Latency of one request, from the outputs it streamed (a clock read per output, the
    sums once at the end)."""

    __slots__ = ("start", "first", "last", "output", "failed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.first: float | None = None
        self.last = start
        self.output: RequestOutput | None = None
        self.failed = False  # answered with an error chunk

    def saw(self, output: RequestOutput) -> None:
        self.output = output
        if output.outputs[0].delta_token_ids:
            self.last = time.perf_counter()
            if self.first is None:
                self.first = self.last

    def record(self) -> RequestRecord:
        output = self.output
        if output is not None and output.finished:
            reason = output.outputs[0].finish_reason or "stop"
        else:  # refused (bad input, full queue), failed, or the caller left early
            reason = "error" if self.failed else "abort"
        if output is None:
            return RequestRecord(reason)
        generated = output.outputs[0].num_tokens
        ttft = None if self.first is None else self.first - self.start
        tpot = (self.last - self.first) / (generated - 1) \
            if self.first is not None and generated > 1 else None
        return RequestRecord(reason, len(output.prompt_token_ids), generated,
                             output.num_cached_tokens or 0, ttft, tpot)
