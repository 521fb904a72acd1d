"""Sampled token trees: recursive rejection sampling (kernels.tree_rejection_sample) keeps the target's distribution,
and a chain is verified exactly as `rejection_sample` verifies it."""

from __future__ import annotations

import pytest
import torch

from specdec import kernels
from specdec.kernels.reference import PAD

V = 4


def _dist(gen: torch.Generator, *shape: int, sharp: float = 1.0) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape, V, generator=gen) * sharp, dim=-1)


def _sampled_trees(
    gen: torch.Generator, trials: int, p0: torch.Tensor, table: torch.Tensor, q0: torch.Tensor, q_table: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """`trials` trees as a draft builds them: 3 children of the root drawn from q0 without replacement, 2 below each
    drawn from q_table[their parent's token]; the target's rows: p0 at the root, table[token] below a first-level
    node, uniform below a second-level one (its bonus token is not looked at)."""
    first = torch.multinomial(q0.expand(trials, V), 3, replacement=False, generator=gen)  # [T, 3]
    second = torch.stack(
        [torch.multinomial(q_table[first[:, j]], 2, replacement=False, generator=gen) for j in range(3)], dim=1
    ).reshape(trials, 6)  # [T, 6] children of node 0, then 1, then 2
    tokens = torch.cat([first, second], dim=1)  # [T, 9]
    parents = torch.tensor([-1, -1, -1, 0, 0, 1, 1, 2, 2]).expand(trials, 9)
    q = torch.cat([q0.expand(trials, 3, V), q_table[first].repeat_interleave(2, dim=1)], dim=1)  # [T, 9, V]
    p = torch.cat([p0.expand(trials, 1, V), table[first], torch.full((trials, 6, V), 1 / V)], dim=1)  # [T, 10, V]
    uniforms = torch.rand(trials, 9, generator=gen)
    noise = torch.empty(trials, 10, V).exponential_(generator=gen)
    return p, q, tokens, parents, torch.full((trials,), 9), uniforms, noise


@pytest.mark.parametrize("case", ["random", "draft_is_target", "disjoint", "confidently_wrong"])
def test_the_first_two_tokens_are_distributed_as_the_targets(case: str) -> None:
    gen = torch.Generator().manual_seed(["random", "draft_is_target", "disjoint", "confidently_wrong"].index(case))
    p0, table = _dist(gen, sharp=2.0), _dist(gen, V, sharp=2.0)  # target: first token, second given the first
    p0[3] = 0.0  # a token the target never picks
    p0 /= p0.sum()
    if case == "random":
        q0, q_table = _dist(gen), _dist(gen, V)
    elif case == "draft_is_target":
        q0, q_table = p0.clone(), table.clone()
        q0[3] = 1e-3  # without replacement needs 3 tokens with q > 0
        q0 /= q0.sum()
    elif case == "disjoint":  # the draft likes what the target does not
        q0, q_table = (1.0 - p0) / (1.0 - p0).sum(), (1.0 - table) / (1.0 - table).sum(-1, keepdim=True)
    else:  # the draft's first child is nearly always token 3, which the target never picks: q_2, q_3 matter most
        q0 = torch.tensor([0.1, 0.1, 0.1, 0.7])
        q_table = q0.expand(V, V).clone()
    trials = 12_000
    p, q, tokens, parents, num, uniforms, noise = _sampled_trees(gen, trials, p0, table, q0, q_table)
    accepted, nodes, out = kernels.tree_rejection_sample(p, q, tokens, parents, num, uniforms, noise)
    assert kernels.last_backend() == "torch"
    x1 = out[:, 0]
    # the second token: from the tree when its first level was accepted, else the target's own next draw
    own = torch.multinomial(table[x1], 1, generator=gen).squeeze(1)
    x2 = torch.where(accepted >= 1, out[:, 1], own)
    joint = torch.zeros(V, V)
    joint.index_put_((x1, x2), torch.ones(trials), accumulate=True)
    expected = p0[:, None] * table  # [V, V]
    tv = 0.5 * float((joint / trials - expected).abs().sum())
    assert tv < 0.03, f"total variation {tv:.4f} from the target's joint distribution"
    assert int((x1 == 3).sum()) == 0  # never a token the target cannot produce
    for row in range(50):  # the output is the accepted path, then the final token
        a = int(accepted[row])
        path = nodes[row, :a].tolist()
        assert all(int(parents[row, c]) == (path[i - 1] if i else -1) for i, c in enumerate(path))
        assert out[row, :a].tolist() == [int(tokens[row, c]) for c in path]
        assert int(out[row, a]) >= 0 and out[row, a + 1 :].tolist() == [PAD] * (9 - a)
    if case == "draft_is_target":
        assert float((accepted >= 1).float().mean()) > 0.95  # q = p: the first child is accepted (almost) always


def test_a_chain_is_verified_exactly_as_rejection_sample() -> None:
    gen = torch.Generator().manual_seed(5)
    b, k, v = 64, 4, 6
    p = torch.softmax(torch.randn(b, k + 1, v, generator=gen), -1)
    q = torch.softmax(torch.randn(b, k, v, generator=gen), -1)
    drafts = torch.multinomial(q.reshape(-1, v), 1, generator=gen).reshape(b, k)
    num = torch.randint(0, k + 1, (b,), generator=gen)
    uniforms = torch.rand(b, k, generator=gen)
    noise = torch.empty(b, k + 1, v).exponential_(generator=gen)
    chain = torch.arange(-1, k - 1)[None].expand(b, k)
    accepted, nodes, out = kernels.tree_rejection_sample(p, q, drafts, chain, num, uniforms, noise)
    want_accepted, want_out = kernels.rejection_sample(p, q, drafts, num, uniforms, noise, backend="torch")
    assert accepted.tolist() == want_accepted.tolist() and out.tolist() == want_out.tolist()
    assert 0 < int(accepted.sum()) < int(num.sum())  # some accepted, some rejected
    assert all(nodes[r, : int(accepted[r])].tolist() == list(range(int(accepted[r]))) for r in range(b))


def test_sampled_trees_have_no_triton_kernel_and_say_so() -> None:
    args = (torch.ones(1, 1, 2) / 2, torch.zeros(1, 0, 2), torch.zeros(1, 0, dtype=torch.long),
            torch.zeros(1, 0, dtype=torch.long), torch.tensor([0]), torch.zeros(1, 0), torch.ones(1, 1, 2))  # fmt: skip
    with pytest.raises(kernels.KernelUnavailable, match="torch code only"):
        kernels.tree_rejection_sample(*args, backend="triton")
    accepted, _, out = kernels.tree_rejection_sample(*args)
    assert int(accepted[0]) == 0 and 0 <= int(out[0, 0]) < 2  # no nodes: the target's own draw
