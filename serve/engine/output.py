"""Per-request text: incremental detokenization, stop strings, and the outputs handed back."""

from __future__ import annotations

from model.detokenizer import DecodeCache, IncrementalDetokenizer
from model.tokenizer import Tokenizer
from serve.engine.request import (
    FINISHED,
    CompletionOutput,
    Request,
    RequestOutput,
    RequestStatus,
)
from serve.engine.stop import StopStrings


class _TextState:
    """What the processor keeps per live request.

    Only the tail of the text is ever searched: ``held`` is text made but not yet streamed
    (it might begin a stop string), ``tail`` the last ``max_len - 1`` streamed characters
    (with ``include_stop_str_in_output`` a stop string may begin in text already streamed).
    The streamed pieces are joined once, for the finished output.
    """

    __slots__ = ("detokenizer", "stops", "pieces", "tail", "held")

    def __init__(self, detokenizer: IncrementalDetokenizer, stops: StopStrings | None) -> None:
        self.detokenizer = detokenizer
        self.stops = stops
        self.pieces: list[str] = []
        self.tail = ""
        self.held = ""


class OutputProcessor:
    """Keeps one detokenizer per live request and turns new tokens into new text.

    Text that might be the beginning of a stop string is held back, so a streaming client
    never sees part of a stop string that is later cut.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._decode_cache = DecodeCache.of(tokenizer)
        self._states: dict[str, _TextState] = {}

    def _state(self, request: Request) -> _TextState:
        state = self._states.get(request.request_id)
        if state is None:
            params = request.params
            stops = StopStrings(params.stop, params.include_stop_str_in_output) \
                if params.stop else None
            state = _TextState(IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens,
                                                      cache=self._decode_cache), stops)
            self._states[request.request_id] = state
        return state

    def add_tokens(self, request: Request, new_token_ids: list[int], last: bool = True
                   ) -> tuple[str, bool]:
        """The text the tokens add that may be streamed now, and whether a stop string
        finished the request (its ``stop_reason`` is then set). ``last=False``: more tokens
        of the same step follow (a verified draft run is checked token by token), so a
        finished request is not flushed yet."""
        state = self._states.get(request.request_id) or self._state(request)
        finished = last and request.status in FINISHED
        detokenizer = state.detokenizer
        if len(new_token_ids) == 1:  # every decode step
            new = detokenizer.step(new_token_ids[0])
        else:
            new = "".join([detokenizer.step(token_id) for token_id in new_token_ids])
        if finished:
            new += detokenizer.flush()
        stops = state.stops
        if stops is None:
            if new:
                state.pieces.append(new)
            return new, False
        tail = state.tail
        window = tail + state.held + new
        base = len(tail)
        result = stops.check(window, base + len(state.held))
        stopped = result.match is not None
        if stopped:
            assert result.match is not None
            delta, state.held = window[base:max(base, result.match.truncate_to)], ""
            request.stop_reason = result.match.stop_str
        elif finished:  # held-back text was no stop string after all
            delta, state.held = window[base:], ""
        else:
            emit = max(base, result.emit_len)
            delta, state.held = window[base:emit], window[emit:]
        if delta:
            state.pieces.append(delta)
            state.tail = (tail + delta)[-(stops.max_len - 1):] if stops.max_len > 1 else ""
        return delta, stopped

    def add_run(self, request: Request, token_ids: list[int]) -> tuple[str, bool, int]:
        """``add_tokens`` for a verified run, checked for stop strings after each token as
        plain decoding would: returns the text, whether a stop string finished the request,
        and how many of the tokens it keeps (up to the one that completed the stop string)."""
        text = []
        for index, token_id in enumerate(token_ids):
            delta, stopped = self.add_tokens(request, [token_id],
                                             last=index == len(token_ids) - 1)
            text.append(delta)
            if stopped:
                return "".join(text), True, index + 1
        return "".join(text), False, len(token_ids)

    def make_output(self, request: Request, new_token_ids: list[int], delta_text: str = "",
                    delta_logprobs: list[dict[int, float]] | None = None) -> RequestOutput:
        finished = request.status in FINISHED
        if finished:
            state = self._states.pop(request.request_id, None)
            request.final_emitted = True
            completion = CompletionOutput(
                0, "".join(state.pieces) if state is not None else "",
                list(request.output_token_ids), request.cumulative_logprob,
                list(request.logprobs) if request.logprobs is not None else None,
                request.finish_reason, request.stop_reason, delta_text, new_token_ids,
                delta_logprobs or [], request.num_output_tokens)
        else:
            completion = CompletionOutput(
                0, "", [], request.cumulative_logprob, None, None, None, delta_text,
                new_token_ids, delta_logprobs or [], len(request.output_token_ids))
        cached = request.num_cached_tokens
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids,
                             [completion], finished, cached if cached > 0 else 0,
                             request.error, request.num_draft_tokens,
                             request.num_accepted_draft_tokens)


def finished_status(request: Request, token_id: int, max_model_len: int) -> RequestStatus | None:
    """Token-level stop conditions, checked after each sampled token."""
    params = request.params
    if request.num_output_tokens >= params.min_tokens:
        if token_id == request.eos_token_id and not params.ignore_eos:
            return RequestStatus.FINISHED_STOPPED
        if token_id in params.stop_token_ids:
            request.stop_reason = token_id
            return RequestStatus.FINISHED_STOPPED
    if request.num_output_tokens >= request.max_tokens:
        return RequestStatus.FINISHED_LENGTH
    if request.num_tokens >= max_model_len:
        return RequestStatus.FINISHED_LENGTH
    return None
