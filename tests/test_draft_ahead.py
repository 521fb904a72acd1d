"""Draft-ahead: while a block is verified the draft proposes the next one, assuming acceptance. Output never
changes (greedy identity, seeded sampling identical with it on and off); a right guess saves the draft call, a
wrong one is thrown away; a draft service that fails meanwhile still fails over cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.server import serve as serve_orchestrator
from tests.faults import DelayProxy
from tests.helpers import assert_greedy_identical, hf_greedy, load

PROMPT = "def add(a, b):"
MAX_NEW = 40


@pytest.mark.parametrize("k", [1, 4])
async def test_a_draft_that_guesses_right_is_used_ahead(tiny_stack, tiny_target: Path, k: int) -> None:
    lm = load(str(tiny_target))
    ids = lm.tokenizer.encode(PROMPT)
    request = {"prompt_token_ids": ids, "max_new_tokens": MAX_NEW, "draft": f"model:{tiny_target}", "k": k,
               "k_controller": "fixed"}  # fmt: skip
    async with SpecdecClient(tiny_stack.address) as client:
        on = await client.generate(**request, draft_ahead=True)
        off = await client.generate(**request, draft_ahead=False)
    reference = hf_greedy(lm, ids, MAX_NEW)
    for response in (on, off):
        assert_greedy_identical(lm, ids, list(response.completions[0].token_ids), reference)
    # The target drafting for itself always guesses right: after the first step every block comes ahead.
    assert on.stats.draft_ahead_hits >= on.stats.steps - 2 and on.stats.draft_ahead_misses == 0, on.stats
    assert on.stats.draft_calls <= on.stats.steps + 1  # one proposal per step, asked during the step before
    assert off.stats.draft_ahead_hits == off.stats.draft_ahead_misses == 0
    assert on.stats.steps == off.stats.steps


async def test_wrong_guesses_are_thrown_away_and_pause_draft_ahead(
    tiny_stack, tiny_target: Path, tiny_unrelated: Path
) -> None:
    lm = load(str(tiny_target))
    ids = lm.tokenizer.encode(PROMPT)
    async with SpecdecClient(tiny_stack.address) as client:
        response = await client.generate(
            prompt_token_ids=ids, max_new_tokens=MAX_NEW, draft=f"model:{tiny_unrelated}", k=3, k_controller="fixed"
        )
    assert_greedy_identical(lm, ids, list(response.completions[0].token_ids), hf_greedy(lm, ids, MAX_NEW))
    stats = response.stats
    # A few guesses fail, then draft-ahead pauses (a miss costs the draft service a block), retrying now and then.
    assert stats.draft_ahead_misses >= 4 and stats.draft_ahead_hits + stats.draft_ahead_misses <= stats.steps // 2


@pytest.mark.parametrize("draft", ["ngram", "suffix", "model"])
async def test_seeded_sampling_is_the_same_with_and_without_draft_ahead(
    tiny_stack, tiny_target: Path, draft: str
) -> None:
    name = f"model:{tiny_target}" if draft == "model" else draft
    request = {"max_new_tokens": MAX_NEW, "temperature": 0.8, "seed": 11, "draft": name, "k": 3,
               "k_controller": "fixed"}  # fmt: skip
    async with SpecdecClient(tiny_stack.address) as client:
        on = await client.generate(PROMPT, **request, draft_ahead=True)
        off = await client.generate(PROMPT, **request, draft_ahead=False)
    assert list(on.completions[0].token_ids) == list(off.completions[0].token_ids)
    if draft == "model":
        assert on.stats.draft_ahead_hits > 0


async def test_draft_ahead_through_a_slow_link_and_a_draft_that_dies(tiny_stack, tiny_target: Path) -> None:
    """20 ms each way on the draft's link: blocks still come ahead. Then the link dies mid-request: the request
    goes on target-only with the same output."""
    lm = load(str(tiny_target))
    ids = lm.tokenizer.encode(PROMPT)
    verifier, draft = tiny_stack.servers[0], tiny_stack.servers[1]
    request = {"prompt_token_ids": ids, "max_new_tokens": MAX_NEW, "draft": f"model:{tiny_target}", "k": 4,
               "k_controller": "fixed"}  # fmt: skip
    async with DelayProxy(draft.port, 0.02) as slow_link:
        orchestrator = await serve_orchestrator(f"127.0.0.1:{verifier.port}", slow_link.address, 0, "127.0.0.1")
        try:
            async with SpecdecClient(f"127.0.0.1:{orchestrator.port}") as client:
                slow = await client.generate(**request)
                assert slow.stats.draft_ahead_hits >= slow.stats.steps - 2, slow.stats
                killed = False
                async for message in client.generate_stream(**request):
                    if message.WhichOneof("kind") == "delta" and not killed:
                        slow_link.kill()
                        killed = True
                    elif message.WhichOneof("kind") == "done":
                        dead = message.done
        finally:
            await orchestrator.stop(1.0)
    reference = hf_greedy(lm, ids, MAX_NEW)
    assert_greedy_identical(lm, ids, list(slow.completions[0].token_ids), reference)
    assert_greedy_identical(lm, ids, list(dead.completions[0].token_ids), reference)
    assert dead.stats.draft_failure, dead.stats
