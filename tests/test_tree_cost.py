"""The `cost` controller's tree trim (orchestrator/tree_cost.py) on synthetic greedy sessions: which nodes it
verifies, what it learns from nodes it did not verify, and when it stops calling a draft that does not pay."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from specdec.orchestrator.cost_model import CostModelK, CostPriors
from specdec.orchestrator.k_control import StepObservation, make_controller
from specdec.orchestrator.streams import DraftBlock
from specdec.orchestrator.tree_cost import BIN_EDGES, PendingTree, bin_of, decide, likeliest_first, node_paths

# the draft's own probability of its 1st, 2nd, 3rd child, and how often each really is the target's token
DRAFT_PROBS = (0.7, 0.2, 0.06)
TRUE_RATES = (0.45, 0.1, 0.02)  # overconfident: the trim has to learn this


def random_tree(rng: random.Random, n: int) -> tuple[list[int], list[float]]:
    """A tree of n nodes (parents first) with path log-probabilities that never grow from parent to child."""
    parents, logprobs = [], []
    for i in range(n):
        parent = rng.randrange(-1, i)
        parents.append(parent)
        logprobs.append((logprobs[parent] if parent >= 0 else 0.0) + math.log(rng.uniform(0.05, 1.0)))
    return parents, logprobs


def test_every_prefix_of_likeliest_first_is_a_tree() -> None:
    rng = random.Random(0)
    for _ in range(200):
        parents, logprobs = random_tree(rng, rng.randrange(1, 20))
        order = likeliest_first(logprobs, parents)
        assert sorted(order) == list(range(len(parents)))
        for n in range(len(order) + 1):
            kept = set(order[:n])
            assert all(parents[i] in kept for i in kept if parents[i] >= 0)
            block = DraftBlock(list(range(100, 100 + len(parents))), parents=parents, path_logprobs=logprobs)
            sub = block.subtree(order[:n])  # renumbered, still parents first
            assert all(-1 <= p < j for j, p in enumerate(sub.parents))
            paths = node_paths(block.tokens, block.parents)
            assert sorted(map(tuple, node_paths(sub.tokens, sub.parents))) == sorted(tuple(paths[i]) for i in kept)


def test_nodes_are_decided_by_the_committed_output() -> None:
    # root children 5 (bin of p=.7) and 6 (p=.2); 5's children 7 and 8
    paths = node_paths([5, 6, 7, 8], [-1, -1, 0, 0])
    assert paths == [[5], [6], [5, 7], [5, 8]]
    tree = PendingTree(10, paths, [0, 1, 2, 3])
    counts, rest = decide(tree, [5])  # depth 1 decided; 5's children still open
    assert counts == {0: (1, 1), 1: (0, 1)}
    assert rest is not None and rest.paths == [[5, 7], [5, 8]]
    counts, rest = decide(rest, [5, 8, 9])
    assert counts == {2: (0, 1), 3: (1, 1)} and rest is None
    counts, rest = decide(PendingTree(0, [[5, 7]], [4]), [6])  # the parent missed: decided at once
    assert counts == {4: (0, 1)} and rest is None
    assert [bin_of(math.log(p)) for p in (1.0, 0.8, 0.79, 0.05, 0.001)] == [0, 0, 1, BIN_EDGES.index(0.05), 13]


class TreeSession:
    """A synthetic greedy session with a tree draft: each node has DRAFT_PROBS-scored children of which the one
    that is the target's token is drawn with TRUE_RATES (none of them otherwise); trees are `depth` deep with the
    `nodes` likeliest nodes, as EAGLE builds them. Times are simulated: `cost(n)` to verify n nodes."""

    def __init__(self, controller: CostModelK, cost: Callable[[int], float], call_ms: float = 8.0,
                 nodes: int = 12, seed: int = 0, rates: tuple[float, ...] = TRUE_RATES, level_ms: float = 0.0,
                 ) -> None:  # fmt: skip
        self.controller, self.cost, self.call_ms, self.nodes = controller, cost, call_ms, nodes
        self.level_ms = level_ms  # what each level of a tree adds to the draft call
        self.asked: list[int] = []  # the depth asked for at each step (0: no draft call)
        self.rates = rates
        self.rng = random.Random(seed)
        self.truth = [self.rng.randrange(1000) for _ in range(20_000)]
        self.position = 0
        self.elapsed_ms = 0.0
        self.verified: list[int] = []

    def tree(self, depth: int) -> tuple[list[int], list[int], list[float]]:
        nodes: list[tuple[int, int, float, bool]] = []  # (token, parent, logprob, on the target's path)
        frontier = [(-1, 0.0, True)]
        for level in range(depth):
            grown = []
            for parent, logprob, on_path in frontier:
                u, right = self.rng.random(), None
                if on_path:
                    cumulative = 0.0
                    for j, rate in enumerate(self.rates):
                        cumulative += rate
                        if u < cumulative:
                            right = j
                            break
                for j, q in enumerate(DRAFT_PROBS):
                    token = self.truth[self.position + level] if j == right else 1000 + len(nodes)
                    nodes.append((token, parent, logprob + math.log(q), j == right))
                    grown.append((len(nodes) - 1, logprob + math.log(q), j == right))
            frontier = sorted(grown, key=lambda g: -g[1])[:3]
        chosen = sorted(sorted(range(len(nodes)), key=lambda i: -nodes[i][2])[: self.nodes])
        index = {node: i for i, node in enumerate(chosen)}
        parents = [index[nodes[i][1]] if nodes[i][1] >= 0 else -1 for i in chosen]
        return [nodes[i][0] for i in chosen], parents, [nodes[i][2] for i in chosen]

    def step(self) -> None:
        c = self.controller
        k = c.next_k()
        self.asked.append(k)
        call_ms = self.call_ms + self.level_ms * k if k else 0.0
        block = DraftBlock()
        if k:
            tokens, parents, logprobs = self.tree(k)
            block = DraftBlock(tokens, parents=parents, path_logprobs=logprobs)
            block = block.subtree(c.trim_tree(tokens, parents, logprobs, self.position, call_ms))
        accepted, node = 0, -1
        while True:  # walk the target's greedy path down the verified tree
            want = self.truth[self.position + accepted]
            child = next((i for i, p in enumerate(block.parents) if p == node and block.tokens[i] == want), None)
            if child is None:
                break
            accepted, node = accepted + 1, child
        committed = tuple(self.truth[self.position : self.position + accepted + 1])
        verify_ms = self.cost(len(block.tokens))
        self.elapsed_ms += verify_ms + 0.5 + call_ms
        self.verified.append(len(block.tokens))
        c.observe(StepObservation(k, len(block.tokens), len(block.tokens), accepted, call_ms,
                                  verify_ms, 0.0, 0.5, position=self.position, committed=committed))  # fmt: skip
        self.position += len(committed)

    def rate(self, steps: int) -> float:
        start, started_ms = self.position, self.elapsed_ms
        for _ in range(steps):
            self.step()
        return (self.position - start) / (self.elapsed_ms - started_ms)


def cpu_cost(n: int) -> float:
    """This CPU's shape: 54 ms for the target's own token, ~4.5 ms more per verified node."""
    return 54.0 + 4.5 * n


def gpu_cost(n: int) -> float:
    """A GPU's: positions nearly free."""
    return 20.0 + 0.05 * n


def trees_controller(priors: CostPriors | None = None) -> CostModelK:
    controller = make_controller("cost", 3, 8, priors, free_draft=False, trees=True)
    assert isinstance(controller, CostModelK)
    return controller


def test_the_trim_verifies_what_pays_and_beats_whole_trees() -> None:
    cpu = TreeSession(trees_controller(), cpu_cost)
    cpu.rate(200)  # learning
    trimmed_rate = cpu.rate(400)
    late = cpu.verified[-400:]
    assert 1 <= sum(late) / len(late) < 8  # a handful of the 12 nodes: the likeliest, worth ~4.5 ms each
    whole = TreeSession(make_controller("fixed", 3, 8, trees=True), cpu_cost)  # type: ignore[arg-type]
    assert trimmed_rate > 1.05 * whole.rate(400)
    # what it learned is the target's rate, not the draft's claim (p = .7 nodes hit .45 of the time)
    assert abs(cpu.controller.tree_hits.rate(bin_of(math.log(0.7))) - 0.45) < 0.1
    gpu = TreeSession(trees_controller(), gpu_cost)
    gpu.rate(200)
    assert sum(gpu.verified[-100:]) / 100 >= max(9, 2 * sum(late) / len(late))  # positions nearly free


def test_nodes_it_stops_verifying_are_still_learned() -> None:
    session = TreeSession(trees_controller(), cpu_cost)
    session.rate(300)
    deep = bin_of(math.log(0.7 * 0.7 * 0.2))  # a third-level node below two likely parents: hardly ever verified
    hits = session.controller.tree_hits.bins[deep]
    assert hits.trials > 50  # scored from the committed output, verified or not
    assert hits.hits / hits.trials < 0.05  # .45 * .45 * .1 ~ .02: far below its bin's prior (~.1)


def test_a_tree_draft_that_never_hits_is_not_called_but_probed() -> None:
    session = TreeSession(trees_controller(), cpu_cost, call_ms=30.0, rates=(0.0, 0.0, 0.0))
    session.rate(60)
    asked = [session.controller.next_k() for _ in range(40)]
    assert asked.count(0) >= 30 and 3 in asked  # skipped, with a probe now and then at the trees' depth
    priors = CostPriors()  # what the sessions learned is shared: the next session starts from it
    TreeSession(trees_controller(priors), cpu_cost).rate(100)
    assert trees_controller(priors).tree_hits.rate(bin_of(math.log(0.7))) < DRAFT_PROBS[0] - 0.1


class FullDepth(CostModelK):
    """The cost controller as it was: trees always drafted k_start deep (only their node count trimmed)."""

    def _tree_ask_size(self) -> int:
        return self.k_start if super()._tree_ask_size() else 0


def test_trees_are_drafted_as_deep_as_the_trim_verifies() -> None:
    """Each level costs the draft a pass (3 ms here): where verified positions are dear the trim keeps shallow
    nodes, so trees are drafted shallower (one level deeper now and then), which pays; when the draft starts to
    hit more the kept nodes deepen and so do the trees; where positions are nearly free the full depth is kept."""
    deep = dict(k_start=6, k_max=8, free_draft=False, trees=True)

    def session(controller: CostModelK, seed: int) -> TreeSession:
        return TreeSession(controller, cpu_cost, call_ms=2.0, level_ms=3.0, seed=seed)

    def mean(depths: list[int]) -> float:
        asked = [d for d in depths if d]  # 0: a skipped call
        return sum(asked) / len(asked)

    adaptive = [session(CostModelK(**deep), seed) for seed in range(3)]  # type: ignore[arg-type]
    full = [session(FullDepth(**deep), seed) for seed in range(3)]  # type: ignore[arg-type]
    for s in adaptive + full:
        s.rate(200)
    adaptive_rate = sum(s.rate(400) for s in adaptive)
    full_rate = sum(s.rate(400) for s in full)
    for s in adaptive:
        assert mean(s.asked[-400:]) <= 3.2 and {2, 3} <= set(s.asked[-400:])  # mostly 2-3 of the 6 levels
    assert all(d in (0, 6) for s in full for d in s.asked)
    assert adaptive_rate > 1.08 * full_rate  # measured: 1.13
    for s in adaptive:  # the draft now nearly always has the target's token first: deeper nodes are kept
        before = mean(s.asked[-100:])
        s.rates = (0.97, 0.02, 0.005)
        s.rate(150)
        after = mean(s.asked[-100:])
        assert after >= 4.0 and after >= before + 0.6  # measured: 2.8-3.6 -> 4.25
    gpu = TreeSession(CostModelK(**deep), gpu_cost, call_ms=2.0, level_ms=0.3)  # type: ignore[arg-type]
    gpu.rate(200)
    assert sum(d == 6 for d in gpu.asked[-100:]) >= 90  # deep nodes are verified: they keep being drafted
