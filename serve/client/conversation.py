"""A multi-turn chat on top of the client: it keeps the history and one session id.

The session id goes with every turn, so the router sends each one to the replica that holds
the conversation's KV cache and only the new turn's tokens are computed. A turn joins the
history only once the reply is complete: a failed or abandoned turn can simply be sent again.

    chat = client.conversation(system="Answer in one word.", temperature=0)
    chat.send("Name a prime.").text        # "Two."
    chat.send("Another one.").text         # sees the first turn; same replica
    chat.messages                          # system, user, assistant, user, assistant
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve.client.types import Completion, StreamChunk


class ChatClient(Protocol):
    """What a conversation needs of the blocking client (``LLMClient``)."""

    def chat(self, messages: list[dict[str, str]], **options: Any) -> Completion: ...

    def stream_chat(
        self, messages: list[dict[str, str]], **options: Any
    ) -> Generator[StreamChunk, None, None]: ...


class AsyncChatClient(Protocol):
    """What a conversation needs of the asyncio client (``AsyncLLMClient``)."""

    async def chat(self, messages: list[dict[str, str]], **options: Any) -> Completion: ...

    def stream_chat(
        self, messages: list[dict[str, str]], **options: Any
    ) -> AsyncGenerator[StreamChunk, None]: ...


def _history(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []


@dataclass
class _ConversationState:
    system: str | None
    session_id: str
    # Defaults for every turn (sampling, cache_salt, timeout_s); a turn's own keywords win.
    options: dict[str, Any]
    messages: list[dict[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        if "session_id" in self.options:
            raise ValueError("pass session_id as conversation(session_id=...)")
        self.messages = _history(self.system)

    def turn(
        self, user_text: str, options: dict[str, Any]
    ) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """The messages and keywords of the next turn; the history is not touched yet."""
        if not isinstance(user_text, str):
            raise ValueError(f"user_text must be a string, got {type(user_text)}")
        messages = [*self.messages, {"role": "user", "content": user_text}]
        return messages, {**self.options, **options, "session_id": self.session_id}

    def commit(self, messages: list[dict[str, str]], reply: str) -> None:
        self.messages = [*messages, {"role": "assistant", "content": reply}]

    def reset(self) -> None:
        """Forgets the turns (keeps the system prompt and the session id)."""
        self.messages = _history(self.system)


class Conversation(_ConversationState):
    def __init__(
        self, client: ChatClient, system: str | None, session_id: str, options: dict[str, Any]
    ) -> None:
        super().__init__(system, session_id, dict(options))
        self.client = client

    def send(self, user_text: str, **options: Any) -> Completion:
        messages, kwargs = self.turn(user_text, options)
        completion = self.client.chat(messages, **kwargs)
        self.commit(messages, completion.text)
        return completion

    def stream(self, user_text: str, **options: Any) -> Generator[StreamChunk, None, None]:
        """Like ``send``, chunk by chunk; the turn is kept once the stream is complete."""
        messages, kwargs = self.turn(user_text, options)
        return self._stream(messages, self.client.stream_chat(messages, **kwargs))

    def _stream(
        self, messages: list[dict[str, str]], chunks: Generator[StreamChunk, None, None]
    ) -> Generator[StreamChunk, None, None]:
        completion = Completion()
        try:
            for chunk in chunks:
                completion.add(chunk)
                yield chunk
        finally:
            chunks.close()  # cancels the RPC when this stream is left early
        self.commit(messages, completion.text)


class AsyncConversation(_ConversationState):
    def __init__(
        self, client: AsyncChatClient, system: str | None, session_id: str, options: dict[str, Any]
    ) -> None:
        super().__init__(system, session_id, dict(options))
        self.client = client

    async def send(self, user_text: str, **options: Any) -> Completion:
        messages, kwargs = self.turn(user_text, options)
        completion = await self.client.chat(messages, **kwargs)
        self.commit(messages, completion.text)
        return completion

    def stream(self, user_text: str, **options: Any) -> AsyncGenerator[StreamChunk, None]:
        messages, kwargs = self.turn(user_text, options)
        return self._stream(messages, self.client.stream_chat(messages, **kwargs))

    async def _stream(
        self, messages: list[dict[str, str]], chunks: AsyncGenerator[StreamChunk, None]
    ) -> AsyncGenerator[StreamChunk, None]:
        completion = Completion()
        try:
            async for chunk in chunks:
                completion.add(chunk)
                yield chunk
        finally:
            await chunks.aclose()  # cancels the RPC when this stream is left early
        self.commit(messages, completion.text)
