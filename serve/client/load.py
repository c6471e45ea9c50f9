"""Drive many concurrent streams at a service and record how each one ended.

For benchmarks and fault tests: every stream ends either with its whole output or with a
status, and the tally says which, how long each took, and what the client was told::

    outcomes = asyncio.run(run_streams("localhost:9000", [StreamSpec("hi", 32)] * 64))
    tally(outcomes)        # {"ok": 60, "UNAVAILABLE": 4}
    leaks(outcomes)        # [] unless some message shows a traceback, path, pid, ...

Imports only the SDK, grpc and the standard library.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from serve.client.aio import AsyncLLMClient
from serve.client.types import ClientError
from serve.grpc_api.leaks import LEAK_PATTERN


@dataclass(frozen=True)
class StreamSpec:
    prompt: str | list[int]
    max_tokens: int
    options: dict[str, Any] = field(default_factory=dict)
    # Cancel the stream this many seconds after it started (None: read it to the end).
    cancel_after_s: float | None = None


@dataclass
class Outcome:
    status: str  # "ok", "cancelled", or the gRPC status name
    tokens: int = 0
    finish_reason: str | None = None
    details: str = ""
    started: float = 0.0
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    ended: float = 0.0

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started


async def _one(client: AsyncLLMClient, spec: StreamSpec, timeout_s: float) -> Outcome:
    outcome = Outcome("ok", started=time.monotonic())
    options = {"ignore_eos": True, "temperature": 0.0, **spec.options}

    async def read() -> None:
        stream = client.stream_generate(spec.prompt, max_tokens=spec.max_tokens,
                                        timeout_s=timeout_s, **options)
        async for chunk in stream:
            now = time.monotonic()
            if chunk.token_ids:
                outcome.first_token = outcome.first_token or now
                outcome.token_times.extend([now] * len(chunk.token_ids))
            outcome.tokens += len(chunk.token_ids)
            if chunk.finish_reason:
                outcome.finish_reason = chunk.finish_reason

    try:
        if spec.cancel_after_s is None:
            await read()
        else:
            try:
                await asyncio.wait_for(read(), spec.cancel_after_s)
            except asyncio.TimeoutError:
                outcome.status = "cancelled"
    except ClientError as error:
        outcome.status, outcome.details = error.code.name, error.details
    outcome.ended = time.monotonic()
    return outcome


async def run_streams(target: str, specs: Sequence[StreamSpec], api_key: str | None = None,
                      timeout_s: float = 120.0, client: AsyncLLMClient | None = None
                      ) -> list[Outcome]:
    """All streams at once over one channel; one outcome per spec, in order."""
    own = client is None
    client = client or AsyncLLMClient(target, api_key=api_key, timeout_s=timeout_s)
    try:
        return list(await asyncio.gather(*(_one(client, spec, timeout_s) for spec in specs)))
    finally:
        if own:
            await client.close()


def tally(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return dict(Counter(outcome.status for outcome in outcomes))


def leaks(outcomes: Sequence[Outcome]) -> list[str]:
    """The client-visible messages that show internals (should be none)."""
    return [o.details for o in outcomes if o.details and LEAK_PATTERN.search(o.details)]


def percentile(values: Sequence[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
