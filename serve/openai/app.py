"""OpenAI-compatible HTTP API, served by each Ingress replica's own ASGI server
(serve/ingress/http_server.py).

``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, and the probes
``GET /health`` and ``GET /-/healthz`` (Serve's proxy path, which KubeRay probes): 200 while
the replica can serve (a live LLMServer behind it), 503 otherwise. A request takes the gRPC
RPCs' path through the same front door (serve/ingress/front_door.py):
API key (``Authorization: Bearer <key>``), size limit, chat template or tokenizer, prompt
and sampling validation, block hashes, then ``LLMServer.generate`` through the prefix-aware
router. Errors are OpenAI-shaped JSON with the HTTP status of the gRPC code (see
``serve/errors.py``). A stream that the client drops is cancelled downstream, so
the engine aborts the request and frees its KV blocks.

Built once per Ingress replica::

    curl -s localhost:8000/v1/chat/completions -H 'Authorization: Bearer KEY' \\
      -d '{"model": "...", "messages": [{"role": "user", "content": "Hi"}]}'
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.errors import Status, status_of
from serve.openai.format import ChatFormat, CompletionFormat, Outputs, sse
from serve.openai.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    parse_body,
)
from serve.protocol import ServeChunk

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def _chunk_error(chunk: ServeChunk) -> ApiError:
    """An error the LLMServer reported in-band (error_code), as its HTTP status."""
    assert chunk.error_code is not None
    return ApiError.from_status(chunk.error_code, chunk.error or "")


def _call_error(exc: Exception, request_id: str = "http") -> ApiError:
    """Any exception (bad input, the downstream call failed, a surprise) as its HTTP
    error: ``status_of`` decides, as for every other layer (serve/errors.py)."""
    return ApiError.from_service_error(status_of(exc, request_id))


class OpenAIServer:
    """The route handlers; ``ingress`` is the front door of the Ingress replica that owns
    them."""

    def __init__(self, ingress: Any) -> None:
        self.ingress = ingress
        self.model_name: str = ingress.settings.model_name
        self.created = int(time.time())

    # ---- routes ------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        def prompt(body: ChatCompletionRequest) -> list[int]:
            return self.ingress.chat_prompt(body.chat_messages(), body.continue_final_message)

        return await self._generate(request, ChatCompletionRequest, prompt, ChatFormat,
                                    "chatcmpl")

    async def completions(self, request: Request) -> Response:
        def prompt(body: CompletionRequest) -> list[int]:
            given = body.prompt_input()
            return self.ingress.tokenizer.encode(given) if isinstance(given, str) else given

        return await self._generate(request, CompletionRequest, prompt, CompletionFormat,
                                    "cmpl")

    async def models(self, request: Request) -> Response:
        try:
            self._authenticate(request)
        except ApiError as exc:
            return error_response(exc)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request, model_id: str) -> Response:
        try:
            self._authenticate(request)
            self._check_model(model_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONResponse(self._model_card())

    async def health(self) -> Response:
        if self.ingress.ready():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    async def healthz(self) -> Response:
        """Serve's proxy answers this path; KubeRay's probes and pod labels read it."""
        if self.ingress.ready():
            return PlainTextResponse("success")
        return PlainTextResponse("no live model server behind this Ingress", status_code=503)

    # ---- the shared pipeline -----------------------------------------------------------

    async def _generate(self, request: Request, model: type[Any],
                        prompt: Callable[[Any], list[int]], format_class: type[Any],
                        id_prefix: str) -> Response:
        ingress = self.ingress
        try:
            self._authenticate(request)
            body = parse_body(model, await self._read_body(request))
            body.check_supported()
            self._check_model(body.model)
            ids = prompt(body)
            ingress.check_prompt(ids)
            params = body.sampling_params(ingress.settings.limits)
            serve_request = ingress.new_request(ids, params, "", body.session_id or "",
                                                body.cache_salt or "")
        except ApiError as exc:
            return error_response(exc)
        except Exception as exc:
            return error_response(_call_error(exc))
        output_format = format_class(
            id=f"{id_prefix}-{serve_request.request_id}", created=int(time.time()),
            model=self.model_name, tokenizer=ingress.tokenizer, top_logprobs=params.logprobs,
            include_usage=body.include_usage)
        stream = ingress.open_stream(serve_request)
        if body.stream:
            return await self._stream(stream, output_format, params.n)
        return await self._complete(stream, output_format)

    async def _complete(self, stream: Any, output_format: Any) -> Response:
        outputs = Outputs()
        done = False
        try:
            async for chunk in stream:
                if chunk.error_code is not None:
                    done = True
                    return error_response(_chunk_error(chunk))
                outputs.add(chunk)
                if chunk.final:
                    done = True
                    return JSONResponse(output_format.response(outputs, chunk))
        except Exception as exc:
            done = True
            return error_response(_call_error(exc))
        finally:
            if not done:  # the client went away (cancelled), or the stream ended early
                stream.cancel()
        return error_response(ApiError.from_status(Status.INTERNAL,
                                                    "the model server ended the stream early"))

    async def _stream(self, stream: Any, output_format: Any, n: int) -> Response:
        """Wait for the first chunk, so that errors found before any output (a prompt too
        long for the engine, a full queue) still get their HTTP status; then stream SSE."""
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            return error_response(ApiError.from_status(
                Status.INTERNAL, "the model server ended the stream early"))
        except Exception as exc:
            return error_response(_call_error(exc))
        except BaseException:  # cancelled: the client went away
            stream.cancel()
            raise
        if first.error_code is not None:
            return error_response(_chunk_error(first))
        return StreamingResponse(self._events(first, stream, output_format, n),
                                 media_type="text/event-stream", headers=SSE_HEADERS)

    async def _events(self, first: ServeChunk, stream: Any, output_format: Any,
                      n: int) -> AsyncIterator[str]:
        finished = False
        try:
            for opening in output_format.opening(n):
                yield sse(opening)
            chunk: ServeChunk | None = first
            while chunk is not None:
                if chunk.error_code is not None:
                    finished = True
                    yield sse(_chunk_error(chunk).body())
                    break
                if chunk.text or chunk.token_ids:
                    yield sse(output_format.delta(chunk))
                if chunk.finish_reason is not None:
                    yield sse(output_format.final(chunk.finish_reason, chunk.index))
                if chunk.final:
                    finished = True
                    if output_format.include_usage:
                        yield sse(output_format.usage_chunk(chunk))
                    break
                chunk = await anext(stream, None)
            finished = True
            yield sse("[DONE]")
        except Exception as exc:  # the downstream call failed mid-stream
            finished = True
            yield sse(_call_error(exc).body())
            yield sse("[DONE]")
        finally:
            # Not finished: the client disconnected (Serve cancelled this task, or the
            # response was closed). Cancel the LLMServer call: its generator exits, and
            # the engine aborts the request and frees its KV blocks.
            if not finished:
                stream.cancel()

    # ---- helpers -----------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        if not self.ingress.api_key_matches(request.headers):
            raise ApiError.from_status(Status.UNAUTHENTICATED,
                                       "missing or wrong API key: send the header "
                                       "'Authorization: Bearer <key>'")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.ingress.max_message_bytes

        def too_large(size: str) -> ApiError:
            return ApiError(413, f"the request is {size} bytes; this service accepts at most "
                            f"{limit} bytes: send a shorter prompt", code="request_too_large")

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(declared)
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise too_large(f"more than {limit}")
        return bytes(body)

    def _check_model(self, model: str | None) -> None:
        if model and model != self.model_name:
            raise ApiError(404, f"the model {model!r} is not served here; use "
                           f"{self.model_name!r} (see GET /v1/models)",
                           code="model_not_found", param="model")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created,
                "owned_by": "mistral-serve", "max_model_len": self.ingress.max_model_len}


def build_openai_app(ingress: Any) -> FastAPI:
    server = OpenAIServer(ingress)
    app = FastAPI(title="mistral-serve (OpenAI-compatible)", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_api_route("/v1/chat/completions", server.chat_completions, methods=["POST"],
                      response_model=None)
    app.add_api_route("/v1/completions", server.completions, methods=["POST"],
                      response_model=None)
    app.add_api_route("/v1/models", server.models, methods=["GET"], response_model=None)
    app.add_api_route("/v1/models/{model_id:path}", server.model, methods=["GET"],
                      response_model=None)
    app.add_api_route("/health", server.health, methods=["GET"], response_model=None)
    app.add_api_route("/-/healthz", server.healthz, methods=["GET"], response_model=None)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(ApiError(exc.status_code, str(exc.detail), code="not_found"
                                       if exc.status_code == 404 else "invalid_request"))

    app.add_exception_handler(StarletteHTTPException, http_error)
    return app
