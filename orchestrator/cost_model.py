"""The `cost` K controller: speculate exactly as much as pays, step by step.

Each step has two decisions:

1. *Ask*: how many tokens to ask the draft for (0 = no draft call, a target-only step). Prompt lookup is
   nearly free, so it is asked for K_max; a model draft costs time per token, so K is chosen from the
   cost model with the draft's time included.
2. *Trim*: how many of the proposed tokens to verify. Acceptance is estimated per bucket (prompt lookup's
   match length: a 1-token match is accepted far less often than an 8-token one) as the probability of the
   first token, a_1, and of each next token given the one before was accepted, a_n. Verifying K of them
   commits on average

       E(K) = 1 + a_1 * (1 + a_n + ... + a_n^(K-1))          (the target's own token included)

   tokens at a cost of t_verify(K) + t_network, both measured online per K, so K maximises
   E(K) / (t_verify(K) + t_network); K = 0 is among the choices. The rates used are cautious: one standard
   error below the estimate, so a bucket seen only a few times (or only through priors) is not bet on.

Acceptance is learned from every proposal, verified or not ("shadow" acceptance): once the committed
sequence covers a proposal's positions, the proposal's longest prefix agreeing with it is what verifying
all of it would have accepted. Under greedy decoding that is exact; under sampling with prompt lookup (one-hot
q, verified by the target's own draw for each position) it is exact too. For a sampling model draft it is an
estimate. A bucket the controller stopped verifying thus keeps being measured and can come back.

A draft call whose expected saving (over the buckets its proposals fall in) is below its cost (round trip +
draft time) is skipped; a probe call now and then (costing about 1% of the time, at most every
`probe_every` steps) keeps the estimates alive, so a session that turned speculation off can turn it back
on. Every estimate starts from `CostPriors` the orchestrator shares between sessions of the same draft,
policy and sampling (what earlier requests learned) and moves to this session's own measurements.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from specdec.orchestrator.rates import MAX_PRIOR_STRENGTH, PRIOR_STRENGTH, DecayedRate
from specdec.orchestrator.tree_cost import HitRates, PendingTree, bin_of, decide, likeliest_first, node_paths

if TYPE_CHECKING:
    from specdec.orchestrator.k_control import StepObservation

PRIOR_ALPHA = 0.5  # acceptance assumed before anything was measured
CAUTION = 1.0  # decisions use acceptance estimates this many standard errors below the mean
PRIOR_SLOPE = 0.05  # t_verify(K) ~ t_verify(0) * (1 + PRIOR_SLOPE * K) until measured
OUTLIER = 2.0  # a K's cost estimate above this multiple of the prior model is suspect while it goes unmeasured
RELAX = 0.2  # per target-only step, how far such an estimate relaxes towards that ceiling
NO_PROPOSAL = -1  # the bucket of a draft call that proposed nothing
FREE_DRAFT = 0.02  # a draft whose K_max tokens cost < 2% of a target step is treated as free
TREE_DEPTH_WINDOW = 8  # a tree is drafted as deep as the deepest node kept by this many recent trims,
TREE_DEPTH_PROBE = 4  # and one level deeper every this many tree calls


@dataclass
class AcceptanceStats:
    """Acceptance per bucket: the first drafted token (a_1) and each next one given the previous one was
    accepted (a_n). Estimates shrink towards the parent's (shared across sessions), then towards the
    overall rate."""

    parent: AcceptanceStats | None = None
    decay: float = 0.97
    overall: DecayedRate = field(default_factory=DecayedRate)
    first: dict[int, DecayedRate] = field(default_factory=dict)
    after: dict[int, DecayedRate] = field(default_factory=dict)
    proposals: dict[int, float] = field(default_factory=dict)  # decayed count of proposals per bucket

    def record_proposal(self, bucket: int) -> None:
        """A draft call's proposal fell in `bucket` (NO_PROPOSAL when it had no tokens)."""
        for key in self.proposals:
            self.proposals[key] *= self.decay
        self.proposals[bucket] = self.proposals.get(bucket, 0.0) + 1.0
        if self.parent is not None:
            self.parent.record_proposal(bucket)

    def proposal_shares(self) -> dict[int, float]:
        """How often proposals fall in each bucket: this session's counts, shrunk towards the parent's."""
        prior = self.parent.proposal_shares() if self.parent is not None else {}
        total = sum(self.proposals.values()) + PRIOR_STRENGTH
        keys = set(prior) | set(self.proposals)
        return {key: (self.proposals.get(key, 0.0) + PRIOR_STRENGTH * prior.get(key, 0.0)) / total for key in keys}

    def record(self, bucket: int, drafted: int, accepted: int) -> None:
        """One verified block: positions up to the first rejection were observed."""
        if drafted <= 0:
            return
        observed = min(drafted, accepted + 1)
        self.overall.add(accepted, observed, self.decay)
        self.first.setdefault(bucket, DecayedRate()).add(float(accepted > 0), 1.0, self.decay)
        self.after.setdefault(bucket, DecayedRate()).add(max(0, accepted - 1), observed - 1, self.decay)
        if self.parent is not None:
            self.parent.record(bucket, drafted, accepted)

    def alpha(self) -> float:
        prior = self.parent.alpha() if self.parent is not None else PRIOR_ALPHA
        return self.overall.estimate(prior)

    def first_rate(self, bucket: int) -> float:
        """A cautious a_1 for proposals from `bucket` (see `_cautious`)."""
        return _cautious(*self._posterior("first", bucket))

    def next_rate(self, bucket: int) -> float:
        """A cautious a_n for proposals from `bucket`."""
        return _cautious(*self._posterior("after", bucket))

    def _posterior(self, kind: str, bucket: int) -> tuple[float, float]:
        """(mean, pseudo-trials behind it): this session's counts on top of the parent's estimate, which weighs
        as many trials as it has seen (between PRIOR_STRENGTH and MAX_PRIOR_STRENGTH), or on top of the
        overall rate with PRIOR_STRENGTH when there is no parent."""
        if self.parent is not None:
            prior, seen = self.parent._posterior(kind, bucket)
            strength = min(max(seen, PRIOR_STRENGTH), MAX_PRIOR_STRENGTH)
        else:
            prior, strength = self.alpha(), PRIOR_STRENGTH
        own = (self.first if kind == "first" else self.after).get(bucket, DecayedRate())
        return own.estimate(prior, strength), own.trials + strength


def _cautious(mean: float, trials: float) -> float:
    """The mean minus CAUTION standard errors: a bucket seen a few times, or only through priors, is not bet
    on until the evidence is in (shadow scoring brings it in without verifying)."""
    return max(0.0, mean - CAUTION * math.sqrt(mean * (1.0 - mean) / (trials + 1.0)))


def ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1.0 - weight) * old + weight * new


@dataclass
class Timings:
    """Step costs in milliseconds, EMAs; unmeasured values come from the parent (shared across sessions)."""

    parent: Timings | None = None
    weight: float = 0.2
    verify_by_k: dict[int, float] = field(default_factory=dict)  # verify compute for K drafted tokens
    verify_network: float | None = None  # verify round trip minus compute
    draft_call: float | None = None  # draft round trip minus per-token draft time
    draft_per_token: float | None = None

    def record_verify(self, k: int, compute_ms: float, network_ms: float) -> None:
        self.verify_by_k[k] = ema(self.verify_by_k.get(k), compute_ms, self.weight)
        if k == 0:
            self._relax(self.verify_by_k[0])
        self.verify_network = ema(self.verify_network, network_ms, self.weight)
        if self.parent is not None:
            self.parent.record_verify(k, compute_ms, network_ms)

    def _relax(self, target_only_ms: float) -> None:
        """A K that is no longer verified is no longer measured: an estimate inflated by one slow step (a cold
        first pass, a busy machine) would stop the controller from ever trying that K again. So while decoding
        target-only, estimates beyond OUTLIER x the prior model of the current step cost relax towards that
        ceiling; one real measurement puts them back where they belong. (A K that is merely dear, as blocks are
        here at ~1.6x a single token, stays dear: no retries that cannot pay.)"""
        for k, ms in self.verify_by_k.items():
            ceiling = OUTLIER * target_only_ms * (1 + PRIOR_SLOPE * k)
            if k > 0 and ms > ceiling:
                self.verify_by_k[k] = ms + RELAX * (ceiling - ms)

    def record_draft(self, proposed: int, draft_ms: float, network_ms: float) -> None:
        if proposed:  # a call that proposed nothing says nothing about the cost per token
            self.draft_per_token = ema(self.draft_per_token, draft_ms / proposed, self.weight)
        per_token = self.draft_per_token or 0.0
        self.draft_call = ema(self.draft_call, network_ms + max(0.0, draft_ms - per_token * proposed), self.weight)
        if self.parent is not None:
            self.parent.record_draft(proposed, draft_ms, network_ms)

    def measured_verify(self) -> dict[int, float]:
        inherited = self.parent.measured_verify() if self.parent is not None else {}
        return {**inherited, **self.verify_by_k}

    def _get(self, name: str) -> float:
        own = getattr(self, name)
        if own is not None:
            return float(own)
        return self.parent._get(name) if self.parent is not None else 0.0

    def network_ms(self) -> float:
        return self._get("verify_network")

    def draft_call_ms(self) -> float:
        return self._get("draft_call")

    def draft_ms_per_token(self) -> float:
        return self._get("draft_per_token")

    def verify_ms(self, k: int) -> float:
        """t_verify(k): measured, else interpolated between measured K, else extrapolated with the prior
        slope (1.0 when nothing was measured: only ratios matter then)."""
        known = self.measured_verify()
        if k in known:
            return known[k]
        if not known:
            return 1.0 + PRIOR_SLOPE * k
        below = [j for j in known if j < k]
        above = [j for j in known if j > k]
        if below and above:
            lo, hi = max(below), min(above)
            return known[lo] + (known[hi] - known[lo]) * (k - lo) / (hi - lo)
        if above:  # k below every measured K: scale the smallest measurement back with the prior slope
            hi = min(above)
            return known[hi] * (1 + PRIOR_SLOPE * k) / (1 + PRIOR_SLOPE * hi)
        lo = max(below)
        return known[lo] + known[lo] / (1 + PRIOR_SLOPE * lo) * PRIOR_SLOPE * (k - lo)


@dataclass
class CostPriors:
    """What sessions of one (target, draft, sampling) learned, shared by the orchestrator as the next
    sessions' starting point."""

    acceptance: AcceptanceStats = field(default_factory=AcceptanceStats)
    timings: Timings = field(default_factory=Timings)
    tree_hits: HitRates = field(default_factory=lambda: HitRates(decay=0.99))


def bucket_of(match_length: int) -> int:
    """Acceptance bucket of a proposal: 0 (model drafts), 1, 2, 3, 4, then 5-7, 8-15, 16-31, 32+ by their
    lower bound: copies in progress (long matches) and coincidences (short ones) behave differently."""
    if match_length <= 4:
        return match_length
    return next(lower for lower in (32, 16, 8, 5) if match_length >= lower)


def expected_tokens(first_rate: float, next_rate: float, k: int) -> float:
    """E(K): tokens committed by verifying k drafts, the target's own token included."""
    if k <= 0:
        return 1.0
    if next_rate >= 1.0:
        return 1.0 + first_rate * k
    return 1.0 + first_rate * (1.0 - next_rate**k) / (1.0 - next_rate)


class CostModelK:
    """The `cost` controller (see the module docstring)."""

    def __init__(
        self,
        k_start: int,
        k_max: int,
        probe_every: int = 16,
        priors: CostPriors | None = None,
        min_calls: int = 8,
        free_draft: bool | None = None,
        trees: bool = False,
    ) -> None:
        self.k_start = min(k_start, k_max)
        self.k_max = k_max
        self.probe_every = probe_every  # after this many steps without a draft call, call once anyway
        self.min_calls = min_calls  # calls made before the draft may be judged not worth calling
        # Known model-free drafts are free by construction: timing noise on a busy machine must not turn
        # them into "costly" drafts (that branch stops calling a draft whose first proposals missed).
        self.free_draft = free_draft
        # a session forgets faster than the shared priors: its content shifts (prose, then a copy)
        self.acceptance = AcceptanceStats(parent=priors.acceptance if priors else None, decay=0.9)
        self.timings = Timings(parent=priors.timings if priors else None)
        self.trees = trees  # the draft is asked for token trees (at most k_start deep), `trim_tree` picks the nodes
        self.tree_hits = HitRates(parent=priors.tree_hits if priors else None)
        self._pending_trees: list[PendingTree] = []
        self._tree_depths: deque[int] = deque(maxlen=TREE_DEPTH_WINDOW)  # deepest node each recent trim kept
        self._tree_asks = 0  # trees asked for since the trims started choosing their depth
        self.tree_saving: float | None = None  # EMA of what a tree call saved (ms), as predicted when trimmed
        self._pending: list[tuple[int, list[int], int]] = []  # proposals not yet scored: (position, tokens, bucket)
        self._start: int | None = None  # position of the first committed token seen
        self._output: list[int] = []  # committed tokens from _start on
        self.calls = 0
        self.skipped = 0

    # -- decisions ---------------------------------------------------------------------------------------
    def next_k(self) -> int:
        """Tokens to ask the draft for; 0 = a target-only step without a draft call."""
        known = self.timings.measured_verify()
        if not known:
            return self.k_start  # nothing measured anywhere yet: draft at the starting K
        if 0 not in known:
            return 0  # measure a target-only step once: every choice is relative to it
        k = self._tree_ask_size() if self.trees else self._ask_size()
        if k > 0:
            self.skipped = 0
            return k
        self.skipped += 1
        if self.skipped <= self._probe_interval():
            return 0
        self.skipped = 0  # probe: a call now and then keeps the estimates alive
        if self.trees:
            return self.k_start
        return self.k_max if self._draft_is_free() else min(2, self.k_max)

    def _tree_ask_size(self) -> int:
        """How deep to draft the next tree (its node count is trimmed, not asked): as deep as the deepest node
        the recent trims kept, and one level deeper every TREE_DEPTH_PROBE-th call, at most k_start (each level
        costs the draft a pass; a deeper level that pays is kept on such a call, and the depth grows). The call
        is skipped once trees have been seen to cost more than they save."""
        paid = self.calls < self.min_calls or self.tree_saving is None or self.tree_saving > 0
        if not paid:
            return 0
        if not self._tree_depths:
            return self.k_start
        self._tree_asks += 1
        deeper = self._tree_asks % TREE_DEPTH_PROBE == 0
        return max(1, min(self.k_start, max(self._tree_depths) + deeper))

    def _probe_interval(self) -> int:
        """Steps between probes: often enough that a cheap call is hardly ever skipped for long, at most
        `probe_every`; a probe should cost about 1% of the target-only time it interrupts."""
        calls_per_step = self.timings.draft_call_ms() / max(0.01 * self.timings.verify_ms(0), 1e-6)
        return max(1, min(self.probe_every, math.ceil(calls_per_step)))

    def _draft_is_free(self) -> bool:
        if self.free_draft is not None:
            return self.free_draft
        return self.timings.draft_ms_per_token() * self.k_max <= FREE_DRAFT * self.timings.verify_ms(0)

    def _ask_size(self) -> int:
        if self._draft_is_free():  # ask for the most and trim after seeing the proposal
            worth_it = self.calls < self.min_calls or self.expected_saving() > self.timings.draft_call_ms()
            return self.k_max if worth_it else 0
        a1, an = self.acceptance.first_rate(0), self.acceptance.next_rate(0)
        per_token, call = self.timings.draft_ms_per_token(), self.timings.draft_call_ms()
        return max(range(self.k_max + 1), key=lambda k: self.rate(a1, an, k, (call + k * per_token) if k else 0.0))

    def best_k(self, bucket: int, available: int) -> int:
        """The K in [0, available] with the highest predicted rate for a proposal from `bucket`."""
        a1, an = self.acceptance.first_rate(bucket), self.acceptance.next_rate(bucket)
        return max(range(available + 1), key=lambda k: self.rate(a1, an, k))

    def trim(self, tokens: Sequence[int], match_length: int, position: int) -> int:
        """How many of the proposed tokens (for positions `position` ..) to verify."""
        if tokens:  # asked for a tree, this draft answers chains: K is a chain's length again (an empty answer,
            self.trees = False  # as EAGLE's first of a session, says nothing)
        bucket = bucket_of(match_length)
        self.acceptance.record_proposal(bucket if tokens else NO_PROPOSAL)
        if not tokens:
            return 0
        self._pending.append((position, list(tokens), bucket))
        if not self.timings.measured_verify():
            return len(tokens)  # warm-up: measure what the starting K costs
        return self.best_k(bucket, len(tokens))

    def trim_tree(
        self, tokens: Sequence[int], parents: Sequence[int], logprobs: Sequence[float], position: int,
        call_ms: float = 0.0,
    ) -> list[int]:  # fmt: skip
        """Which nodes of a proposed tree (for positions `position` ..) to verify: the likeliest n, for the n
        with the highest predicted rate (see tree_cost.py); every node given, without path probabilities.
        `call_ms`: what the draft call cost (its round trip), for judging whether trees pay at all."""
        self.trees = True
        if len(logprobs) != len(tokens):
            return list(range(len(tokens)))
        paths = node_paths(tokens, parents)
        bins = [bin_of(lp) for lp in logprobs]
        if tokens:
            self._pending_trees.append(PendingTree(position, paths, bins))
        order = likeliest_first(logprobs, parents)
        if not self.timings.measured_verify():
            return order  # warm-up: measure what a whole tree costs
        expected = [1.0]
        for i in order:
            expected.append(expected[-1] + self.tree_hits.rate(bins[i]))
        network = self.timings.network_ms()
        best = max(range(len(order) + 1), key=lambda n: expected[n] / max(self.timings.verify_ms(n) + network, 1e-6))
        target_only_ms = self.timings.verify_ms(0) + network
        saving = expected[best] * target_only_ms - (self.timings.verify_ms(best) + network) - call_ms
        self.tree_saving = ema(self.tree_saving, saving, self.timings.weight)
        self._tree_depths.append(max((len(paths[i]) for i in order[:best]), default=0))
        return order[:best]

    def rate(self, first_rate: float, next_rate: float, k: int, draft_ms: float = 0.0) -> float:
        """Predicted tokens per millisecond when verifying k drafts that cost draft_ms to make."""
        step_ms = self.timings.verify_ms(k) + self.timings.network_ms() + draft_ms
        return expected_tokens(first_rate, next_rate, k) / max(step_ms, 1e-6)

    def expected_saving(self) -> float:
        """Milliseconds a free draft call is expected to save: over the buckets its proposals fall in, the
        time target-only decoding needs for the tokens the best K commits, minus that K's verify time."""
        target_only_ms = self.timings.verify_ms(0) + self.timings.network_ms()
        saving = 0.0
        for bucket, share in self.acceptance.proposal_shares().items():
            if bucket == NO_PROPOSAL:
                continue
            k = self.best_k(bucket, self.k_max)
            a1, an = self.acceptance.first_rate(bucket), self.acceptance.next_rate(bucket)
            step_ms = self.timings.verify_ms(k) + self.timings.network_ms()
            saving += share * (expected_tokens(a1, an, k) * target_only_ms - step_ms)
        return saving

    # -- learning ----------------------------------------------------------------------------------------
    def observe(self, step: StepObservation) -> None:
        self._learn_acceptance(step.position, step.committed)
        self.timings.record_verify(step.drafted, step.verify_ms, step.verify_network_ms)
        if step.k > 0:
            self.calls += 1
            self.timings.record_draft(step.proposed, step.draft_ms, step.draft_network_ms)

    def _learn_acceptance(self, position: int, committed: Sequence[int]) -> None:
        """Extend the committed sequence and score every proposal whose outcome it now decides."""
        if self._start is None:
            self._start = position
        if position != self._start + len(self._output):
            raise ValueError(f"committed tokens at {position}, expected {self._start + len(self._output)}")
        self._output.extend(committed)
        self._learn_tree_hits()
        still_open = []
        for start, tokens, bucket in self._pending:
            seen = self._output[start - self._start : start - self._start + len(tokens)]
            agreed = next((i for i, (a, b) in enumerate(zip(tokens, seen, strict=False)) if a != b), len(seen))
            if agreed < len(seen) or len(seen) == len(tokens):
                self.acceptance.record(bucket, len(tokens), agreed)
            else:
                still_open.append((start, tokens, bucket))
        self._pending = still_open

    def _learn_tree_hits(self) -> None:
        """Score every node of the pending trees that the committed output now decides."""
        assert self._start is not None
        counts: dict[int, tuple[int, int]] = {}
        still_open = []
        for tree in self._pending_trees:
            decided, rest = decide(tree, self._output[tree.position - self._start :])
            for index, (hits, nodes) in decided.items():
                total_hits, total = counts.get(index, (0, 0))
                counts[index] = (total_hits + hits, total + nodes)
            if rest is not None:
                still_open.append(rest)
        self._pending_trees = still_open
        if counts:
            self.tree_hits.record(counts)
