"""K controllers on synthetic acceptance/timing traces, and greedy identity through the services with each."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.cost_model import CostModelK, CostPriors, expected_tokens
from specdec.orchestrator.k_control import HeuristicK, StepObservation, make_controller
from tests.helpers import assert_greedy_identical, hf_greedy, load


def step(k: int, drafted: int, accepted: int, verify_ms: float, draft_ms_per_token: float = 1.0) -> StepObservation:
    return StepObservation(k, drafted, drafted, accepted, drafted * draft_ms_per_token, verify_ms, 0.5, 0.5)


def verify_cost(k: int) -> float:
    """This CPU's shape: a block of 2+ tokens costs ~1.6x a single-token step, then grows slowly."""
    return 72.0 if k == 0 else 115.0 + 3.0 * k


class Session:
    """A synthetic greedy session: the target's output is a fixed random sequence; a proposal agrees with it
    position by position with probability `agree` (seeded), then goes wrong. Feeds a controller the same
    observations the loop would."""

    def __init__(
        self, controller: CostModelK | HeuristicK, seed: int = 0, draft_ms_per_token: float = 0.01,
        draft_network_ms: float = 0.5, cost: Callable[[int], float] = verify_cost,
    ) -> None:  # fmt: skip
        self.controller = controller
        self.cost = cost
        self.rng = random.Random(seed)
        self.truth = [self.rng.randrange(1000) for _ in range(5000)]
        self.position = 0
        self.draft_ms_per_token = draft_ms_per_token
        self.draft_network_ms = draft_network_ms
        self.asked: list[int] = []
        self.verified: list[int] = []

    def propose(self, k: int, agree: float) -> list[int]:
        tokens = []
        for i in range(k):
            right = self.truth[self.position + i]
            tokens.append(right if self.rng.random() < agree else right + 1000)
            if tokens[-1] != right:
                break
        return tokens + [self.rng.randrange(1000) for _ in range(k - len(tokens))]

    def step(self, agree: float, match_length: int = 0) -> None:
        c = self.controller
        k = c.next_k()
        proposal = self.propose(k, agree) if k else []
        keep = c.trim(proposal, match_length, self.position) if k else 0  # as the loop: only after a call
        drafted = proposal[:keep]
        accepted = next((i for i, t in enumerate(drafted) if t != self.truth[self.position + i]), len(drafted))
        committed = tuple(self.truth[self.position : self.position + accepted + 1])
        c.observe(StepObservation(
            k=k, proposed=len(proposal), drafted=keep, accepted=accepted,
            draft_ms=self.draft_ms_per_token * len(proposal), verify_ms=self.cost(keep),
            draft_network_ms=self.draft_network_ms if k else 0.0, verify_network_ms=1.0, match_length=match_length,
            position=self.position, committed=committed,
        ))  # fmt: skip
        self.asked.append(k)
        self.verified.append(keep)
        self.position += len(committed)

    def run(self, steps: int, agree: float, match_length: int = 0) -> Session:
        for _ in range(steps):
            self.step(agree, match_length)
        return self


def test_cost_controller_turns_speculation_off_when_nothing_is_accepted() -> None:
    s = Session(CostModelK(k_start=4, k_max=8, probe_every=10), draft_network_ms=10.0).run(60, agree=0.0)
    assert s.asked[0] == 4 and s.verified[0] == 4  # warm-up at the starting K
    assert s.asked[1] == 0  # then one target-only step to measure it
    assert sum(s.verified[5:]) == 0, "nothing is verified once acceptance is known to be ~0"
    assert s.asked[-30:].count(0) >= 25, "a draft 10 ms away is hardly called any more"
    assert any(k > 0 for k in s.asked[-30:]), "but it re-probes now and then"
    cheap = Session(CostModelK(k_start=4, k_max=8, probe_every=10), draft_network_ms=0.2).run(60, agree=0.0)
    assert sum(cheap.verified[5:]) == 0
    assert cheap.asked[-30:].count(0) <= 15, "a call costing 0.3% of a step is made at least every other step"


def test_cost_controller_grows_k_as_acceptance_rises() -> None:
    means = []
    for agree in (0.3, 0.6, 0.8, 0.97):
        s = Session(CostModelK(k_start=2, k_max=8)).run(80, agree=agree)
        means.append(sum(s.verified[-40:]) / 40)
    assert means[0] < 0.5, means  # at 30% a 1.6x-costly block never pays
    assert means == sorted(means), means
    assert means[-1] > 7, means


def test_cost_controller_turns_speculation_back_on_after_a_probe() -> None:
    s = Session(CostModelK(k_start=4, k_max=8, probe_every=5), draft_network_ms=10.0).run(40, agree=0.0)
    assert sum(s.verified[-20:]) == 0
    s.run(40, agree=1.0)
    assert min(s.verified[-10:]) == 8, s.verified


def test_cost_controller_keeps_calling_a_distant_draft_that_pays() -> None:
    """A 30 ms round trip is worth paying when proposals are good: skipped steps are not counted as empty
    proposals, so the expected saving of a call does not decay while calls are skipped."""
    s = Session(CostModelK(k_start=4, k_max=8, probe_every=16), draft_network_ms=30.0)
    s.run(20, agree=0.0, match_length=5)  # first the draft is useless: calls stop
    assert s.asked[-10:].count(0) >= 8
    s.run(150, agree=0.9, match_length=5)  # then good: probes find out and calls resume
    assert s.asked[-20:].count(0) <= 2, s.asked[-40:]


def test_cost_controller_trims_by_match_length() -> None:
    """Prompt lookup: 1-token matches rarely agree, 4-token matches nearly always; the controller verifies
    the second kind and not the first, even within one session."""
    s = Session(CostModelK(k_start=4, k_max=8))
    for _ in range(60):
        s.step(agree=0.1, match_length=1)
        s.step(agree=0.98, match_length=4)
    assert sum(s.verified[-40::2]) <= 2  # match length 1: (almost always) target-only
    assert sum(s.verified[-39::2]) / 20 > 6  # match length 4: long blocks


def test_cost_controller_keeps_learning_from_proposals_it_did_not_verify() -> None:
    s = Session(CostModelK(k_start=4, k_max=8)).run(30, agree=0.0, match_length=2)
    assert sum(s.verified[-10:]) == 0
    s.run(15, agree=1.0, match_length=2)  # the proposals turn good: learned without verifying them
    assert s.verified[-1] == 8, s.verified


def test_cost_controller_starts_from_what_earlier_sessions_learned() -> None:
    priors = CostPriors()
    Session(CostModelK(k_start=4, k_max=8, priors=priors)).run(60, agree=0.98, match_length=3)
    fresh = Session(CostModelK(k_start=4, k_max=8, priors=priors), seed=1).run(3, agree=0.98, match_length=3)
    assert fresh.asked[0] == 8 and fresh.verified[0] >= 6  # no warm-up: the shared timings and acceptance


def test_cost_controller_accounts_for_an_expensive_draft() -> None:
    cheap = Session(CostModelK(k_start=2, k_max=8), draft_ms_per_token=1.0).run(60, agree=0.7)
    dear = Session(CostModelK(k_start=2, k_max=8), draft_ms_per_token=60.0).run(60, agree=0.7)
    assert sum(dear.asked[-30:]) < sum(cheap.asked[-30:])


def test_a_known_free_draft_stays_free_when_timings_are_noisy() -> None:
    """Prompt lookup on a busy machine can measure like a costly draft; declared free, it keeps being asked
    for K_max (and trimmed by its proposals) instead of being judged by a per-token cost it does not have."""
    judged = Session(CostModelK(k_start=4, k_max=8), draft_ms_per_token=40.0).run(40, agree=0.6, match_length=4)
    declared = Session(CostModelK(k_start=4, k_max=8, free_draft=True), draft_ms_per_token=40.0)
    declared.run(40, agree=0.6, match_length=4)
    assert set(declared.asked[2:]) <= {0, 8} and declared.asked[2:].count(8) >= 30
    assert sum(declared.verified) > sum(judged.verified)


def test_one_slow_verify_does_not_stop_speculation_for_good() -> None:
    """The first block's verify is cold (10x its cost) and the first proposal is wrong: K > 0 then looks
    ruinous and stops being verified, hence measured. While decoding target-only its inflated estimate relaxes
    towards the prior, so the controller verifies again and measures the real cost."""
    steps = iter(range(10**6))

    def cold_first(k: int) -> float:
        return verify_cost(k) * (10.0 if next(steps) == 0 else 1.0)

    session = Session(CostModelK(k_start=8, k_max=8, free_draft=True), cost=cold_first)
    session.step(agree=0.0, match_length=8)  # cold, and nothing accepted
    session.run(80, agree=0.9, match_length=8)
    assert session.verified[0] == 8
    assert sum(v > 0 for v in session.verified[-40:]) >= 35, session.verified


def test_expected_tokens() -> None:
    assert expected_tokens(0.5, 0.5, 0) == 1.0
    assert expected_tokens(1.0, 1.0, 4) == 5.0
    assert expected_tokens(0.5, 1.0, 4) == 3.0
    assert abs(expected_tokens(0.6, 0.5, 3) - (1 + 0.6 * (1 + 0.5 + 0.25))) < 1e-12


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


async def test_the_default_controller_is_cost_unless_that_would_make_output_vary(tiny_stack, tiny_target: Path):
    ids = load(str(tiny_target)).tokenizer.encode("one two one two one two")
    model = f"model:{tiny_target}"
    cases = [
        (dict(draft="ngram"), "cost"),
        (dict(draft="ngram", temperature=0.8, seed=1), "cost"),  # one-hot q: output never depends on K
        (dict(draft=model, temperature=0.8), "cost"),  # unseeded: nothing to reproduce
        (dict(draft=model, temperature=0.8, seed=1), "fixed"),  # q-draft: output depends on block starts
        (dict(draft="ngram", policy="typical"), "fixed"),  # LOSSY: output depends on what was verified
        (dict(draft="ngram", policy="threshold", k_controller="heuristic"), "heuristic"),  # asked for
    ]
    async with SpecdecClient(tiny_stack.address) as client:
        for kwargs, expected in cases:
            response = await client.generate(prompt_token_ids=ids, max_new_tokens=4, **kwargs)
            assert response.k_controller == expected, kwargs
