"""What the ingress hands an LLMServer replica, and what streams back.

Plain dataclasses: Serve pickles them between processes, and the router reads
``block_hashes`` and ``session_id`` from the pending request without touching the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from model.sampling_params import SamplingParams
from serve.engine.errors import Status


@dataclass
class ServeRequest:
    # Made by the Ingress, unique: the engine's key. The client's own id is only echoed
    # back and logged, so two clients (or one, twice) may use the same one.
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    session_id: str | None = None
    cache_salt: str | None = None
    # The prompt's chained block keys (serve.engine.block_hash), for prefix-aware routing.
    block_hashes: list[bytes] = field(default_factory=list)
    client_request_id: str = ""
    # The Ingress's output channel (serve/server/channel.py): when the replica holds one by
    # this id, the request's chunks travel on it; "" or unknown, on the call itself.
    channel_id: str = ""

    @property
    def echo_id(self) -> str:
        """The id the client sees on its responses: its own, else the server's."""
        return self.client_request_id or self.request_id


@dataclass
class ServeChunk:
    """New output of one choice since the previous chunk of that choice.

    A request for several choices (``n``) streams its choices' chunks interleaved, each
    with its ``index``; ``finish_reason`` ends one choice, ``final`` the whole request (the
    last chunk: it carries the usage, with the prompt counted once).
    """

    request_id: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    replica_id: str = ""
    index: int = 0
    final: bool = False
    # Errors travel in-band: raising through Serve would reach the client as INTERNAL with a
    # stack trace, so the replica reports the status and the Ingress maps it (serve/errors.py).
    error_code: Status | None = None
    error: str | None = None


@dataclass(frozen=True)
class ChannelOpen:
    """The one argument of ``LLMServer.channel``: the router sends it to ``replica_id`` only."""

    channel_id: str
    replica_id: str


# One channel item: the chunks of every request on the channel since its previous item,
# each with the engine's request id (``ServeRequest.request_id``), oldest first.
ChannelBatch = list[tuple[str, ServeChunk]]


def merge_chunks(chunks: list[ServeChunk]) -> ServeChunk:
    """One chunk in place of consecutive chunks of one choice: new output joined, the
    finish, usage and error from the last (only the last of a choice carries them)."""
    if len(chunks) == 1:
        return chunks[0]
    last = chunks[-1]
    return replace(
        last,
        text="".join(chunk.text for chunk in chunks),
        token_ids=[t for chunk in chunks for t in chunk.token_ids],
        logprobs=[entry for chunk in chunks for entry in chunk.logprobs])
