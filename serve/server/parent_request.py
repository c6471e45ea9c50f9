"""One request and its ``n`` choices, as the LLMServer runs them (vLLM's ``ParentRequest``).

Each choice is an engine request of its own over the same prompt (serve/engine/choices.py).
The parent starts them with one consumer API (``AsyncLLMEngine.start``: the engine hands
each step's outputs to a callback), turns each output into the chunk to send, counts the
usage so that only the request's last chunk says it is done (every choice's tokens, the
prompt once), and aborts every choice when the request ends early.

    n=2, request "r": engine requests "r.0" and "r.1"; chunks carry index 0 and 1; the
    chunk that finishes the second choice to end is the request's ``final`` one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

from serve.engine.async_engine import AsyncLLMEngine
from serve.engine.choices import choice_params, choice_request_id
from serve.engine.errors import EngineDeadError
from serve.engine.request import RequestOutput
from serve.protocol import ServeChunk, ServeRequest
from serve.server.outputs import RequestTiming, log_failure, output_chunk

# What the engine hands a choice: an output, or the error that ends it.
ChoiceSink = Callable[[int, RequestOutput | BaseException], None]


class ParentRequest:
    def __init__(self, request: ServeRequest, replica_id: str, timing: RequestTiming) -> None:
        self.request = request
        self.replica_id = replica_id
        self.timing = timing
        n = request.params.n
        self.n = n
        self.child_ids = [choice_request_id(request.request_id, i, n) for i in range(n)]
        # Per finished choice: its (prompt, completion, cached) token counts.
        self._finished: dict[int, tuple[int, int, int]] = {}
        self.complete = False  # the final chunk was made

    async def start(self, engine: AsyncLLMEngine, sink: ChoiceSink) -> None:
        """Add every choice to the engine; ``sink(index, output or error)`` gets their
        outputs on this event loop, one call per choice per step."""
        request = self.request
        for index, child_id in enumerate(self.child_ids):
            await engine.start(request.prompt_token_ids, choice_params(request.params, index),
                               child_id, request.cache_salt, functools.partial(sink, index))

    def abort(self, engine: AsyncLLMEngine) -> None:
        """Stop every choice still running (the client left, or one choice failed)."""
        for child_id in self.child_ids:
            with contextlib.suppress(EngineDeadError):
                engine.abort(child_id)

    def chunk(self, index: int, output: RequestOutput) -> ServeChunk:
        """Choice ``index``'s output as the chunk to send: its timing noted, a failure
        logged, the usage on the request's last chunk only."""
        if index == 0:
            self.timing.saw(output)
        log_failure(self.request, output)
        chunk = output_chunk(output, self.request.echo_id, self.replica_id, index)
        if chunk.final and chunk.error_code is None and self.n > 1:
            self._finished[index] = (chunk.prompt_tokens, chunk.completion_tokens,
                                     chunk.cached_tokens)
            if len(self._finished) < self.n:
                chunk.final = False
                chunk.prompt_tokens = chunk.completion_tokens = chunk.cached_tokens = 0
            else:
                chunk.prompt_tokens, _, chunk.cached_tokens = self._finished[0]
                chunk.completion_tokens = sum(c[1] for c in self._finished.values())
        if chunk.final or chunk.error_code is not None:
            # One failed choice fails the request; the others are aborted.
            self.complete = chunk.error_code is None
        return chunk
