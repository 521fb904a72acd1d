"""Greedy speculative output == the target's own greedy decode (HF generate), through real gRPC services."""

from __future__ import annotations

from pathlib import Path

import pytest

from specdec.orchestrator.client import SpecdecClient
from tests.helpers import assert_greedy_identical, hf_greedy, load

PROMPTS = ["def add(a, b):\n    return", "The quick brown fox jumps over the lazy dog. The quick"]
MAX_NEW = 40


@pytest.mark.parametrize("k", [1, 2, 4, 8])
async def test_draft_equal_to_target_accepts_everything(tiny_stack, tiny_target: Path, k: int) -> None:
    lm = load(str(tiny_target))
    async with SpecdecClient(tiny_stack.address) as client:
        for prompt in PROMPTS:
            ids = lm.tokenizer.encode(prompt)
            response = await client.generate(
                prompt_token_ids=ids, max_new_tokens=MAX_NEW, draft=f"model:{tiny_target}", k=k, k_controller="fixed"
            )
            completion = response.completions[0]
            assert_greedy_identical(lm, ids, list(completion.token_ids), hf_greedy(lm, ids, MAX_NEW))
            assert response.stats.draft_tokens > 0
            assert response.stats.acceptance_rate == 1.0
            # every step commits its K accepted tokens plus the bonus, except where max tokens cut K
            assert response.stats.steps <= -(-MAX_NEW // (k + 1)) + 1


@pytest.mark.parametrize("k", [1, 2, 4, 8])
async def test_unrelated_draft_accepts_almost_nothing(tiny_stack, tiny_target: Path, tiny_unrelated: Path, k: int):
    lm = load(str(tiny_target))
    async with SpecdecClient(tiny_stack.address) as client:
        for prompt in PROMPTS:
            ids = lm.tokenizer.encode(prompt)
            response = await client.generate(
                prompt_token_ids=ids, max_new_tokens=MAX_NEW, draft=f"model:{tiny_unrelated}", k=k, k_controller="fixed"
            )
            assert_greedy_identical(lm, ids, list(response.completions[0].token_ids), hf_greedy(lm, ids, MAX_NEW))
            assert response.stats.draft_tokens > 0
            assert response.stats.acceptance_rate < 0.2


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("draft", ["ngram", "suffix"])
async def test_model_free_drafts(tiny_stack, tiny_target: Path, k: int, draft: str) -> None:
    lm = load(str(tiny_target))
    async with SpecdecClient(tiny_stack.address) as client:
        for round_ in range(2):  # in the second round the suffix cache holds the first round's text
            for prompt in PROMPTS:
                ids = lm.tokenizer.encode(prompt)
                response = await client.generate(
                    prompt_token_ids=ids, max_new_tokens=MAX_NEW, draft=draft, k=k, k_controller="fixed"
                )
                tokens = list(response.completions[0].token_ids)
                assert_greedy_identical(lm, ids, tokens, hf_greedy(lm, ids, MAX_NEW))
                if draft == "suffix" and round_ == 1:  # the same request again: its earlier output is proposed
                    assert response.stats.acceptance_rate > 0.5


async def test_target_only_baseline(tiny_stack, tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    async with SpecdecClient(tiny_stack.address) as client:
        ids = lm.tokenizer.encode(PROMPTS[0])
        response = await client.generate(prompt_token_ids=ids, max_new_tokens=MAX_NEW, draft="none")
        assert_greedy_identical(lm, ids, list(response.completions[0].token_ids), hf_greedy(lm, ids, MAX_NEW))
        assert response.stats.draft_tokens == 0
        assert response.stats.steps == len(response.completions[0].token_ids)
        assert response.draft == "none" and response.k == 0


@pytest.mark.parametrize("draft", ["quantized", "quantized:{target}"])
async def test_the_int8_self_draft(tiny_stack, tiny_target: Path, draft: str) -> None:
    """The target's own int8 copy (named, or the target itself when no name is given): the output is the
    target's, and the copy agrees with it most of the time."""
    lm = load(str(tiny_target))
    async with SpecdecClient(tiny_stack.address) as client:
        for prompt in PROMPTS:
            ids = lm.tokenizer.encode(prompt)
            response = await client.generate(
                prompt_token_ids=ids, max_new_tokens=MAX_NEW, draft=draft.format(target=tiny_target), k=3,
                k_controller="fixed",
            )  # fmt: skip
            tokens = list(response.completions[0].token_ids)
            assert_greedy_identical(lm, ids, tokens, hf_greedy(lm, ids, MAX_NEW))
            assert response.stats.acceptance_rate > 0.5, response.stats
