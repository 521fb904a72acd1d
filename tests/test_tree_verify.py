"""Tree verification: the torch kernel against a brute-force walk, and a chain against `greedy_verify`."""

from __future__ import annotations

import random

import pytest
import torch

from specdec import kernels
from specdec.kernels.reference import PAD


def _random_tree(rng: random.Random, n: int, vocab: int) -> tuple[list[int], list[int]]:
    """n nodes, parents before children; sibling tokens distinct (as a drafter proposes them)."""
    tokens: list[int] = []
    parents: list[int] = []
    for i in range(n):
        choices: list[int] = []
        while not choices:  # a parent with a token left for one more child
            parent = rng.randrange(-1, i)
            siblings = {tokens[j] for j in range(i) if parents[j] == parent}
            choices = [t for t in range(vocab) if t not in siblings]
        parents.append(parent)
        tokens.append(rng.choice(choices))
    return tokens, parents


def _walk(argmax: list[int], tokens: list[int], parents: list[int]) -> tuple[list[int], int]:
    """The accepted path by following the target: at each node, the child holding the target's token."""
    path: list[int] = []
    node = -1
    while True:
        child = next((i for i in range(len(tokens)) if parents[i] == node and tokens[i] == argmax[node + 1]), None)
        if child is None:
            return path, argmax[node + 1]
        path.append(child)
        node = child


@pytest.mark.parametrize("seed", range(6))
def test_tree_verify_follows_the_targets_argmax_down_the_tree(seed: int) -> None:
    rng = random.Random(seed)
    b, n, vocab = 5, 9, 4  # a small vocabulary: long accepted paths happen often
    sizes = [rng.randrange(0, n + 1) for _ in range(b)]
    tokens = torch.zeros(b, n, dtype=torch.long)
    parents = torch.full((b, n), -1, dtype=torch.long)
    for row, size in enumerate(sizes):
        t, p = _random_tree(rng, size, vocab)
        tokens[row, :size], parents[row, :size] = torch.tensor(t, dtype=torch.long), torch.tensor(p, dtype=torch.long)
    logits = torch.randn(b, n + 1, vocab, generator=torch.Generator().manual_seed(seed))
    logits[0, 0, 2] = float("-inf")  # -inf logits never win
    accepted, nodes, out = kernels.tree_greedy_verify(logits, tokens, parents, torch.tensor(sizes))
    assert kernels.last_backend() == "torch"
    argmax = logits.argmax(-1)
    for row, size in enumerate(sizes):
        path, final = _walk(argmax[row].tolist(), tokens[row, :size].tolist(), parents[row, :size].tolist())
        a = len(path)
        assert int(accepted[row]) == a
        assert nodes[row].tolist() == path + [PAD] * (n - a)
        assert out[row].tolist() == [int(tokens[row, i]) for i in path] + [final] + [PAD] * (n - a)


def test_a_chain_is_verified_exactly_as_greedy_verify() -> None:
    gen = torch.Generator().manual_seed(3)
    b, k, vocab = 6, 5, 3
    logits = torch.randn(b, k + 1, vocab, generator=gen)
    drafts = torch.randint(0, vocab, (b, k), generator=gen)
    drafts[0] = logits[0, :k].argmax(-1)  # all accepted: the bonus token
    num_draft = torch.tensor([5, 5, 3, 0, 1, 4])
    chain = torch.arange(-1, k - 1)[None].expand(b, k)
    accepted, nodes, out = kernels.tree_greedy_verify(logits, drafts, chain, num_draft)
    expected_accepted, expected_out = kernels.greedy_verify(logits, drafts, num_draft)
    assert accepted.tolist() == expected_accepted.tolist()
    assert out.tolist() == expected_out.tolist()
    assert int(accepted[0]) == k and nodes[0].tolist() == list(range(k))


def test_tree_verify_with_no_nodes_returns_the_targets_token() -> None:
    logits = torch.tensor([[[0.0, 2.0, 1.0]]])
    accepted, nodes, out = kernels.tree_greedy_verify(
        logits, torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long), torch.tensor([0])
    )
    assert accepted.tolist() == [0] and nodes.shape == (1, 0) and out.tolist() == [[1]]


def test_tree_verify_on_cpu_runs_the_torch_reference() -> None:
    args = (torch.zeros(1, 1, 2), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long),
            torch.tensor([0]))  # fmt: skip
    kernels.tree_greedy_verify(*args)
    assert kernels.last_backend() == "torch"  # auto: Triton only for CUDA tensors (tests/test_triton_kernels.py)
