"""The LOSSY acceptance policies: each rule on hand-built distributions, and end to end (labelled lossy)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from specdec import kernels
from specdec.kernels.reference import PAD, threshold_accept, top_m_accept, typical_accept
from specdec.orchestrator.client import SpecdecClient
from tests.helpers import hf_greedy, load

PARAMS = {"typical_epsilon": 0.09, "typical_delta": 0.3, "agree_top_m": 2, "accept_threshold": 0.1}


def probs(rows: list[list[float]]) -> torch.Tensor:
    """[1, K+1, V] from explicit rows (normalised)."""
    t = torch.tensor([rows], dtype=torch.float32)
    return t / t.sum(-1, keepdim=True)


def test_typical_rule_uses_the_entropy_scaled_bar() -> None:
    peaked = [0.97, 0.01, 0.01, 0.01]  # low entropy: bar = min(0.09, 0.3 * exp(-H)) = 0.09
    flat = [0.25, 0.25, 0.25, 0.25]  # H = ln 4: bar = min(0.09, 0.3 / 4) = 0.075
    p = probs([peaked, flat, flat])
    entropy = -sum(x * math.log(x) for x in peaked)
    assert 0.3 * math.exp(-entropy) > 0.09
    accept = typical_accept(p, torch.tensor([[1, 2]]), 0.09, 0.3)
    assert accept.tolist() == [[False, True]]  # 0.01 < 0.09; 0.25 > 0.075
    accept = typical_accept(p, torch.tensor([[0, 2]]), 0.09, 0.3)
    assert accept.tolist() == [[True, True]]


def test_top_m_rule_with_ties_and_zero_probabilities() -> None:
    p = probs([[0.4, 0.3, 0.3, 0.0], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    assert top_m_accept(p, torch.tensor([[2, 1]]), 2).tolist() == [[True, False]]  # tie with the 2nd: in
    assert top_m_accept(p, torch.tensor([[3, 0]]), 2).tolist() == [[False, True]]  # p = 0 never accepted
    assert top_m_accept(p, torch.tensor([[0, 3]]), 10).tolist() == [[True, False]]  # m > V


def test_threshold_rule_and_minus_inf_logits() -> None:
    logits = torch.tensor([[[2.0, float("-inf"), 0.0], [0.0, 0.0, 0.0]]])
    p = torch.softmax(logits, -1)
    assert threshold_accept(p, torch.tensor([[1]]), 0.1).tolist() == [[False]]  # -inf logit: p = 0
    assert threshold_accept(p, torch.tensor([[0]]), 0.1).tolist() == [[True]]


def test_lossy_verdicts_commit_the_targets_token_at_the_first_miss() -> None:
    p = probs([[0.6, 0.3, 0.1], [0.02, 0.9, 0.08], [0.1, 0.1, 0.8]])  # K = 2
    n, out = kernels.lossy_verify(p, torch.tensor([[1, 0]]), torch.tensor([2]), "threshold", PARAMS)
    assert n.tolist() == [1] and out.tolist() == [[1, 1, PAD]]  # 0.3 >= 0.1 in; 0.02 < 0.1 out: argmax 1
    n, out = kernels.lossy_verify(p, torch.tensor([[1, 1]]), torch.tensor([2]), "topk-agree", PARAMS)
    assert n.tolist() == [2] and out.tolist() == [[1, 1, 2]]  # all accepted: the bonus is p's argmax
    n, out = kernels.lossy_verify(p[:, :2], torch.tensor([[2]]), torch.tensor([1]), "typical", PARAMS)  # K = 1
    assert n.tolist() == [1] and out.tolist() == [[2, 1]]
    noise = torch.ones(1, 3, 3)
    noise[0, 1, 2] = 1e-6  # the exponential race then picks token 2 at position 1 when sampling
    n, out = kernels.lossy_verify(p, torch.tensor([[1, 0]]), torch.tensor([2]), "topk-agree", PARAMS, noise)
    assert n.tolist() == [1] and out.tolist() == [[1, 2, PAD]]
    with pytest.raises(kernels.KernelUnavailable):
        kernels.lossy_verify(p, torch.tensor([[1, 0]]), torch.tensor([2]), "typical", PARAMS, backend="triton")


async def test_a_lossy_policy_accepts_an_unrelated_draft(tiny_stack, tiny_target: Path, tiny_unrelated: Path):
    """The lossless policy rejects nearly everything from an unrelated draft; a permissive lossy policy
    accepts it, so its output is no longer the target's greedy decode: that is what lossy means."""
    lm = load(str(tiny_target))
    ids = lm.tokenizer.encode("def add(a, b):")
    draft = f"model:{tiny_unrelated}"
    async with SpecdecClient(tiny_stack.address) as client:
        exact = await client.generate(prompt_token_ids=ids, max_new_tokens=24, draft=draft, k=4)
        lossy = await client.generate(
            prompt_token_ids=ids,
            max_new_tokens=24,
            draft=draft,
            k=4,
            policy="topk-agree",
            policy_params={"agree_top_m": lm.vocab_size},
        )
    assert exact.policy == "exact" and lossy.policy == "topk-agree"
    assert list(exact.completions[0].token_ids) == hf_greedy(lm, ids, 24)
    assert exact.stats.acceptance_rate < 0.2 and lossy.stats.acceptance_rate == 1.0
    assert list(lossy.completions[0].token_ids) != list(exact.completions[0].token_ids)
