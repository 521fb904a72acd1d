"""Verifier batching: blocks of concurrent sessions verified in one forward pass keep every session's output
its own — greedy identity per session, seeded sampling unchanged by what it was batched with — and a bad block
fails only its own session."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from specdec.errors import FailedPrecondition
from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.embedded import EmbeddedStack
from specdec.service import ModelWorker
from specdec.verifier_service.batcher import VerifyBatcher, VerifyRequest
from specdec.verifier_service.core import SessionOptions, VerifierCore, VerifyOutcome
from tests.helpers import assert_greedy_identical, hf_greedy, load

PROMPTS = [
    "def add(a, b):",
    "The quick brown fox",
    "for i in range(10):",
    "Hello! How can I help",
    "Summarise: the meeting",
    "Speculative decoding drafts",
    "print(i * i)",
    "one two three four five one two three",
]
MAX_NEW = 24


async def test_concurrent_sessions_are_batched_and_keep_greedy_identity(tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    async with EmbeddedStack(target_model=lm) as stack, SpecdecClient(stack.address) as client:
        batcher = stack.servers[0].servicer.batcher
        drafts = ["none", f"model:{tiny_target}", "ngram", "none"] * 2  # blocks of 1, 5 and ragged sizes together
        ids = [lm.tokenizer.encode(p) for p in PROMPTS]
        responses = await asyncio.gather(*[
            client.generate(prompt_token_ids=i, max_new_tokens=MAX_NEW, draft=d, k=4, k_controller="fixed")
            for i, d in zip(ids, drafts, strict=True)
        ])  # fmt: skip
        for prompt_ids, response in zip(ids, responses, strict=True):
            assert_greedy_identical(lm, prompt_ids, list(response.completions[0].token_ids),
                                    hf_greedy(lm, prompt_ids, MAX_NEW))  # fmt: skip
        assert batcher.largest_batch >= 2, (batcher.batches, batcher.batched_requests)  # batching really happened


async def test_a_seeded_sample_is_the_same_alone_and_batched(tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    request = {"max_new_tokens": MAX_NEW, "temperature": 0.9, "seed": 7, "draft": f"model:{tiny_target}", "k": 3,
               "k_controller": "fixed"}  # fmt: skip
    async with EmbeddedStack(target_model=lm) as stack, SpecdecClient(stack.address) as client:
        alone = await client.generate(PROMPTS[0], **request)
        assert stack.servers[0].servicer.batcher.largest_batch == 1
        others = [client.generate(p, **{**request, "seed": s}) for s, p in enumerate(PROMPTS[1:])]
        together, *_ = await asyncio.gather(client.generate(PROMPTS[0], **request), *others)
        assert stack.servers[0].servicer.batcher.largest_batch >= 2
    assert list(together.completions[0].token_ids) == list(alone.completions[0].token_ids)


@torch.inference_mode()
def test_a_bad_block_fails_only_its_own_session(tiny_target: Path) -> None:
    core = VerifierCore(load(str(tiny_target)))
    good, bad = (core.open_session(SessionOptions(prompt_token_ids=[5, 6, 7])) for _ in range(2))
    loop = asyncio.new_event_loop()
    try:
        futures = [loop.create_future() for _ in range(2)]
        results = core.verify_batch([
            VerifyRequest(good, good.committed_length, [8, 9], None, futures[0]),
            VerifyRequest(bad, bad.committed_length + 5, [8, 9], None, futures[1]),  # not its committed length
        ])  # fmt: skip
    finally:
        loop.close()
    assert isinstance(results[0], VerifyOutcome) and good.committed_length == 3 + len(results[0].token_ids)
    assert isinstance(results[1], FailedPrecondition) and bad.committed_length == 3
    after = bad.verify(bad.committed_length, [8], None)  # the failed session goes on as if nothing happened
    assert after.committed_length == 3 + len(after.token_ids)


async def test_requests_that_wait_together_run_as_one_batch() -> None:
    """While the model worker is busy, queued requests become the next batch (no window needed)."""
    worker = ModelWorker("test-model")
    seen: list[int] = []

    def run_batch(requests: list[VerifyRequest]) -> list[object]:
        seen.append(len(requests))
        if len(seen) == 1:
            time.sleep(0.3)  # the first batch holds the worker while the others arrive
        return [r.position for r in requests]

    batcher = VerifyBatcher(worker, run_batch, live_sessions=lambda: 5, window_s=0.0, max_batch=3)
    first = asyncio.create_task(batcher.verify(None, 0, [], None))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.verify(None, p, [], None)) for p in range(1, 5)]
    assert await asyncio.gather(first, *rest) == [0, 1, 2, 3, 4]
    assert seen == [1, 3, 1]  # then the queued four, at most three at a time
    worker.shutdown()


async def test_a_window_lets_stragglers_join_but_a_lone_session_never_waits() -> None:
    worker = ModelWorker("test-model")
    seen: list[int] = []
    batcher = VerifyBatcher(worker, lambda rs: seen.append(len(rs)) or [0] * len(rs), lambda: 2, window_s=0.2)
    first = asyncio.create_task(batcher.verify(None, 0, [], None))
    await asyncio.sleep(0.05)  # inside the window: joins the first
    await asyncio.gather(first, batcher.verify(None, 1, [], None))
    assert seen == [2]
    lone = VerifyBatcher(worker, lambda rs: [0] * len(rs), lambda: 1, window_s=30.0)
    await asyncio.wait_for(lone.verify(None, 0, [], None), timeout=5)  # one live session: no 30 s wait
    worker.shutdown()


def test_batching_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max batch"):
        VerifyBatcher(ModelWorker("x"), lambda rs: [], lambda: 0, window_s=0.0, max_batch=0)


async def test_a_caller_cancelled_while_queued_never_runs() -> None:
    """Its session is closed right after (on the same worker): running its block then would refill the cache."""
    worker = ModelWorker("test-model")
    ran: list[int] = []

    def run_batch(requests: list[VerifyRequest]) -> list[object]:
        ran.extend(r.position for r in requests)
        time.sleep(0.2)  # the first batch holds the worker
        return [r.position for r in requests]

    batcher = VerifyBatcher(worker, run_batch, live_sessions=lambda: 3, window_s=0.0)
    first = asyncio.create_task(batcher.verify(None, 0, [], None))
    await asyncio.sleep(0.05)
    doomed = asyncio.create_task(batcher.verify(None, 1, [], None))
    survivor = asyncio.create_task(batcher.verify(None, 2, [], None))
    await asyncio.sleep(0.01)
    doomed.cancel()
    assert await first == 0 and await survivor == 2
    assert ran == [0, 2]
    worker.shutdown()


@torch.inference_mode()
def test_a_failed_batch_is_retried_one_by_one(tiny_target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward that fails for the batch as a whole (here: always, when batched) fails no session by itself."""
    from specdec.verifier_service import core as core_module

    def fail_when_batched(model: object, jobs: list[object]) -> list[object]:
        if len(jobs) > 1:
            raise RuntimeError("out of memory")
        return [job.seq.extend(job.token_ids, job.keep_logits, job.want_hidden) for job in jobs]  # type: ignore[attr-defined]

    monkeypatch.setattr(core_module, "extend_many", fail_when_batched)
    core = VerifierCore(load(str(tiny_target)))
    sessions = [core.open_session(SessionOptions(prompt_token_ids=[5, 6, 7])) for _ in range(3)]
    reference = VerifierCore(core.lm).open_session(SessionOptions(prompt_token_ids=[5, 6, 7])).verify(3, [8, 9], None)
    loop = asyncio.new_event_loop()
    try:
        requests = [VerifyRequest(s, 3, [8, 9], None, loop.create_future()) for s in sessions]
        results = core.verify_batch(requests)
    finally:
        loop.close()
    assert all(isinstance(r, VerifyOutcome) and r.token_ids == reference.token_ids for r in results), results
