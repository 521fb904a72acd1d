"""Which nodes of a drafted token tree to verify: the `cost` controller's tree trim.

A tree draft (EAGLE) scores each node by its path probability under the draft, s = q(node and its ancestors).
Verifying a node costs the target one more position; the node commits one more token exactly when the target's
greedy path runs through it, so verifying a set S of nodes (closed under parents) commits on average

    E(S) = 1 + sum over i in S of P(hit_i)            (the target's own token included)

tokens, at a cost of t_verify(|S|) + t_network. The draft's probabilities are not the target's (a small head is
overconfident on some text, underconfident on other), so P(hit | s) is learned per bin of s: every proposed node
is scored once the committed tokens decide it, verified or not (a bin the trim stopped verifying stays measured).
A child is never likelier than its parent under the draft, so the n likeliest nodes are closed under parents; the
trim keeps the n that maximise E / cost, n = 0 (a target-only step) included. What a node costs is measured, so
the same rule verifies big trees where positions are cheap (a GPU) and small ones where they are not (this CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from specdec.orchestrator.rates import MAX_PRIOR_STRENGTH, PRIOR_STRENGTH, DecayedRate

# lower edges of the path-probability bins: finer where the trim's decisions fall (0.02 - 0.3 here)
BIN_EDGES = (0.8, 0.6, 0.45, 0.3, 0.22, 0.16, 0.12, 0.09, 0.07, 0.05, 0.035, 0.025, 0.015, 0.0)


def bin_of(logprob: float) -> int:
    p = math.exp(min(logprob, 0.0))
    return next(i for i, edge in enumerate(BIN_EDGES) if p >= edge)


def _bin_prior(index: int) -> float:
    """Before anything is measured, a node in a bin is taken to be as likely as the bin's middle says."""
    upper = 1.0 if index == 0 else BIN_EDGES[index - 1]
    return (upper + BIN_EDGES[index]) / 2


@dataclass
class HitRates:
    """P(hit | path-probability bin): this session's counts shrunk towards the parent's (shared across
    sessions), the parent's towards the draft's own probability."""

    parent: HitRates | None = None
    decay: float = 0.97  # per update of a bin (one step's decided nodes)
    bins: dict[int, DecayedRate] = field(default_factory=dict)

    def record(self, hits: dict[int, tuple[int, int]]) -> None:
        """One step's decided nodes: {bin: (hits, nodes)}."""
        for index, (hit, seen) in hits.items():
            self.bins.setdefault(index, DecayedRate()).add(hit, seen, self.decay)
        if self.parent is not None:
            self.parent.record(hits)

    def rate(self, index: int) -> float:
        return self._posterior(index)[0]

    def _posterior(self, index: int) -> tuple[float, float]:
        if self.parent is not None:
            prior, seen = self.parent._posterior(index)
            strength = min(max(seen, PRIOR_STRENGTH), MAX_PRIOR_STRENGTH)
        else:
            prior, strength = _bin_prior(index), PRIOR_STRENGTH
        own = self.bins.get(index, DecayedRate())
        return own.estimate(prior, strength), own.trials + strength


def node_paths(tokens: Sequence[int], parents: Sequence[int]) -> list[list[int]]:
    """Each node's tokens from the tree's root down to it (parents come before their children)."""
    paths: list[list[int]] = []
    for token, parent in zip(tokens, parents, strict=True):
        paths.append([*(paths[parent] if parent >= 0 else []), token])
    return paths


def likeliest_first(logprobs: Sequence[float], parents: Sequence[int]) -> list[int]:
    """Node indices by falling path probability (a parent before its children on ties): every prefix is a tree."""
    depth: list[int] = []
    for parent in parents:
        depth.append(1 if parent < 0 else depth[parent] + 1)
    return sorted(range(len(parents)), key=lambda i: (-logprobs[i], depth[i], i))


@dataclass
class PendingTree:
    """A proposed tree whose nodes the committed output has not all decided yet."""

    position: int  # of the tree's first level
    paths: list[list[int]]  # undecided nodes' tokens from the root
    bins: list[int]  # their bins


def decide(tree: PendingTree, output: Sequence[int]) -> tuple[dict[int, tuple[int, int]], PendingTree | None]:
    """Score the nodes of `tree` that `output` (committed tokens from tree.position on) decides: a node is a hit
    when the output begins with its path, a miss when it disagrees with it. Returns ({bin: (hits, nodes)}, the
    tree of the nodes still undecided or None)."""
    counts: dict[int, tuple[int, int]] = {}
    open_paths, open_bins = [], []
    for path, index in zip(tree.paths, tree.bins, strict=True):
        seen = output[: len(path)]
        agrees = all(a == b for a, b in zip(path, seen, strict=False))
        if agrees and len(seen) < len(path):
            open_paths.append(path)
            open_bins.append(index)
            continue
        hit, nodes = counts.get(index, (0, 0))
        counts[index] = (hit + agrees, nodes + 1)
    rest = PendingTree(tree.position, open_paths, open_bins) if open_paths else None
    return counts, rest
