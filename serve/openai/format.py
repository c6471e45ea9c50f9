"""OpenAI's response shapes, built from the LLMServer's ``ServeChunk`` stream.

A ``ChatFormat`` or ``CompletionFormat`` is made per request and turns chunks into the
non-streaming body (``response``) or into Server-Sent-Event chunks (``delta``, ``final``,
``usage_chunk``). Worked example of a chat stream with ``include_usage``::

    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, ...}]}
    {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": null}]}
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1, ...}}
    [DONE]

With ``n`` choices, each choice's chunks carry its ``index`` and arrive interleaved; each
choice ends with its own ``finish_reason`` chunk, and the usage chunk (prompt counted once)
comes after the last.
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
    """Everything one choice generated so far: its chunks concatenated."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, chunk: ServeChunk) -> None:
        self.text += chunk.text
        self.token_ids.extend(chunk.token_ids)
        self.logprobs.extend(chunk.logprobs)
        self.finish_reason = chunk.finish_reason or self.finish_reason


@dataclass
class Outputs:
    """Every choice's output, by index (one unless the request set n)."""

    choices: dict[int, Output] = field(default_factory=dict)

    def add(self, chunk: ServeChunk) -> None:
        output = self.choices.get(chunk.index)
        if output is None:
            output = self.choices[chunk.index] = Output()
        output.add(chunk)

    def in_order(self) -> list[tuple[int, Output]]:
        return sorted(self.choices.items())


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

    def _chunk(self, choice: dict[str, Any], index: int) -> dict[str, Any]:
        body = self._envelope(self.chunk_object_name, [{"index": index, **choice}])
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, final: ServeChunk) -> dict[str, Any]:
        return {**self._envelope(self.chunk_object_name, []), "usage": usage(final)}

    def opening(self, n: int) -> list[dict[str, Any]]:
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

    def response(self, outputs: Outputs, final: ServeChunk) -> dict[str, Any]:
        choices = [{"index": index, "message": {"role": "assistant", "content": output.text},
                    "logprobs": self.logprobs(output.token_ids, output.logprobs),
                    "finish_reason": output.finish_reason}
                   for index, output in outputs.in_order()]
        return {**self._envelope(self.object_name, choices), "usage": usage(final)}

    def opening(self, n: int) -> list[dict[str, Any]]:
        return [self._chunk({"delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}, index) for index in range(n)]

    def delta(self, chunk: ServeChunk) -> dict[str, Any]:
        return self._chunk({"delta": {"content": chunk.text},
                            "logprobs": self.logprobs(chunk.token_ids, chunk.logprobs),
                            "finish_reason": None}, chunk.index)

    def final(self, finish_reason: str | None, index: int = 0) -> dict[str, Any]:
        return self._chunk({"delta": {}, "logprobs": None, "finish_reason": finish_reason},
                           index)


@dataclass
class CompletionFormat(_Format):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    # Per choice, characters of text already sent: where its next token starts (legacy
    # text_offset).
    text_offsets: dict[int, int] = field(default_factory=dict)

    def logprobs(self, token_ids: list[int], entries: list[dict[int, float]], index: int = 0
                 ) -> dict[str, Any] | None:
        if self.top_logprobs is None:
            return None
        tokens, token_logprobs, top, offsets = [], [], [], []
        offset = self.text_offsets.get(index, 0)
        for token_id, entry in zip(token_ids, entries, strict=False):
            text = self.token_text(token_id)
            tokens.append(text)
            token_logprobs.append(entry.get(token_id, 0.0))
            top.append({self.token_text(t): lp for t, lp in self.ranked(entry)})
            offsets.append(offset)
            offset += len(text)
        self.text_offsets[index] = offset
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
                "text_offset": offsets}

    def response(self, outputs: Outputs, final: ServeChunk) -> dict[str, Any]:
        choices = [{"index": index, "text": output.text,
                    "logprobs": self.logprobs(output.token_ids, output.logprobs, index),
                    "finish_reason": output.finish_reason}
                   for index, output in outputs.in_order()]
        return {**self._envelope(self.object_name, choices), "usage": usage(final)}

    def delta(self, chunk: ServeChunk) -> dict[str, Any]:
        return self._chunk({"text": chunk.text,
                            "logprobs": self.logprobs(chunk.token_ids, chunk.logprobs,
                                                      chunk.index),
                            "finish_reason": None}, chunk.index)

    def final(self, finish_reason: str | None, index: int = 0) -> dict[str, Any]:
        return self._chunk({"text": "", "logprobs": None, "finish_reason": finish_reason},
                           index)
