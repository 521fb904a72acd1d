"""Lifecycle: health says NOT_SERVING until a service can really serve (model loaded and warmed, or for the
orchestrator, its verifier answering), and SIGTERM drains in-flight requests before the process exits."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.server import serve as serve_orchestrator
from specdec.v1 import verifier_pb2, verifier_pb2_grpc
from specdec.verifier_service.server import serve as serve_verifier
from specdec.verifier_service.server import serve_loading
from tests.faults import ENV, SPECDEC, eventually, free_port
from tests.helpers import load

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        return int(reply.status)


async def test_the_verifier_is_not_serving_until_its_model_is_loaded(tiny_target: Path) -> None:
    loaded = threading.Event()

    def slow_load():  # the model "loads" until the test says so
        loaded.wait(timeout=60)
        return load(str(tiny_target))

    port = free_port()
    address = f"127.0.0.1:{port}"
    starting = asyncio.ensure_future(serve_loading(slow_load, port))
    await eventually(lambda: _answers(address))
    assert await health(address) == NOT_SERVING
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await verifier_pb2_grpc.VerifierStub(channel).GetModelInfo(verifier_pb2.GetModelInfoRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in (info.value.details() or "")
        loaded.set()
        running = await starting
        assert await health(address) == SERVING
        info_reply = await verifier_pb2_grpc.VerifierStub(channel).GetModelInfo(verifier_pb2.GetModelInfoRequest())
        assert info_reply.name == str(tiny_target)
    await running.stop(1.0)


async def _answers(address: str) -> bool:
    try:
        await health(address)
        return True
    except grpc.aio.AioRpcError:
        return False


async def test_the_orchestrator_is_not_serving_until_its_verifier_answers(tiny_target: Path) -> None:
    verifier_port = free_port()
    orchestrator = await serve_orchestrator(f"127.0.0.1:{verifier_port}", None)
    address = f"127.0.0.1:{orchestrator.port}"
    assert await health(address) == NOT_SERVING
    verifier = await serve_verifier(load(str(tiny_target)), verifier_port)
    await eventually(lambda: _is_serving(address))
    async with SpecdecClient(address) as client:
        assert len((await client.generate("hi", max_new_tokens=3)).completions[0].token_ids) == 3
    await orchestrator.stop(1.0)
    await verifier.stop(1.0)


async def _is_serving(address: str) -> bool:
    return await health(address) == SERVING


def test_sigterm_drains_in_flight_requests(tiny_target: Path) -> None:
    """SIGTERM while a request streams: it finishes whole, then the process exits 0."""
    port = free_port()
    proc = subprocess.Popen(
        [*SPECDEC, "serve", "all", "--target", str(tiny_target), "--device", "cpu", "--port", str(port)],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and "listening on" in proc.stdout.readline()

        async def stream_through_sigterm() -> tuple[list[int], list[int]]:
            async with SpecdecClient(f"127.0.0.1:{port}") as client:
                request = {"max_new_tokens": 300, "draft": "none"}  # ~1 s here; SIGTERM comes after the first token
                expected = (await client.generate("def add(a, b):", **request)).completions[0].token_ids
                streamed: list[int] = []
                async for message in client.generate_stream("def add(a, b):", **request):
                    if message.WhichOneof("kind") == "delta":
                        if not streamed:
                            proc.send_signal(signal.SIGTERM)
                        streamed += message.delta.token_ids
                    else:
                        return list(expected), streamed
            raise AssertionError("no final response")

        expected, streamed = asyncio.run(stream_through_sigterm())
        assert streamed == expected and len(expected) == 300
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
