"""Per-request text: incremental detokenization, stop strings, and the outputs handed back."""

from __future__ import annotations

from model.detokenizer import IncrementalDetokenizer
from model.tokenizer import Tokenizer
from serve.engine.request import CompletionOutput, Request, RequestOutput, RequestStatus
from serve.engine.stop import check_stop


class OutputProcessor:
    """Keeps one detokenizer per live request and turns new tokens into new text.

    Text that might be the beginning of a stop string is held back, so a streaming client
    never sees part of a stop string that is later cut.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._detokenizers: dict[str, IncrementalDetokenizer] = {}

    def add_text(self, request: Request, new_token_ids: list[int]) -> bool:
        """Extend ``request.text``; returns True if a stop string finished the request."""
        detokenizer = self._detokenizers.get(request.request_id)
        if detokenizer is None:
            detokenizer = IncrementalDetokenizer(self.tokenizer,
                                                 request.params.skip_special_tokens)
            self._detokenizers[request.request_id] = detokenizer
        checked_len = len(request.text)
        for token_id in new_token_ids:
            request.text += detokenizer.step(token_id)
        if request.is_finished:
            request.text += detokenizer.flush()
        stop = request.params.stop
        if not stop:
            return False
        result = check_stop(request.text, checked_len, stop,
                            request.params.include_stop_str_in_output)
        if result.match is None:
            return False
        request.text = request.text[:result.match.truncate_to]
        request.stop_reason = result.match.stop_str
        return True

    def emit_len(self, request: Request) -> int:
        """How much of ``request.text`` may be streamed now."""
        if request.is_finished or not request.params.stop:
            return len(request.text)
        return check_stop(request.text, len(request.text), request.params.stop,
                          request.params.include_stop_str_in_output).emit_len

    def make_output(self, request: Request, new_token_ids: list[int]) -> RequestOutput:
        emit_len = max(self.emit_len(request), request.emitted_text_len)
        delta_text = request.text[request.emitted_text_len:emit_len]
        request.emitted_text_len = emit_len
        if request.is_finished:
            self._detokenizers.pop(request.request_id, None)
        completion = CompletionOutput(
            index=0,
            text=request.text[:emit_len],
            token_ids=list(request.output_token_ids),
            cumulative_logprob=request.cumulative_logprob,
            logprobs=request.logprobs,
            finish_reason=request.finish_reason,
            stop_reason=request.stop_reason,
            delta_text=delta_text,
            delta_token_ids=new_token_ids,
        )
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            outputs=[completion],
            finished=request.is_finished,
            num_cached_tokens=max(request.num_cached_tokens, 0),
            error=request.error,
        )

    def forget(self, request_id: str) -> None:
        self._detokenizers.pop(request_id, None)


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
