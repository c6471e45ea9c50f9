"""What an LLMServer replica makes of its engine's outputs: the chunks it streams and the
timing its metrics record (a request's several choices: serve/server/parent_request.py)."""

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
