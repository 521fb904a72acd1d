"""Session lifetimes and protocol edges: context limit, cleanup after requests and cancellation, bad input
sent straight to the draft service, status propagation from an ended stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.streams import DraftStream
from specdec.v1 import draft_pb2, draft_pb2_grpc
from tests.helpers import load


def live_sessions(stack) -> tuple[int, int]:
    verifier, draft = stack.servers[0].servicer, stack.servers[1].servicer
    return verifier.core.live_sessions, draft.core.live_sessions


async def wait_for_no_sessions(stack, seconds: float = 20.0) -> None:
    """Poll (generous bound, no tight timing) until both services hold no session."""
    for _ in range(int(seconds / 0.05)):
        if live_sessions(stack) == (0, 0):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"sessions still live: {live_sessions(stack)}")


async def test_generation_stops_with_length_at_the_context_limit(tiny_stack, tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    prompt = (lm.tokenizer.encode("def add(a, b):\n    return a + b\n") * 40)[: lm.max_context - 12]
    async with SpecdecClient(tiny_stack.address) as client:
        for draft in ("none", "ngram"):
            response = await client.generate(prompt_token_ids=prompt, max_new_tokens=100, draft=draft, k=8)
            completion = response.completions[0]
            assert completion.finish_reason in ("length", "stop")
            assert len(prompt) + len(completion.token_ids) <= lm.max_context
            if completion.finish_reason == "length":
                assert len(prompt) + len(completion.token_ids) == lm.max_context


async def test_sessions_are_freed_after_requests_and_after_a_cancelled_stream(tiny_stack, tiny_target: Path):
    async with SpecdecClient(tiny_stack.address) as client:
        await client.generate("def add(a, b):", max_new_tokens=8, num_samples=3, draft=f"model:{tiny_target}")
        await wait_for_no_sessions(tiny_stack)
        stream = client.generate_stream("def add(a, b):", max_new_tokens=400, num_samples=2, draft="ngram", k=2)
        async for message in stream:
            assert message.WhichOneof("kind") == "delta"
            break  # the client walks away mid-generation
        await stream.aclose()
    await wait_for_no_sessions(tiny_stack)


async def test_draft_service_refuses_ids_outside_its_vocabulary(tiny_stack, tiny_target: Path) -> None:
    vocab = load(str(tiny_target)).vocab_size
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tiny_stack.servers[1].port}") as channel:
        stub = draft_pb2_grpc.DraftStub(channel)
        stream = DraftStream(stub)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.open(draft_pb2.OpenDraftSession(prompt_token_ids=[1, vocab + 5], draft=f"model:{tiny_target}"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "prompt_token_ids" in (info.value.details() or "")

        stream = DraftStream(stub)
        await stream.open(draft_pb2.OpenDraftSession(prompt_token_ids=[1, 2, 3], draft=f"model:{tiny_target}"))
        await stream.commit(3, [vocab + 1])  # not answered: the service ends the stream with a status
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.propose(3, 0, 2)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "commit.token_ids" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:  # a later write reports the same status
            await stream.commit(3, [1])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await wait_for_no_sessions(tiny_stack)


@pytest.mark.parametrize("temperature", [1e-40, float("inf"), float("nan"), -0.5])
async def test_unusable_temperatures_are_refused(tiny_stack, temperature: float) -> None:
    async with SpecdecClient(tiny_stack.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.generate("hi", max_new_tokens=2, temperature=temperature)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "temperature must be 0 (greedy) or in" in (info.value.details() or "")
