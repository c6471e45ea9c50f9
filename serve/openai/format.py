"""OpenAI's response shapes, built from the LLMServer's ``ServeChunk`` stream.

A ``ChatFormat`` or ``CompletionFormat`` is made per request and turns chunks into the
non-streaming body (``response``) or into Server-Sent-Event chunks (``delta``, ``final``,
``usage_chunk``). Worked example of a chat stream with ``include_usage``::

    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, ...}]}
    {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}]}
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1, ...}}
    [DONE]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from serve.protocol import ServeChunk


def usage(final: ServeChunk) -> dict[str, Any]:
    return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens,
            "total_tokens": final.prompt_tokens + final.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": final.cached_tokens}}


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


@dataclass
class Output:
    """Everything generated so far: the concatenated chunks."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)

    def add(self, chunk: ServeChunk) -> None:
        self.text += chunk.text
        self.token_ids.extend(chunk.token_ids)
        self.logprobs.extend(chunk.logprobs)


@dataclass
class _Format:
    """What both endpoints share: ids, the model's name, token text for logprobs."""

    id: str
    created: int
    model: str
    tokenizer: Any
    top_logprobs: int | None  # None: no logprobs asked for
    include_usage: bool = False

    object_name = ""
    chunk_object_name = ""

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def ranked(self, entry: dict[int, float]) -> list[tuple[int, float]]:
        """The ``top_logprobs`` most likely tokens of one position, best first."""
        return sorted(entry.items(), key=lambda kv: -kv[1])[: self.top_logprobs or 0]

    def _envelope(self, object_name: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created,
                "model": self.model, "choices": choices}

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        body = self._envelope(self.chunk_object_name, [{"index": 0, **choice}])
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, final: ServeChunk) -> dict[str, Any]:
        return {**self._envelope(self.chunk_object_name, []), "usage": usage(final)}

    def opening(self) -> list[dict[str, Any]]:
        return []


class ChatFormat(_Format):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def logprobs(self, token_ids: list[int], entries: list[dict[int, float]]
                 ) -> dict[str, Any] | None:
        if self.top_logprobs is None:
            return None
        content = []
        for token_id, entry in zip(token_ids, entries, strict=False):
            text = self.token_text(token_id)
            top = [{"token": self.token_text(t), "logprob": lp,
                    "bytes": list(self.token_text(t).encode())} for t, lp in self.ranked(entry)]
            content.append({"token": text, "logprob": entry.get(token_id, 0.0),
                            "bytes": list(text.encode()), "top_logprobs": top})
        return {"content": content}

    def response(self, output: Output, final: ServeChunk) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": output.text},
                  "logprobs": self.logprobs(output.token_ids, output.logprobs),
                  "finish_reason": final.finish_reason}
        return {**self._envelope(self.object_name, [choice]), "usage": usage(final)}

    def opening(self) -> list[dict[str, Any]]:
        return [self._chunk({"delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None})]

    def delta(self, chunk: ServeChunk) -> dict[str, Any]:
        return self._chunk({"delta": {"content": chunk.text},
                            "logprobs": self.logprobs(chunk.token_ids, chunk.logprobs),
                            "finish_reason": None})

    def final(self, finish_reason: str | None) -> dict[str, Any]:
        return self._chunk({"delta": {}, "logprobs": None, "finish_reason": finish_reason})


@dataclass
class CompletionFormat(_Format):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    # Characters of text already sent: where the next token starts (legacy text_offset).
    text_offset: int = 0

    def logprobs(self, token_ids: list[int], entries: list[dict[int, float]]
                 ) -> dict[str, Any] | None:
        if self.top_logprobs is None:
            return None
        tokens, token_logprobs, top, offsets = [], [], [], []
        for token_id, entry in zip(token_ids, entries, strict=False):
            text = self.token_text(token_id)
            tokens.append(text)
            token_logprobs.append(entry.get(token_id, 0.0))
            top.append({self.token_text(t): lp for t, lp in self.ranked(entry)})
            offsets.append(self.text_offset)
            self.text_offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
                "text_offset": offsets}

    def response(self, output: Output, final: ServeChunk) -> dict[str, Any]:
        choice = {"index": 0, "text": output.text,
                  "logprobs": self.logprobs(output.token_ids, output.logprobs),
                  "finish_reason": final.finish_reason}
        return {**self._envelope(self.object_name, [choice]), "usage": usage(final)}

    def delta(self, chunk: ServeChunk) -> dict[str, Any]:
        return self._chunk({"text": chunk.text,
                            "logprobs": self.logprobs(chunk.token_ids, chunk.logprobs),
                            "finish_reason": None})

    def final(self, finish_reason: str | None) -> dict[str, Any]:
        return self._chunk({"text": "", "logprobs": None, "finish_reason": finish_reason})
