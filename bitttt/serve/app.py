"""The HTTP layer of `bitttt serve`: OpenAI's API as thin FastAPI routes over the engine.

Routes turn a request body (bitttt.serve.protocol) into token ids and an engine Request, then
relay the engine's events: as server-sent events (`data: {chunk}` ... `data: [DONE]`) or as one
JSON answer. Errors have OpenAI's shape {"error": {"message", "type", "param", "code"}}.
Everything else (slots, batching, the state cache) is the engine's (bitttt.serve.engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bitttt.errors import ConfigError
from bitttt.generate import MAX_NEW_TOKENS, SamplingParams, chat_stop_strings, chat_turn_ids
from bitttt.serve.engine import Engine, Event, PromptTooLong, QueueFull, Request as EngineRequest
from bitttt.serve.protocol import ChatCompletionRequest, CompletionRequest, error_body, usage_dict



@dataclass
class AppConfig:
    model_name: str  # the id clients name in "model" (GET /v1/models lists it)
    chat_format: bool  # chat template (True) or plain "User:"/"Assistant:" text (design §6)
    api_key: str | None = None  # None: no key needed
    max_body_bytes: int = 4 * 2**20  # a bigger request body is a 413
    default_max_tokens: int = 512  # when a request names no max_tokens


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, type, param, code), headers


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body, status_code=e.status, headers=e.headers)


class BodyLimit:
    """ASGI middleware: a request body over max_bytes is answered 413 before any route sees it
    (by its Content-Length, or while a chunked body arrives: the body is read here, at most
    max_bytes of it, and handed on whole)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = APIError(413, f"request body over {self.max_bytes} bytes", code="request_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _error_response(too_big)(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _error_response(too_big)(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)


class _EngineCollector:
    """Prometheus metrics read from the engine's stats at scrape time."""

    def __init__(self, engine: Engine, http_errors: dict[int, int]) -> None:
        self.engine, self.http_errors = engine, http_errors

    def collect(self):
        s = self.engine.stats()
        req = CounterMetricFamily("bitttt_requests", "Completions finished, by finish reason", labels=["finish_reason"])
        for reason, n in sorted(s.requests.items()):
            req.add_metric([reason], n)
        yield req
        err = CounterMetricFamily("bitttt_http_errors", "Requests answered with an error, by HTTP status",
                                  labels=["status"])
        for status, n in sorted(self.http_errors.items()):
            err.add_metric([str(status)], n)
        yield err
        for name, help_, value in (
                ("bitttt_prompt_tokens", "Prompt tokens of admitted requests", s.prompt_tokens),
                ("bitttt_cached_prompt_tokens", "Prompt tokens resumed from the state cache", s.cached_tokens),
                ("bitttt_generated_tokens", "Tokens generated", s.completion_tokens),
                ("bitttt_decode_steps", "Engine steps (one batched forward each)", s.steps),
                ("bitttt_state_cache_hits", "Requests that resumed a cached conversation state", s.cache_hits),
                ("bitttt_state_cache_misses", "Requests that found no cached prefix", s.cache_misses)):
            yield CounterMetricFamily(name, help_, value=value)
        for name, help_, value in (
                ("bitttt_tokens_per_second", "Tokens generated per second over the last seconds", s.tokens_per_s),
                ("bitttt_queue_depth", "Requests waiting for a slot", s.queue_depth),
                ("bitttt_batch_size", "Slots decoded together at the last step", s.batch_size),
                ("bitttt_state_cache_entries", "Conversation states kept", s.cache_entries),
                ("bitttt_state_cache_bytes", "Bytes of the conversation states kept", s.cache_bytes)):
            yield GaugeMetricFamily(name, help_, value=value)


def create_app(engine: Engine, config: AppConfig) -> FastAPI:
    """The FastAPI app over a started engine (the caller starts and closes the engine)."""
    app = FastAPI(title="bitttt serve", docs_url=None, redoc_url=None, openapi_url=None)
    http_errors: dict[int, int] = {}
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_EngineCollector(engine, http_errors))
    tokenizer, created = engine.tokenizer, int(time.time())

    def failed(e: APIError) -> JSONResponse:
        http_errors[e.status] = http_errors.get(e.status, 0) + 1
        return _error_response(e)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return failed(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {}
        if err.get("type") == "json_invalid":
            return failed(APIError(400, f"the body is not valid JSON: {err.get('ctx', {}).get('error', '')}",
                                   code="invalid_json"))
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = err.get("msg", "invalid request")
        if err.get("type") == "extra_forbidden":
            msg = "this server does not support this parameter"
        return failed(APIError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return failed(APIError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        return failed(APIError(500, f"internal error: {type(e).__name__}: {str(e)[:300]}", type="server_error"))

    def check_key(request: Request) -> None:
        if config.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), config.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           type="authentication_error", code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != config.model_name:
            raise APIError(404, f"the model {name[:100]!r} does not exist; this server has {config.model_name!r}",
                           type="not_found_error", param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> dict:
        s = engine.stats()
        return {"status": "ok", "model": config.model_name, "queue_depth": s.queue_depth, "batch_size": s.batch_size}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_key(request)
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": created,
                                            "owned_by": "bitttt"}]}

    @app.get("/v1/models/{name:path}")
    async def model(request: Request, name: str) -> dict:
        check_key(request)
        check_model(name)
        return {"id": name, "object": "model", "created": created, "owned_by": "bitttt"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        check_key(request)
        check_model(body.model)
        if body.logprobs or body.top_logprobs is not None:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        ids = await run_in_threadpool(lambda: [tokenizer.bos_id] + chat_turn_ids(tokenizer, messages, config.chat_format))
        stops = body.stop_list() + chat_stop_strings(config.chat_format)
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await complete(request, body, ids, stops, max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        check_key(request)
        check_model(body.model)
        for name, unsupported in (("logprobs", body.logprobs is not None), ("echo", body.echo),
                                  ("suffix", body.suffix is not None), ("best_of", (body.best_of or 1) > 1)):
            if unsupported:
                raise APIError(400, f"{name} is not supported by this server", param=name)
        prompt = body.prompt
        if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
            prompt = prompt[0]  # a batch of one prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            raise APIError(400, "one prompt per request: this server takes a string or a list of token ids",
                           param="prompt")
        ids = list(prompt) if isinstance(prompt, list) else \
            await run_in_threadpool(lambda: tokenizer.encode(prompt) or [tokenizer.bos_id])
        return await complete(request, body, ids, body.stop_list(), body.max_tokens, chat=False)

    async def complete(request: Request, body: Any, ids: list[int], stops: list[str], max_tokens: int | None,
                       chat: bool) -> Response:
        if body.n != 1:
            raise APIError(400, "n > 1 is not supported by this server: send n requests (with different seeds)",
                           param="n")
        if body.stream_options is not None and not body.stream:
            raise APIError(400, "stream_options needs stream: true", param="stream_options")
        try:
            sampling = SamplingParams(
                max_new_tokens=max_tokens or min(config.default_max_tokens, MAX_NEW_TOKENS),
                temperature=1.0 if body.temperature is None else body.temperature, top_k=body.top_k,
                top_p=1.0 if body.top_p is None else body.top_p, repetition_penalty=body.repetition_penalty,
                seed=body.seed, stop=stops)
        except ConfigError as e:
            raise APIError(400, str(e)) from None
        req = EngineRequest(ids, sampling, body.presence_penalty, body.frequency_penalty)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def sink(ev: Event) -> None:  # on the engine's thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutting down): nobody to tell
                pass

        try:
            handle = engine.submit(req, sink)
        except PromptTooLong as e:
            raise APIError(413, str(e), param="messages" if chat else "prompt", code="context_length_exceeded") from None
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}; retry later", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except ConfigError as e:
            raise APIError(400, str(e), param="prompt") from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        shape = _Shape(rid, "chat.completion" if chat else "text_completion", config.model_name, chat)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(request, handle, events, shape, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        pieces = []
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, handle))
        try:
            while (ev := await events.get()).kind != "done":
                pieces.append(ev.text)
        finally:
            watcher.cancel()
            handle.cancel()  # a no-op once done; frees the slot if this task was cancelled
        if ev.finish_reason == "cancelled":
            return Response(status_code=499)  # the client is gone: nobody reads this
        if ev.finish_reason == "error":
            raise APIError(500, f"generation failed: {ev.text}", type="server_error")
        return JSONResponse(shape.whole("".join(pieces), ev))

    return app


@dataclass
class _Shape:
    """The JSON of one completion: chat (chat.completion[.chunk]) or legacy (text_completion)."""

    id: str
    object: str
    model: str
    chat: bool

    def _base(self, object_: str) -> dict:
        return {"id": self.id, "object": object_, "created": int(time.time()), "model": self.model,
                "system_fingerprint": None}

    def whole(self, text: str, done: Event) -> dict:
        u = done.usage
        choice = {"index": 0, "logprobs": None, "finish_reason": done.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        else:
            choice["text"] = text
        return {**self._base(self.object), "choices": [choice],
                "usage": usage_dict(u.prompt_tokens, u.completion_tokens, u.cached_tokens)}

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
            object_ = "chat.completion.chunk"
        else:
            choice["text"] = text or ""
            object_ = "text_completion"
        return {**self._base(object_), "choices": [choice]}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(request: Request, handle: Any, events: asyncio.Queue, shape: _Shape,
                  include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks until the engine's done event; a client that goes away cancels the request
    (the slot is freed at the engine's next step)."""
    usage_null = {"usage": None} if include_usage else {}
    watcher = asyncio.ensure_future(_cancel_on_disconnect(request, handle))
    try:
        if shape.chat:
            yield _sse({**shape.chunk("", role=True), **usage_null})
        while True:
            ev = await events.get()
            if ev.kind == "token":
                if ev.text:
                    yield _sse({**shape.chunk(ev.text), **usage_null})
                continue
            if ev.finish_reason == "error":
                yield _sse(error_body(f"generation failed: {ev.text}", "server_error"))
            elif ev.finish_reason != "cancelled":
                yield _sse({**shape.chunk(None if shape.chat else "", ev.finish_reason), **usage_null})
                if include_usage:
                    u = ev.usage
                    yield _sse({**shape._base(shape.chunk("")["object"]), "choices": [],
                                "usage": usage_dict(u.prompt_tokens, u.completion_tokens, u.cached_tokens)})
            yield "data: [DONE]\n\n"
            return
    finally:
        watcher.cancel()
        handle.cancel()


async def _cancel_on_disconnect(request: Request, handle: Any) -> None:
    """Waits for the client to hang up, then cancels its request: the engine frees the slot at
    its next step (uvicorn does not fail a write to a closed connection, so only this sees it)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    handle.cancel()


def build_app(engine: Engine, config: AppConfig) -> Any:
    """The ASGI app to serve: create_app behind the body size limit."""
    return BodyLimit(create_app(engine, config), config.max_body_bytes)


class Server(uvicorn.Server):
    """uvicorn's server, but Ctrl-C and SIGTERM are a normal stop (exit 0, as for every bitttt
    command): uvicorn re-raises the signal after its graceful shutdown, which kills the process."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
