"""The OpenAI-compatible remote target of `specdec bench`, against small real HTTP servers (no mocked httpx)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from specdec.bench.openai_target import (
    CONNECTION,
    STREAM_BROKEN,
    STREAM_ERROR,
    OpenAITarget,
    RemoteTargetError,
)

PIECES = ["Hello", " wor", "ld, how", " are you?"]  # 5 words; the usage below says 9 tokens
GAP_S = 0.02


@dataclass
class FakeServer:
    """An OpenAI-ish server whose behaviour a test sets: `failures` statuses come first, then `mode` serves."""

    mode: str = "ok"  # ok | no_usage | break | error_event | always_400
    failures: list[int] = field(default_factory=list)
    api_key: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/v1/completions", self.generate, methods=["POST"]),
                Route("/v1/chat/completions", self.generate, methods=["POST"]),
            ]
        )

    def _denied(self, request: Request) -> Response | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"message": "Incorrect API key provided", "type": "auth"}}, 401)
        return None

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        return self._denied(request) or JSONResponse({"object": "list", "data": [{"id": "m-1"}, {"id": "m-2"}]})

    async def generate(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if denied := self._denied(request):
            return denied
        if self.failures:
            status = self.failures.pop(0)
            return JSONResponse({"error": {"message": f"try later ({status})", "type": "server_error"}}, status)
        if self.mode == "always_400":
            return JSONResponse({"error": {"message": "temperature must be >= 0", "type": "invalid"}}, 400)
        chat = "messages" in body
        return StreamingResponse(self._events(chat), media_type="text/event-stream")

    async def _events(self, chat: bool) -> AsyncIterator[str]:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return f"data: {json.dumps({'id': 'x', 'model': 'm-1', 'choices': choices, **extra})}\n\n"

        def choice(text: str, finish: str | None = None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        yield ": keep-alive comment\n\n"
        if chat:  # the role comes first, with no content: it must not count as the first token
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for i, piece in enumerate(PIECES):
            await asyncio.sleep(GAP_S)
            yield chunk([choice(piece)])
            if i == 1 and self.mode == "break":
                raise RuntimeError("the server dies mid-stream")
            if i == 1 and self.mode == "error_event":
                yield 'data: {"error": {"message": "verifier went away", "type": "server_error"}}\n\n'
                return
        yield chunk([choice("", "length")])
        if self.mode != "no_usage":
            usage = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
            yield chunk([], usage=usage, specdec={"acceptance_rate": 0.5})
        yield "data: [DONE]\n\n"


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    """The fake server on a free loopback port, on this event loop (as `serve_http` starts ours)."""
    server = FakeServer()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(server.app(), log_level="critical", lifespan="off"))
    task = asyncio.ensure_future(uv.serve(sockets=[sock]))
    while not uv.started and not task.done():
        await asyncio.sleep(0.01)
    server.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield server
    uv.should_exit = True
    await task


def target(url: str, **kwargs: Any) -> OpenAITarget:
    return OpenAITarget(url, backoff_s=0.001, backoff_cap_s=0.01, timeout=5.0, **kwargs)


async def test_completion_stream_timings_and_usage(fake: FakeServer) -> None:
    async with target(fake.url + "/v1/") as remote:
        result = await remote.generate(prompt="Hi", max_tokens=9, seed=3)
    assert result.text == "".join(PIECES)
    assert result.completion_tokens == 9 and result.prompt_tokens == 3  # from usage, not from the 5 words
    assert not result.usage_missing and result.attempts == 1 and result.finish_reason == "length"
    assert result.ttft_s is not None and 0 < result.ttft_s <= result.seconds
    assert result.chunks == len(PIECES) and len(result.itl_s) == len(PIECES) - 1
    assert all(gap > 0 for gap in result.itl_s) and sum(result.itl_s) >= (len(PIECES) - 1) * GAP_S * 0.5
    assert result.extra["specdec"] == {"acceptance_rate": 0.5}
    sent = fake.requests[0]
    assert sent["model"] == "m-1" and sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["seed"] == 3 and sent["prompt"] == "Hi" and sent["max_tokens"] == 9


async def test_chat_stream_ignores_the_role_chunk(fake: FakeServer) -> None:
    async with target(fake.url, model="chosen") as remote:
        result = await remote.generate(messages=[{"role": "user", "content": "Hi"}], max_tokens=9)
    assert result.text == "".join(PIECES) and result.completion_tokens == 9
    assert result.ttft_s is not None and result.ttft_s >= GAP_S * 0.5  # the role chunk came at once: not a token
    assert len(result.itl_s) == len(PIECES) - 1
    assert fake.requests[0]["model"] == "chosen" and fake.requests[0]["messages"][0]["content"] == "Hi"


async def test_missing_usage_is_reported_not_guessed(fake: FakeServer) -> None:
    fake.mode = "no_usage"
    async with target(fake.url) as remote:
        result = await remote.generate(prompt="Hi", max_tokens=9)
    assert result.completion_tokens is None and result.prompt_tokens is None and result.usage_missing
    assert result.tokens_per_s is None and result.text == "".join(PIECES)


async def test_a_503_then_success_is_retried(fake: FakeServer) -> None:
    fake.failures = [503]
    async with target(fake.url) as remote:
        result = await remote.generate(prompt="Hi", max_tokens=9)
    assert result.attempts == 2 and result.completion_tokens == 9 and len(fake.requests) == 2


async def test_persistent_5xx_gives_up_after_the_retries(fake: FakeServer) -> None:
    fake.failures = [500, 502, 429]
    async with target(fake.url, max_retries=2) as remote:
        with pytest.raises(RemoteTargetError) as info:
            await remote.generate(prompt="Hi", max_tokens=9)
    assert info.value.status == 429 and info.value.attempts == 3 and len(fake.requests) == 3


async def test_a_400_is_never_retried_and_shows_the_servers_message(fake: FakeServer) -> None:
    fake.mode = "always_400"
    async with target(fake.url) as remote:
        with pytest.raises(RemoteTargetError) as info:
            await remote.generate(prompt="Hi", max_tokens=9)
    assert info.value.status == 400 and info.value.attempts == 1 and len(fake.requests) == 1
    assert "temperature must be >= 0" in str(info.value)


async def test_a_dead_port_is_a_connection_error_after_all_attempts() -> None:
    with socket.socket() as sock:  # a port that was just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with target(f"http://127.0.0.1:{port}", model="m", max_retries=3) as remote:
        with pytest.raises(RemoteTargetError) as info:
            await remote.generate(prompt="Hi", max_tokens=4)
        assert info.value.status == CONNECTION and info.value.attempts == 4
        with pytest.raises(RemoteTargetError) as health:
            await remote.health()
        assert health.value.status == CONNECTION and health.value.attempts == 4


async def test_a_stream_broken_after_tokens_is_not_retried(fake: FakeServer) -> None:
    fake.mode = "break"
    async with target(fake.url) as remote:
        with pytest.raises(RemoteTargetError) as info:
            await remote.generate(prompt="Hi", max_tokens=9)
    assert info.value.status == STREAM_BROKEN and info.value.attempts == 1 and len(fake.requests) == 1


async def test_an_error_event_inside_the_stream_surfaces(fake: FakeServer) -> None:
    fake.mode = "error_event"
    async with target(fake.url) as remote:
        with pytest.raises(RemoteTargetError) as info:
            await remote.generate(messages=[{"role": "user", "content": "Hi"}], max_tokens=9)
    assert info.value.status == STREAM_ERROR and "verifier went away" in info.value.message
    assert info.value.attempts == 1


async def test_health_resolves_the_model_and_checks_the_key(fake: FakeServer) -> None:
    fake.api_key = "sk-right"
    async with target(fake.url + "/v1", api_key="sk-right") as remote:
        assert await remote.health() == "m-1"
        assert remote.model == "m-1"
    async with target(fake.url, api_key="sk-wrong") as remote:
        with pytest.raises(RemoteTargetError) as info:
            await remote.health()
    assert info.value.status == 401 and info.value.attempts == 1
    assert "Incorrect API key provided" in info.value.message and "api key" in info.value.message


@pytest.fixture
async def http_stack(tiny_target: Path) -> AsyncIterator[Any]:
    from specdec.orchestrator.embedded import EmbeddedStack

    async with EmbeddedStack(target=str(tiny_target), device="cpu", http_port=0) as stack:
        yield stack


async def test_against_specdecs_own_server(http_stack: Any, tiny_target: Path) -> None:
    async with OpenAITarget(http_stack.http_url, max_retries=0) as remote:
        assert await remote.health() == str(tiny_target)
        result = await remote.generate(prompt="def add(a, b):\n    return", max_tokens=12)
        chat = await remote.generate(messages=[{"role": "user", "content": "Hi"}], max_tokens=6)
    assert result.completion_tokens == 12 and result.finish_reason == "length" and not result.usage_missing
    assert result.prompt_tokens is not None and result.prompt_tokens > 0
    assert result.ttft_s is not None and 0 < result.ttft_s <= result.seconds
    assert result.extra["specdec"]["steps"] >= 1 and len(result.itl_s) == result.chunks - 1
    assert chat.completion_tokens is not None and 0 < chat.completion_tokens <= 6
