"""Fault injection: peers that die (real processes, SIGKILL), slow networks (a delaying proxy), expired deadlines,
idle sessions, and more clients than the caps allow. Output stays the target's own, statuses are precise, and
every service ends with no live session. Timing bounds are generous: they catch hangs, not slowness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from specdec import service
from specdec.draft_service.core import DraftCore
from specdec.draft_service.server import serve as serve_draft
from specdec.modeling import LoadedModel
from specdec.orchestrator.client import SpecdecClient, build_request
from specdec.orchestrator.core import Limits
from specdec.orchestrator.server import serve as serve_orchestrator
from specdec.v1 import verifier_pb2, verifier_pb2_grpc
from specdec.verifier_service.core import VerifierCore
from specdec.verifier_service.server import SERVICE_NAME as VERIFIER_SERVICE
from specdec.verifier_service.server import VerifierServicer
from tests.faults import DelayProxy, ServiceProcess, eventually
from tests.helpers import assert_greedy_identical, load

PROMPT = "def add(a, b):"  # the tiny target's greedy continuation runs to any length without EOS
REPEATING = "one two three four five one two three four five one two three"  # prompt lookup finds matches
LONG = 300  # tokens: long enough to still be generating when a fault is injected


async def start_verifier(lm: LoadedModel, **servicer_options: object) -> service.RunningServer:
    servicer = VerifierServicer(VerifierCore(lm), **servicer_options)  # type: ignore[arg-type]
    register = lambda server: verifier_pb2_grpc.add_VerifierServicer_to_server(servicer, server)  # noqa: E731
    return await service.start([VERIFIER_SERVICE], register, servicer, 0, "127.0.0.1")


def live(server: service.RunningServer) -> int:
    return int(server.servicer.core.live_sessions)


def idle(*servers: service.RunningServer) -> bool:
    """No session and no KV-cache byte left on any of the services."""
    return all(live(s) == 0 and s.servicer.core.kv_cache_bytes() == 0 for s in servers)


@pytest.fixture
def lm(tiny_target: Path) -> LoadedModel:
    return load(str(tiny_target))


async def reference(client: SpecdecClient, max_new_tokens: int = LONG) -> list[int]:
    response = await client.generate(PROMPT, max_new_tokens=max_new_tokens, draft="none")
    return list(response.completions[0].token_ids)


async def stream_with_fault(client: SpecdecClient, fault: Callable[[], object], **request: object) -> object:
    """Stream a long generation, inject `fault` after the first delta, return the final response."""
    injected = False
    async for message in client.generate_stream(PROMPT, max_new_tokens=LONG, **request):
        if message.WhichOneof("kind") == "delta" and not injected:
            await asyncio.to_thread(fault)
            injected = True
        elif message.WhichOneof("kind") == "done":
            return message.done
    raise AssertionError("the stream ended without its response")


async def test_a_killed_draft_fails_over_and_comes_back(lm: LoadedModel, tiny_target: Path) -> None:
    verifier = await start_verifier(lm)
    draft = await asyncio.to_thread(ServiceProcess("draft").start)
    try:
        async with DelayProxy(verifier.port) as slow_verifier:  # slow steps: the kill lands mid-generation
            orchestrator = await serve_orchestrator(slow_verifier.address, draft.address, 0, "127.0.0.1")
            async with SpecdecClient(f"127.0.0.1:{orchestrator.port}") as client:
                expected = await reference(client)
                slow_verifier.delay_s = 0.01
                done = await stream_with_fault(client, draft.kill, draft="ngram", k=4)
                slow_verifier.delay_s = 0.0
                assert done.stats.draft_failure.startswith(("UNAVAILABLE", "CANCELLED")), done.stats.draft_failure
                assert_greedy_identical(lm, list(done.prompt_token_ids), list(done.completions[0].token_ids), expected)

                draft = await asyncio.to_thread(ServiceProcess("draft", port=draft.port).start)  # back, same port

                async def drafting_again() -> bool:
                    response = await client.generate(REPEATING, max_new_tokens=16, draft="ngram", k=4)
                    return not response.stats.draft_failure and response.stats.draft_tokens > 0

                await eventually(drafting_again)
            await orchestrator.stop(1.0)
    finally:
        draft.kill()
        await verifier.stop(1.0)
    assert live(verifier) == 0


async def test_a_killed_verifier_fails_fast_and_requests_succeed_once_it_is_back(tiny_target: Path) -> None:
    args = ("verifier", "--target", str(tiny_target), "--device", "cpu")
    verifier = await asyncio.to_thread(ServiceProcess(*args).start)
    orchestrator = await serve_orchestrator(verifier.address, None, 0, "127.0.0.1")
    try:
        async with SpecdecClient(f"127.0.0.1:{orchestrator.port}") as client:
            await client.generate(PROMPT, max_new_tokens=4)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stream_with_fault(client, verifier.kill)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert time.monotonic() - started < 60  # failed, not hung
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await client.generate(PROMPT, max_new_tokens=4)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE

            verifier = await asyncio.to_thread(ServiceProcess(*args, port=verifier.port).start)

            async def serving() -> bool:
                try:
                    return len((await client.generate(PROMPT, max_new_tokens=4)).completions[0].token_ids) == 4
                except grpc.aio.AioRpcError:
                    return False

            await eventually(serving)
    finally:
        verifier.kill()
        await orchestrator.stop(1.0)


@pytest.fixture
async def slow_stack(lm: LoadedModel) -> AsyncIterator[tuple[service.RunningServer, service.RunningServer, DelayProxy]]:
    """A verifier behind a delaying proxy, and an n-gram draft service (both in this process)."""
    verifier = await start_verifier(lm)
    draft = await serve_draft(DraftCore("cpu"))
    async with DelayProxy(verifier.port) as proxy:
        yield verifier, draft, proxy
    await draft.stop(1.0)
    await verifier.stop(1.0)


async def test_an_expired_deadline_stops_the_work_and_frees_the_sessions(slow_stack) -> None:
    verifier, draft, proxy = slow_stack
    orchestrator = await serve_orchestrator(proxy.address, f"127.0.0.1:{draft.port}", 0, "127.0.0.1")
    async with SpecdecClient(f"127.0.0.1:{orchestrator.port}") as client:
        await client.generate(PROMPT, max_new_tokens=4)  # connected before the network slows down
        proxy.delay_s = 0.05
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stub.Generate(build_request(PROMPT, max_new_tokens=LONG, draft="ngram", k=2), timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: live(verifier) == 0 and live(draft) == 0)
    await orchestrator.stop(1.0)


async def test_a_draft_that_stops_answering_in_time_fails_over(slow_stack, lm: LoadedModel) -> None:
    verifier, draft, _ = slow_stack
    async with DelayProxy(draft.port) as slow_draft:
        limits = Limits(draft_timeout_s=0.3)
        orchestrator = await serve_orchestrator(
            f"127.0.0.1:{verifier.port}", slow_draft.address, 0, "127.0.0.1", limits
        )
        async with SpecdecClient(f"127.0.0.1:{orchestrator.port}") as client:
            expected = await reference(client, 40)
            await client.generate(PROMPT, max_new_tokens=4, draft="ngram")  # connected, then the draft slows down
            slow_draft.delay_s = 1.0
            response = await client.generate(PROMPT, max_new_tokens=40, draft="ngram", k=4)
            assert response.stats.draft_failure.startswith("DEADLINE_EXCEEDED"), response.stats.draft_failure
            assert_greedy_identical(
                lm, list(response.prompt_token_ids), list(response.completions[0].token_ids), expected
            )
            slow_draft.delay_s = 0.0
            await eventually(lambda: live(verifier) == 0 and live(draft) == 0)
        await orchestrator.stop(1.0)


async def test_more_clients_than_the_caps_allow(slow_stack, lm: LoadedModel) -> None:
    """32 concurrent clients against 8 request slots and no queue: the excess is refused at once with
    RESOURCE_EXHAUSTED, every accepted output is the target's own, and no session outlives the load."""
    verifier, draft, proxy = slow_stack
    limits = Limits(max_concurrent_requests=8, max_queued_requests=0)
    orchestrator = await serve_orchestrator(proxy.address, f"127.0.0.1:{draft.port}", 0, "127.0.0.1", limits)
    async with SpecdecClient(f"127.0.0.1:{orchestrator.port}") as client:
        expected = await reference(client, 24)
        proxy.delay_s = 0.005

        async def one() -> list[int] | grpc.StatusCode:
            try:
                response = await client.generate(PROMPT, max_new_tokens=24, draft="ngram", k=3)
            except grpc.aio.AioRpcError as exc:
                assert "max_concurrent_requests" in (exc.details() or "")
                return exc.code()
            return list(response.completions[0].token_ids)

        outcomes = await asyncio.gather(*(one() for _ in range(32)))
        refused = [o for o in outcomes if o == grpc.StatusCode.RESOURCE_EXHAUSTED]
        served = [o for o in outcomes if isinstance(o, list)]
        assert len(refused) + len(served) == 32 and refused and len(served) >= 8
        prompt = list((await client.generate(PROMPT, max_new_tokens=1)).prompt_token_ids)
        for tokens in served:
            assert_greedy_identical(lm, prompt, tokens, expected)
        await eventually(lambda: idle(verifier, draft))
    await orchestrator.stop(1.0)


async def test_a_full_verifier_refuses_at_once(lm: LoadedModel) -> None:
    verifier = await start_verifier(lm, max_sessions=2)
    ids = list(lm.tokenizer.encode(PROMPT))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{verifier.port}") as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        calls = [stub.Session() for _ in range(3)]
        opening = verifier_pb2.VerifierRequest(open=verifier_pb2.OpenVerifierSession(prompt_token_ids=ids))
        for call in calls[:2]:
            await call.write(opening)
            assert (await call.read()).opened.committed_length == len(ids)
        await calls[2].write(opening)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await calls[2].read()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-sessions 2" in (info.value.details() or "")
        for call in calls[:2]:
            await call.done_writing()
        await eventually(lambda: live(verifier) == 0)
    await verifier.stop(1.0)


async def test_an_idle_session_expires(lm: LoadedModel) -> None:
    verifier = await start_verifier(lm, session_ttl_s=0.5)
    ids = list(lm.tokenizer.encode(PROMPT))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{verifier.port}") as channel:
        call = verifier_pb2_grpc.VerifierStub(channel).Session()
        await call.write(verifier_pb2.VerifierRequest(open=verifier_pb2.OpenVerifierSession(prompt_token_ids=ids)))
        await call.read()
        assert live(verifier) == 1
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()  # the client says nothing more
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "idle" in (info.value.details() or "")
        await eventually(lambda: live(verifier) == 0)
    await verifier.stop(1.0)
