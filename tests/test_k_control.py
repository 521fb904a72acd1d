"""K controllers on synthetic acceptance/timing traces, and greedy identity through the services with each."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.k_control import CostModelK, HeuristicK, StepObservation, expected_tokens, make_controller
from tests.helpers import assert_greedy_identical, hf_greedy, load


def step(k: int, drafted: int, accepted: int, verify_ms: float, draft_ms_per_token: float = 1.0) -> StepObservation:
    return StepObservation(k, drafted, accepted, drafted * draft_ms_per_token, verify_ms, 0.5, 0.5)


def run_trace(controller: CostModelK, accept_prob: float, steps: int, verify_base: float = 80.0) -> list[int]:
    """Feed the controller a session whose drafts are accepted position by position with accept_prob
    (seeded), a verify costing base * (1 + 0.05 K) and a 1 ms/token draft."""
    rng = random.Random(0)
    ks = []
    for _ in range(steps):
        k = controller.next_k()
        ks.append(k)
        accepted = 0
        while accepted < k and rng.random() < accept_prob:
            accepted += 1
        controller.observe(step(k, k, accepted, verify_base * (1 + 0.05 * k)))
    return ks


def test_cost_controller_turns_speculation_off_when_nothing_is_accepted() -> None:
    ks = run_trace(CostModelK(k_start=4, k_max=8, probe_every=10), accept_prob=0.0, steps=40)
    assert ks[0] == 4  # warm-up at the starting K
    assert ks[5:9] == [0, 0, 0, 0]  # then target-only steps
    assert any(k > 0 for k in ks[15:]), "it re-probes now and then"
    assert sum(k == 0 for k in ks) > 30


def test_cost_controller_grows_k_as_acceptance_rises() -> None:
    low = run_trace(CostModelK(k_start=2, k_max=8), accept_prob=0.6, steps=60)[-20:]
    high = run_trace(CostModelK(k_start=2, k_max=8), accept_prob=0.95, steps=60)[-20:]
    assert sum(high) / 20 > sum(low) / 20 >= 1
    assert max(high) == 8
    # the model's choice at a known alpha is the argmax of the predicted rate
    fitted = CostModelK(k_start=2, k_max=8, alpha=0.6, draft_ms_per_token=1.0, verify_base_ms=80.0,
                        verify_ms_per_token=4.0, network_verify_ms=0.5, network_draft_ms=0.5)  # fmt: skip
    assert fitted.next_k() == max(range(9), key=lambda k: expected_tokens(0.6, k) / (80.5 + 5 * k + (0.5 if k else 0)))


def test_cost_controller_turns_speculation_back_on_after_a_probe() -> None:
    controller = CostModelK(k_start=4, k_max=8, probe_every=5)
    run_trace(controller, accept_prob=0.0, steps=20)
    assert controller.next_k() in (0, 2)
    late = run_trace(controller, accept_prob=0.95, steps=40)[-5:]
    assert min(late) >= 4


def test_cost_controller_accounts_for_an_expensive_draft() -> None:
    cheap, dear = CostModelK(k_start=2, k_max=8), CostModelK(k_start=2, k_max=8)
    for c, per_token in ((cheap, 1.0), (dear, 60.0)):
        for _ in range(20):
            k = c.next_k()
            c.observe(step(k, k, int(0.7 * k), 80 * (1 + 0.05 * k), per_token))
            c.observe(step(0, 0, 0, 80.0))
    assert dear.next_k() < cheap.next_k()


def test_heuristic_rule() -> None:
    h = HeuristicK(k=3, k_max=8)
    h.observe(step(3, 3, 3, 80))
    assert h.next_k() == 5
    h.observe(step(5, 5, 2, 80))
    assert h.next_k() == 4
    for _ in range(10):
        h.observe(step(4, 4, 0, 80))
    assert h.next_k() == 1
    for _ in range(10):
        h.observe(step(8, 8, 8, 80))
    assert h.next_k() == 8
    h.observe(step(8, 0, 0, 80))  # nothing drafted: no change
    assert h.next_k() == 8


def test_unknown_controller_is_refused() -> None:
    with pytest.raises(Exception, match="k_controller must be one of"):
        make_controller("magic", 4, 8)


@pytest.mark.parametrize("controller", ["fixed", "heuristic", "confidence", "cost"])
async def test_greedy_identity_with_every_controller(tiny_stack, tiny_target: Path, tiny_unrelated: Path, controller):
    lm = load(str(tiny_target))
    ids = lm.tokenizer.encode("The quick brown fox jumps over the lazy dog. The quick")
    reference = hf_greedy(lm, ids, 40)
    async with SpecdecClient(tiny_stack.address) as client:
        for draft in ("ngram", f"model:{tiny_unrelated}", f"model:{tiny_target}"):
            response = await client.generate(
                prompt_token_ids=ids, max_new_tokens=40, draft=draft, k=2, k_max=6, k_controller=controller
            )
            assert_greedy_identical(lm, ids, list(response.completions[0].token_ids), reference)


async def test_confidence_controller_lets_the_draft_stop_early(tiny_stack, tiny_target: Path, tiny_unrelated: Path):
    ids = load(str(tiny_target)).tokenizer.encode("def add(a, b):")
    async with SpecdecClient(tiny_stack.address) as client:
        eager = await client.generate(
            prompt_token_ids=ids, max_new_tokens=30, draft=f"model:{tiny_unrelated}", k=6, k_controller="fixed"
        )
        cautious = await client.generate(
            prompt_token_ids=ids, max_new_tokens=30, draft=f"model:{tiny_unrelated}", k_max=6,
            k_controller="confidence", draft_min_confidence=0.99,
        )  # fmt: skip
    assert eager.stats.draft_tokens > 0
    assert cautious.stats.draft_tokens < eager.stats.draft_tokens
