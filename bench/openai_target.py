"""A remote benchmark target: any OpenAI-compatible HTTP server (vLLM, llama.cpp server, specdec's own).

Every request streams (server-sent events) so that time to first token and inter-token latencies are measured
on the client, where a user would see them. Token counts come only from the server's final `usage` chunk: text
is never split to guess them, and a server that sends no usage gives `completion_tokens=None`.

Failures raise `RemoteTargetError(status, message)` where `status` is the HTTP status or one of the names
below, so that a load test can count errors by kind. Connection failures and 429/5xx answers are retried with
capped exponential backoff, but only before the stream has delivered anything: a retry after that would
count a half-served request twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import httpx

# Non-HTTP error kinds (`RemoteTargetError.status`).
CONNECTION = "connection"  # could not connect, or the connection broke before the stream delivered anything
TIMEOUT = "timeout"  # the server did not answer (or stopped streaming) within `timeout`
STREAM_BROKEN = "stream_broken"  # the connection broke after the stream had started: never retried
STREAM_ERROR = "stream_error"  # the server reported an error inside an already started stream
BAD_RESPONSE = "bad_response"  # a 200 whose body is not the OpenAI streaming protocol
NO_MODEL = "no_model"  # no model given and GET /v1/models lists none

# Fields some servers add to chunks beside the OpenAI ones; kept in `RemoteResult.extra`.
EXTRA_FIELDS = ("specdec", "timings")  # specdec's speculative stats; llama.cpp's server-side timings

# Failures of the transport itself (not of the server's answer): worth another attempt if nothing was streamed yet.
_CONNECTION_ERRORS = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)

T = TypeVar("T")


class RemoteTargetError(Exception):
    """A request that failed for good (after any retries). `status` is an HTTP status or a name above."""

    def __init__(self, status: int | str, message: str, attempts: int = 1) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.attempts = attempts


@dataclass
class RemoteResult:
    """One streamed generation. Times are from the start of the attempt that succeeded (`attempts` > 1 says
    that earlier ones failed); `itl_s` holds the gaps between content chunks, and a chunk may carry several
    tokens (speculative servers often send each accepted run at once)."""

    text: str
    prompt_tokens: int | None  # from `usage`; None if the server sent none
    completion_tokens: int | None  # from `usage`; None if the server sent none (see `usage_missing`)
    seconds: float  # wall time of the request, stream drained
    ttft_s: float | None  # time to the first chunk with non-empty text; None if nothing was generated
    itl_s: list[float]
    finish_reason: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    usage_missing: bool = False
    chunks: int = 0  # chunks that carried text

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per wall second, or None without usage."""
        if self.completion_tokens is None or self.seconds <= 0:
            return None
        return self.completion_tokens / self.seconds


class _Retryable(Exception):
    """An attempt failed in a way that another attempt may fix."""

    def __init__(self, error: RemoteTargetError, retry_after_s: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after_s = retry_after_s


def _api_root(base_url: str) -> str:
    """The server's root: users pass either `http://host:port` or `http://host:port/v1`."""
    root = base_url.strip().rstrip("/")
    return root.removesuffix("/v1")


def _error_message(response: httpx.Response) -> str:
    """The message of an error body: OpenAI's `{"error": {"message": ...}}` and the shapes other servers use."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(error.get(key), str):
                    return str(error[key])
        elif isinstance(error, str):
            return error
    return text.strip()[:500]


def _status_error(response: httpx.Response, what: str, attempts: int) -> RemoteTargetError:
    message = _error_message(response)
    if response.status_code in (401, 403):
        message = f"{what}: {message} (check the api key: pass --api-key or set it for the server)"
    else:
        message = f"{what}: {message}"
    return RemoteTargetError(response.status_code, message, attempts)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: ignored, the backoff applies


def _check_status(response: httpx.Response, what: str) -> None:
    """Raise for a non-200 answer: 429 and 5xx may be retried, other 4xx never."""
    if response.status_code == 200:
        return
    error = _status_error(response, what, 1)
    if response.status_code == 429 or response.status_code >= 500:
        raise _Retryable(error, _retry_after(response))
    raise error


def _chunk_text(choice: dict[str, Any]) -> tuple[str, str]:
    """(content, reasoning) of one streamed choice, for /v1/completions or /v1/chat/completions."""
    if "text" in choice:
        return str(choice.get("text") or ""), ""
    delta = choice.get("delta") or {}
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    return str(delta.get("content") or ""), str(reasoning)


class OpenAITarget:
    """An async client for one OpenAI-compatible server; one `httpx.AsyncClient` is reused for all requests.

    Use `async with OpenAITarget(url) as target:` or call `aclose()`."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        backoff_cap_s: float = 8.0,
        max_connections: int | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.root = _api_root(base_url)
        self.model = model
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No pool limit by default: a load test sets its own concurrency and must not be queued by the client.
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(
            base_url=self.root,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=limits,
        )

    async def __aenter__(self) -> OpenAITarget:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff with jitter (half to full of the step, so that clients spread out), capped."""
        step = min(self.backoff_cap_s, self.backoff_s * 2 ** (attempt - 1))
        delay = random.uniform(step / 2, step)
        if retry_after_s is not None:  # the server knows best how long it is busy, within our cap
            delay = max(delay, min(retry_after_s, self.backoff_cap_s))
        return delay

    async def _with_retries(self, attempt_fn: Callable[[int], Awaitable[T]]) -> T:
        """Run `attempt_fn(attempt)` until it returns, retrying `_Retryable` failures with backoff."""
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return await attempt_fn(attempt)
            except _Retryable as failure:
                failure.error.attempts = attempt
                if attempt == attempts:
                    raise failure.error from None
                await asyncio.sleep(self._delay(attempt, failure.retry_after_s))
            except RemoteTargetError as error:
                error.attempts = attempt
                raise
        raise AssertionError("unreachable")

    async def _get(self, path: str) -> httpx.Response:
        """One GET attempt; connection failures and 429/5xx become `_Retryable`."""
        try:
            response = await self._client.get(path)
        except _CONNECTION_ERRORS as exc:
            raise _Retryable(RemoteTargetError(CONNECTION, f"GET {self.root}{path}: {exc!r}")) from exc
        except httpx.TimeoutException as exc:
            raise RemoteTargetError(TIMEOUT, f"GET {self.root}{path}: {exc!r}") from exc
        return response

    async def health(self) -> str:
        """Check that the server is up and serving; return the model id (resolving it if none was given)."""

        async def attempt(_: int) -> str:
            response = await self._get("/health")
            # Not every server has /health (OpenAI's API has not): 404 just means "ask /v1/models".
            if response.status_code != 404:
                _check_status(response, f"GET {self.root}/health")
            return await self._models_once()

        return await self._with_retries(attempt)

    async def _models_once(self) -> str:
        response = await self._get("/v1/models")
        _check_status(response, f"GET {self.root}/v1/models")
        if self.model is not None:
            return self.model
        try:
            data = response.json().get("data") or []
            ids = [str(m["id"]) for m in data]
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            raise RemoteTargetError(BAD_RESPONSE, f"GET {self.root}/v1/models: unexpected body {exc!r}") from exc
        if not ids:
            raise RemoteTargetError(NO_MODEL, f"GET {self.root}/v1/models lists no model: pass one explicitly")
        self.model = ids[0]
        return self.model

    async def resolve_model(self) -> str:
        """The model id: the one given, else the first that GET /v1/models lists (asked once, then kept)."""
        if self.model is not None:
            return self.model
        return await self._with_retries(lambda _: self._models_once())

    async def generate(
        self,
        *,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> RemoteResult:
        """Stream one generation: /v1/completions for `prompt`, /v1/chat/completions for `messages`.

        `extra_body` adds server-specific fields (vLLM's `ignore_eos`, specdec's `k`, ...)."""
        if (prompt is None) == (messages is None):
            raise ValueError("pass exactly one of prompt and messages")
        model = await self.resolve_model()
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
            **(extra_body or {}),
        }
        if seed is not None:
            body["seed"] = seed
        if prompt is not None:
            path, body["prompt"] = "/v1/completions", prompt
        else:
            path, body["messages"] = "/v1/chat/completions", messages

        async def attempt(n: int) -> RemoteResult:
            return await self._stream_once(path, body, n)

        return await self._with_retries(attempt)

    async def _stream_once(self, path: str, body: dict[str, Any], attempt: int) -> RemoteResult:
        what = f"POST {self.root}{path}"
        text: list[str] = []
        reasoning: list[str] = []
        itl: list[float] = []
        extra: dict[str, Any] = {}
        usage: dict[str, Any] | None = None
        finish: str | None = None
        ttft: float | None = None
        last: float | None = None
        chunks = 0
        events = 0  # data events received: after the first, a failure is no longer retried
        start = time.perf_counter()
        try:
            async with self._client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    _check_status(response, what)
                async for line in response.aiter_lines():
                    kind, _, data = line.partition(":")
                    if kind not in ("data", "error") or not data.strip():
                        continue  # blank separators, SSE comments (": ping"), `event:`/`id:` lines
                    events += 1
                    data = data.strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise RemoteTargetError(BAD_RESPONSE, f"{what}: not JSON in the stream: {data[:200]}") from exc
                    if not isinstance(chunk, dict):
                        raise RemoteTargetError(BAD_RESPONSE, f"{what}: not an object in the stream: {data[:200]}")
                    if kind == "error" or "error" in chunk:  # the server failed after the headers were sent
                        error = chunk.get("error", chunk)
                        message = error.get("message", error) if isinstance(error, dict) else error
                        raise RemoteTargetError(STREAM_ERROR, f"{what}: {message}")
                    now = time.perf_counter()
                    got_text = False
                    for choice in chunk.get("choices") or []:
                        content, thought = _chunk_text(choice)
                        text.append(content)
                        reasoning.append(thought)
                        got_text = got_text or bool(content or thought)
                        finish = choice.get("finish_reason") or finish
                    if got_text:  # reasoning tokens are generated tokens too: they count for the timings
                        chunks += 1
                        if ttft is None:
                            ttft = now - start
                        elif last is not None:
                            itl.append(now - last)
                        last = now
                    if chunk.get("usage"):  # some servers send running usage on every chunk: the last wins
                        usage = chunk["usage"]
                    extra.update({k: chunk[k] for k in EXTRA_FIELDS if chunk.get(k) is not None})
        except _CONNECTION_ERRORS as exc:
            if events == 0:
                raise _Retryable(RemoteTargetError(CONNECTION, f"{what}: {exc!r}")) from exc
            raise RemoteTargetError(STREAM_BROKEN, f"{what}: broken after {chunks} chunks: {exc!r}") from exc
        except httpx.TimeoutException as exc:
            raise RemoteTargetError(TIMEOUT, f"{what}: {exc!r}") from exc
        seconds = time.perf_counter() - start
        if any(reasoning):
            extra["reasoning"] = "".join(reasoning)

        def count(key: str) -> int | None:
            value = usage.get(key) if usage else None
            return int(value) if isinstance(value, int | float) else None

        completion_tokens = count("completion_tokens")
        return RemoteResult(
            text="".join(text),
            prompt_tokens=count("prompt_tokens"),
            completion_tokens=completion_tokens,
            seconds=seconds,
            ttft_s=ttft,
            itl_s=itl,
            finish_reason=finish,
            extra=extra,
            attempts=attempt,
            usage_missing=completion_tokens is None,
            chunks=chunks,
        )
