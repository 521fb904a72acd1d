"""K controllers: how many draft tokens to propose, and verify, at each step of one session.

Every controller sees the same observation after each step and only ever changes K, so all of them keep
the lossless guarantee. K = 0 means a target-only step (no draft call at all).

- `fixed`: always K.
- `heuristic` (HF assisted generation's rule): K += 2 when every drafted token was accepted, else
  K = max(1, K - 1), within [1, K_max].
- `confidence` (llama.cpp's rule): propose up to K_max and let the draft stop itself when its own top-1
  probability falls below p_min (sent with each propose).
- `cost` (ours): see `cost_model.py`: K chosen per step to maximise expected committed tokens per second,
  from acceptance by prompt-lookup match length and step times measured online; K = 0 included. With token
  trees K is their greatest depth: the nodes worth verifying are chosen by their path probabilities
  (`tree_cost.py`) and trees are drafted as deep as the deepest node recently kept (deeper now and then).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from specdec.errors import InvalidArgument
from specdec.orchestrator.cost_model import CostModelK, CostPriors

CONTROLLERS = ("fixed", "heuristic", "confidence", "cost")


@dataclass(frozen=True)
class StepObservation:
    """What one step did, with its time split in milliseconds."""

    k: int  # tokens asked of the draft (0: no draft call)
    proposed: int  # tokens the draft returned (it may return fewer than asked)
    drafted: int  # tokens sent to the verifier (the controller may verify fewer than proposed)
    accepted: int
    draft_ms: float
    verify_ms: float  # verifier compute: forward + acceptance
    draft_network_ms: float  # round trip of the propose call minus draft compute (0 without a draft call)
    verify_network_ms: float  # round trip of the verify call minus verify compute
    match_length: int = 0  # prompt lookup: length of the matched suffix behind the proposal
    position: int = 0  # committed length before the step
    committed: tuple[int, ...] = ()  # tokens the verdict committed from `position` on
    depth: int = 0  # a token tree's depth (positions it drafted for); 0: a chain (`drafted` positions)


class FixedK:
    def __init__(self, k: int) -> None:
        self.k = k

    def next_k(self) -> int:
        return self.k

    def trim(self, tokens: Sequence[int], match_length: int, position: int) -> int:
        return len(tokens)

    def trim_tree(
        self, tokens: Sequence[int], parents: Sequence[int], logprobs: Sequence[float], position: int,
        call_ms: float = 0.0,
    ) -> list[int]:  # fmt: skip
        """The nodes of a proposed tree to verify (indices): all of them."""
        return list(range(len(tokens)))

    def observe(self, step: StepObservation) -> None:
        pass


class HeuristicK(FixedK):
    def __init__(self, k: int, k_max: int) -> None:
        super().__init__(max(1, min(k, k_max)))
        self.k_max = k_max

    def observe(self, step: StepObservation) -> None:
        if step.drafted == 0:
            return  # nothing was proposed: no evidence either way
        if step.accepted == step.drafted:
            self.k = min(self.k + 2, self.k_max)
        else:
            self.k = max(1, self.k - 1)


KController = FixedK | CostModelK


def make_controller(
    name: str, k: int, k_max: int, priors: CostPriors | None = None, free_draft: bool | None = None,
    trees: bool = False,
) -> KController:  # fmt: skip
    """`free_draft`: the draft is known to cost nothing per token (prompt lookup, suffix trees); None: judge
    by the measured draft time. `trees`: the draft is asked for token trees (at most K deep)."""
    if name == "fixed":
        return FixedK(k)
    if name == "heuristic":
        return HeuristicK(k, k_max)
    if name == "confidence":
        return FixedK(k_max)  # the draft stops itself below p_min
    if name == "cost":
        return CostModelK(k_start=k, k_max=k_max, priors=priors, free_draft=free_draft, trees=trees)
    raise InvalidArgument(f"k_controller must be one of {CONTROLLERS}, got {name!r}")
