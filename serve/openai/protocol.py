"""The OpenAI-compatible HTTP API's request bodies and errors.

Bodies are pydantic models that ignore fields they do not know (clients send many), reject
the ones this service cannot honour (n > 1, tools, echo, ...) with a 400 that says what to
send instead, and turn the sampling fields into the engine's ``SamplingParams``, whose own
validation messages (``temperature must be >= 0, got -0.5``) reach the client verbatim.
Errors have OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from model.chat_template import ChatMessage
from model.sampling_params import SamplingParams
from serve.config import Limits
from serve.errors import ERRORS, InvalidRequestError, ServiceError, Status, form_of
from serve.openai.structured import StructuredFields
from serve.sampling_limits import MaxTokensError, limited_sampling_params

# Optional sampling fields passed to SamplingParams only when set.
_NUMERIC_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                   "frequency_penalty", "repetition_penalty", "seed", "min_tokens", "n")

# Seconds a client should wait before retrying a 429 or 503.
RETRY_AFTER_S = 1

class ApiError(Exception):
    """An HTTP error response with OpenAI's error body."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error",
                 code: str = "invalid_argument", param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.code, self.param = (
            status, message, error_type, code, param)

    @classmethod
    def from_status(cls, status: Status, message: str) -> ApiError:
        form = form_of(status)
        return cls(form.http_status, message, form.openai_type, form.openai_code)

    @classmethod
    def from_service_error(cls, error: ServiceError) -> ApiError:
        return cls.from_status(error.status, error.message)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param,
                          "code": self.code}}

    def headers(self) -> dict[str, str]:
        retryable = self.status in (form.http_status for form in ERRORS.values() if form.retryable)
        return {"Retry-After": str(RETRY_AFTER_S)} if retryable else {}


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(StructuredFields):
    """Fields shared by /v1/chat/completions and /v1/completions; extensions are marked.
    The format and mask fields (response_format, guided_*, ...) are in structured.py."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # extension (vLLM)
    min_p: float | None = None  # extension
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None  # extension
    seed: int | None = None
    stop: Any = None  # a string or a list of strings; SamplingParams says what is wrong
    stop_token_ids: list[int] | None = None  # extension
    min_tokens: int | None = None  # extension
    ignore_eos: bool = False  # extension
    include_stop_str_in_output: bool = False  # extension
    n: int | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    session_id: str | None = None  # extension: keeps a conversation on one replica
    cache_salt: str | None = None  # extension: separates tenants' prefix caches

    def check_supported(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options needs stream: true", "stream_options")

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def requested_logprobs(self) -> int | None:
        return None

    def sampling_params(self, limits: Limits) -> SamplingParams:
        """Unset fields keep SamplingParams' defaults, except max_tokens: the service's limit
        (the engine clamps it to the room the context leaves), as OpenAI's API runs to the
        end of the context when it is left out."""
        values: dict[str, Any] = {name: getattr(self, name) for name in _NUMERIC_FIELDS
                                  if getattr(self, name) is not None}
        requested = self.requested_max_tokens()
        if requested is not None:
            values["max_tokens"] = requested
        values.update(stop=self.stop, stop_token_ids=self.stop_token_ids,
                      ignore_eos=self.ignore_eos,
                      include_stop_str_in_output=self.include_stop_str_in_output,
                      logprobs=self.requested_logprobs())
        try:
            values.update(logit_bias=self.logit_bias, **self.mask_values())
            return limited_sampling_params(values, limits, limits.max_new_tokens)
        except MaxTokensError as exc:
            raise bad_request(exc.message, "max_tokens") from None
        except InvalidRequestError as exc:
            raise bad_request(exc.message, getattr(exc, "param", None)) from None


class ChatCompletionRequest(_SamplingRequest):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    # Extensions (vLLM's names): continue the final assistant message instead of answering
    # it; add_generation_prompt false must come with it (a new turn cannot be left out).
    continue_final_message: bool = False
    add_generation_prompt: bool = True

    def check_supported(self) -> None:
        super().check_supported()
        if self.continue_final_message and self.add_generation_prompt:
            raise bad_request("continue_final_message needs add_generation_prompt: false (the "
                              "final message is continued, no new turn is opened)",
                              "add_generation_prompt")
        if not self.continue_final_message and not self.add_generation_prompt:
            raise bad_request("add_generation_prompt: false is only supported with "
                              "continue_final_message: true", "add_generation_prompt")
        if self.tools or self.functions or self.tool_choice not in (None, "none"):
            raise bad_request("tool calling is not supported: leave out tools, functions and "
                              "tool_choice", "tools")
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")

    def requested_max_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat_messages(self) -> list[ChatMessage]:
        """Messages with string content: text parts are joined, other parts refused."""
        return [ChatMessage(role=str(m.get("role")), content=_content(i, m.get("content")))
                for i, m in enumerate(self.messages)]


def _content(index: int, content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise bad_request(f"messages[{index}].content: only text parts "
                                  "({\"type\": \"text\", \"text\": ...}) are supported",
                                  "messages")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"messages[{index}].content must be a string or a list of text parts, "
                      f"got {type(content).__name__}", "messages")


class CompletionRequest(_SamplingRequest):
    prompt: Any
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise bad_request("echo is not supported: leave it out (or send false)", "echo")
        if self.suffix:
            raise bad_request("suffix is not supported: leave it out", "suffix")
        if self.best_of not in (None, 1, self.n):
            raise bad_request(f"best_of is {self.best_of}; only best_of equal to n (every "
                              "choice returned) is supported: leave it out", "best_of")

    def requested_logprobs(self) -> int | None:
        return self.logprobs

    def prompt_input(self) -> str | list[int]:
        """One prompt: a string or a list of token ids (a one-item batch is unwrapped)."""
        prompt = self.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            raise bad_request(f"prompt holds {len(prompt)} prompts; send one prompt per "
                              "request", "prompt")
        raise bad_request("prompt must be a string or a list of token ids", "prompt")


def parse_body(model: type[BaseModel], body: bytes) -> Any:
    """The body as ``model``; a 400 naming the fields to fix when it does not fit."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(_describe(exc.errors())) from None


def _describe(errors: Sequence[Any]) -> str:
    if errors and errors[0]["type"] == "json_invalid":
        return f"the body is not valid JSON: {errors[0]['msg']}"
    if errors and errors[0]["type"] == "model_type":
        return "the body must be a JSON object"
    parts = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more
