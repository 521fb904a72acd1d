"""An OpenAI-compatible HTTP API (Starlette on uvicorn) over the same orchestrator core as the gRPC API.

POST /v1/completions, POST /v1/chat/completions (both with `stream` as server-sent events ending with
`data: [DONE]`), GET /v1/models, GET /health. Every response carries `usage`, and our speculative statistics
under `specdec` (standard clients ignore it). Speculative options come from the server's defaults or from
extra body fields: `draft`, `k`, `policy`, `top_k`. As in OpenAI's API, `temperature` defaults to 1.
Errors use OpenAI's JSON error shape with the HTTP status mapped from the same validation as gRPC.
With an auth token, every route but GET /health needs `Authorization: Bearer <token>` (else 401).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from specdec import tracing
from specdec.errors import InvalidArgument, SpecdecError
from specdec.orchestrator.core import GenerationRequest, GenerationResult, OrchestratorCore, stats_to_pb
from specdec.orchestrator.loop import Delta
from specdec.wire import message_dict

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def _trace_parent(request: Request) -> Any:
    """The caller's trace context (W3C traceparent header) when tracing is on."""
    return tracing.context_from_headers(request.headers) if tracing.enabled() else None


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = ERROR_TYPE.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def error_from_exception(exc: BaseException) -> JSONResponse:
    if isinstance(exc, SpecdecError):
        return error_response(HTTP_STATUS.get(exc.code, 500), str(exc))
    if isinstance(exc, grpc.aio.AioRpcError):
        return error_response(HTTP_STATUS.get(exc.code(), 500), exc.details() or exc.code().name)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


@dataclass
class ParsedRequest:
    request: GenerationRequest
    stream: bool
    include_usage: bool
    logprobs: bool


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is not bool:  # JSON true is not a number
        raise InvalidArgument(f"{name} must be a {getattr(kind, '__name__', kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise InvalidArgument(f"{name} has the wrong type: {value!r}")
    return value


def parse_common(body: dict[str, Any], max_tokens_default: int) -> tuple[GenerationRequest, bool, bool]:
    """The fields both endpoints share, validated; the prompt/messages are filled in by the caller."""
    stop = _field(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) for s in stop):
        raise InvalidArgument("stop must be a string or a list of strings")
    max_tokens = _field(body, "max_completion_tokens", int, 0) or _field(body, "max_tokens", int, max_tokens_default)
    if max_tokens <= 0:
        raise InvalidArgument(f"max_tokens must be positive, got {max_tokens}")
    seed = _field(body, "seed", int, None)
    k = _field(body, "k", int, None)
    stream_options = _field(body, "stream_options", dict, {})
    request = GenerationRequest(
        model=_field(body, "model", str, ""),
        max_new_tokens=max_tokens,
        temperature=float(_field(body, "temperature", (int, float), 1.0)),
        top_p=float(_field(body, "top_p", (int, float), 1.0)),
        top_k=_field(body, "top_k", int, 0),
        seed=seed,
        num_samples=_field(body, "n", int, 1),
        stop=stop,
        draft=_field(body, "draft", str, ""),
        k=k,
        policy=_field(body, "policy", str, ""),
        tree_nodes=_field(body, "tree_nodes", int, 0),
    )
    if request.k is not None and request.k < 0:
        raise InvalidArgument(f"k must be >= 0, got {request.k}")
    return request, bool(_field(body, "stream", bool, False)), bool(stream_options.get("include_usage", False))


def usage(result: GenerationResult) -> dict[str, int]:
    prompt = len(result.prompt_token_ids)
    completion = result.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def specdec_stats(result: GenerationResult) -> dict[str, Any]:
    """What was run and every GenerationStats field, as the gRPC API reports them."""
    stats = message_dict(stats_to_pb(result))
    run = {"draft": result.draft, "k": result.k, "k_controller": result.k_controller, "policy": result.policy}
    return {**run, "seed": result.seed, **stats}


class OpenAIApi:
    """Request handlers; one instance per orchestrator core. With `auth_token`, every route but /health
    answers 401 unless the request carries it (the same token as the gRPC API)."""

    def __init__(self, core: OrchestratorCore, auth_token: str = "") -> None:
        self.core = core
        self._expected = f"Bearer {auth_token}".encode() if auth_token else None

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/completions", self._guard(self.completions), methods=["POST"]),
                Route("/v1/chat/completions", self._guard(self.chat_completions), methods=["POST"]),
                Route("/v1/models", self._guard(self.models), methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
            ]
        )

    def _guard(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            refusal = self._unauthorized(request)
            if refusal is not None:
                return refusal
            try:
                return await handler(request)
            except Exception as exc:
                return error_from_exception(exc)

        return guarded

    def _unauthorized(self, request: Request) -> Response | None:
        """None when no token is configured or the request carries it (compared in constant time)."""
        if self._expected is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            message = "this server requires an API key: send `Authorization: Bearer <token>`"
        elif hmac.compare_digest(f"Bearer {token.strip()}".encode(), self._expected):
            return None
        else:
            message = "invalid API key"
        response = error_response(401, message)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        target = await self.core.target()
        return JSONResponse(
            {"object": "list", "data": [{"id": target.name, "object": "model", "created": 0, "owned_by": "specdec"}]}
        )

    async def completions(self, request: Request) -> Response:
        body = await _json_body(request)
        generation, stream, include_usage = parse_common(body, max_tokens_default=16)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            generation.prompt = prompt
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            generation.prompt_token_ids = prompt
        else:
            raise InvalidArgument("prompt must be a string or a list of token ids (one prompt per request)")
        generation.return_logprobs = _field(body, "logprobs", int, 0) > 0
        generation.trace_parent = _trace_parent(request)
        return await self._respond(ParsedRequest(generation, stream, include_usage, generation.return_logprobs), False)

    async def chat_completions(self, request: Request) -> Response:
        body = await _json_body(request)
        generation, stream, include_usage = parse_common(body, max_tokens_default=0)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidArgument("messages must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise InvalidArgument(f"messages[{i}] must have a string content")
        generation.messages = [{"role": str(m.get("role", "")), "content": m["content"]} for m in messages]
        generation.return_logprobs = bool(_field(body, "logprobs", bool, False))
        generation.trace_parent = _trace_parent(request)
        return await self._respond(ParsedRequest(generation, stream, include_usage, generation.return_logprobs), True)

    async def _respond(self, parsed: ParsedRequest, chat: bool) -> Response:
        ident = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        if parsed.stream:
            await self.core.check(parsed.request)  # bad input gets its HTTP status before the stream starts
            return StreamingResponse(self._stream(parsed, chat, ident, created), media_type="text/event-stream")
        result = await self.core.generate(parsed.request)
        tokenizer = (await self.core.target()).tokenizer
        choices = [_choice(s.index, s.text, s.finish_reason, s.token_ids, s.logprobs, parsed, chat, tokenizer)
                   for s in result.samples]  # fmt: skip
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": result.model,
                "choices": choices,
                "usage": usage(result),
                "specdec": specdec_stats(result),
            }
        )

    async def _stream(self, parsed: ParsedRequest, chat: bool, ident: str, created: int) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format. Leaving early (client gone) cancels the generation,
        which closes its session streams and so frees the KV caches on every service."""
        target = await self.core.target()
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {"id": ident, "object": kind, "created": created, "model": target.name, "choices": choices}
            return f"data: {json.dumps({**payload, **extra})}\n\n"

        started: set[int] = set()
        result: GenerationResult | None = None
        try:
            async with aclosing(self.core.generate_stream(parsed.request)) as stream:
                async for d in stream:
                    if not isinstance(d, Delta):
                        result = d
                        break
                    if chat and d.index not in started:  # the first chunk of a choice carries the role
                        started.add(d.index)
                        role = {"role": "assistant", "content": ""}
                        yield chunk([{"index": d.index, "delta": role, "finish_reason": None}])
                    if d.text or d.finish_reason:
                        choice = _choice(d.index, d.text, d.finish_reason or None, d.token_ids, d.logprobs, parsed,
                                         chat, target.tokenizer, delta=True)  # fmt: skip
                        yield chunk([choice])
        except Exception as exc:  # headers are sent: report the error as a last event
            yield f"data: {bytes(error_from_exception(exc).body).decode()}\n\n"
            return
        assert result is not None  # generate_stream always ends with the result
        if parsed.include_usage:
            yield chunk([], usage=usage(result), specdec=specdec_stats(result))
        yield "data: [DONE]\n\n"


def _choice(
    index: int,
    text: str,
    finish_reason: str | None,
    token_ids: list[int],
    logprobs: list[float],
    parsed: ParsedRequest,
    chat: bool,
    tokenizer: Any,
    delta: bool = False,
) -> dict[str, Any]:
    """One choice (or a streamed choice delta) in the endpoint's shape."""
    lp = _logprobs(token_ids, logprobs, tokenizer, chat) if parsed.logprobs else None
    if chat:
        body: dict[str, Any] = (
            {"delta": {"content": text}} if delta else {"message": {"role": "assistant", "content": text}}
        )
        return {"index": index, **body, "logprobs": lp, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish_reason}


def _logprobs(token_ids: list[int], logprobs: list[float], tokenizer: Any, chat: bool) -> dict[str, Any]:
    """The target's log-probability of each generated token (no alternatives: top_logprobs stay empty)."""
    tokens = [str(tokenizer.decode([t])) for t in token_ids]
    if chat:
        content = [
            {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
            for t, lp in zip(tokens, logprobs, strict=False)
        ]
        return {"content": content}
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": None, "text_offset": offsets}


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


@dataclass
class HttpServer:
    """A running uvicorn server and its bound port."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def serve_http(
    core: OrchestratorCore, port: int = 0, host: str = "127.0.0.1", auth_token: str = ""
) -> HttpServer:
    """Serve the OpenAI-compatible API on this event loop; `port=0` binds a free port; with `auth_token`,
    every route but /health requires it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(OpenAIApi(core, auth_token).app(), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # raises the start-up error
    return HttpServer(server, task, sock.getsockname()[1])
