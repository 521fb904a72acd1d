"""The acceptance kernels' contract: greedy equality, distribution preservation, determinism, dispatch."""

from __future__ import annotations

import pytest
import torch

from specdec import kernels
from specdec.kernels.reference import PAD
from specdec.sampling import draw_acceptance_randoms, make_generator


def logits_with_argmax(argmaxes: list[list[int]], vocab: int = 8) -> torch.Tensor:
    """[B, K+1, V] logits whose argmax at [b, i] is argmaxes[b][i]."""
    out = torch.randn(len(argmaxes), len(argmaxes[0]), vocab)
    for b, row in enumerate(argmaxes):
        for i, t in enumerate(row):
            out[b, i, t] = 10.0
    return out


def test_greedy_verify_accepts_the_matching_prefix_then_the_target_token() -> None:
    logits = logits_with_argmax([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    drafts = torch.tensor([[1, 2, 3], [1, 5, 3], [6, 2, 3]])
    accepted, out = kernels.greedy_verify(logits, drafts, torch.tensor([3, 3, 3]))
    assert accepted.tolist() == [3, 1, 0]
    assert out.tolist() == [[1, 2, 3, 4], [1, 2, PAD, PAD], [1, PAD, PAD, PAD]]


def test_greedy_verify_ragged_rows_and_k_zero() -> None:
    logits = logits_with_argmax([[1, 2, 3], [1, 2, 3]])
    drafts = torch.tensor([[1, 2], [1, 7]])  # row 1 drafted only one token; its second is padding
    accepted, out = kernels.greedy_verify(logits, drafts, torch.tensor([2, 1]))
    assert accepted.tolist() == [2, 1]
    assert out.tolist() == [[1, 2, 3], [1, 2, PAD]]
    accepted, out = kernels.greedy_verify(logits[:, :1], torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 0]))
    assert accepted.tolist() == [0, 0] and out.tolist() == [[1], [1]]


def test_greedy_verify_ties_take_the_first_index_and_ignore_minus_inf() -> None:
    logits = torch.full((1, 2, 5), float("-inf"))
    logits[0, 0, 2] = logits[0, 0, 4] = 1.0  # tie: HF greedy (torch.argmax) picks 2
    logits[0, 1, 3] = 0.0
    accepted, out = kernels.greedy_verify(logits, torch.tensor([[4]]), torch.tensor([1]))
    assert accepted.tolist() == [0] and out.tolist() == [[2, PAD]]
    accepted, out = kernels.greedy_verify(logits, torch.tensor([[2]]), torch.tensor([1]))
    assert accepted.tolist() == [1] and out.tolist() == [[2, 3]]


def test_auto_runs_the_torch_reference_on_cpu() -> None:
    kernels.greedy_verify(torch.zeros(1, 1, 4), torch.zeros(1, 0, dtype=torch.long), torch.tensor([0]))
    assert kernels.last_backend() == "torch"
    assert kernels.resolve_backend("auto", torch.device("cpu")) == "torch"


# --- rejection sampling: the committed tokens must be distributed exactly as the target's p ---

V, K, N = 6, 2, 40_000
POSITIONS = 3 * (K + 1) + 1  # three steps of at most K+1 tokens each


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def far_tables(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position target p[L, V] and draft q[L, V] with total variation >= 0.3 at every position."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(POSITIONS, V, generator=gen) * 3.0, dim=-1)
    # reversed_p gives p's probabilities in reverse rank order (the target's favourite gets the least)
    order = p.argsort(dim=1)
    reversed_p = torch.empty_like(p).scatter_(1, order, p.gather(1, order.flip(1)))
    q = 0.45 * p + 0.45 * reversed_p + 0.1 / V  # far (TV >= 0.3) yet accepted often enough to test bonuses
    for j in range(POSITIONS):
        assert tv(p[j], q[j]) >= 0.3, f"test tables too close at position {j}"
    return p, q


def simulate(
    p: torch.Tensor, q: torch.Tensor, one_hot: bool, steps: int = 3, seed: int = 0, n: int = N, backend: str = "torch"
):
    """Run `steps` speculative steps of K draft tokens for n independent rows with the batched kernel.

    Returns tokens[n, POSITIONS] (-1 where not generated) and per-step (start position, num_accepted)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.full((n, POSITIONS), -1, dtype=torch.long)
    start = torch.zeros(n, dtype=torch.long)  # committed length per row
    rows = torch.arange(n)
    history = []
    for _ in range(steps):
        pos = start[:, None] + torch.arange(K + 1)  # [N, K+1]
        target = p[pos]  # [N, K+1, V]
        q_rows = q[pos[:, :K]]  # [N, K, V]
        if one_hot:  # a deterministic draft (one-hot q) that proposes the target's second choice
            drafts = p[pos[:, :K]].argsort(dim=-1)[..., -2]  # [N, K]
            draft_probs = None
        else:
            drafts = torch.multinomial(q_rows.reshape(-1, V), 1, generator=gen).reshape(n, K)
            draft_probs = q_rows
        uniforms = torch.rand(n, K, generator=gen)
        noise = torch.empty(n, K + 1, V).exponential_(generator=gen)
        accepted, out = kernels.rejection_sample(
            target, draft_probs, drafts, torch.full((n,), K), uniforms, noise, backend=backend
        )
        assert kernels.last_backend() == backend
        for i in range(K + 1):
            keep = i <= accepted
            tokens[rows[keep], pos[keep, i]] = out[keep, i]
        history.append((start.clone(), accepted.clone()))
        start = start + accepted + 1
    return tokens, history


def one_hot_q(p: torch.Tensor, j: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(p[j].argsort()[-2], V).float()


def empirical(tokens: torch.Tensor) -> torch.Tensor:
    return torch.bincount(tokens, minlength=V).float() / len(tokens)


@pytest.mark.parametrize("one_hot", [False, True], ids=["dense-q", "one-hot-q"])
def test_rejection_sampling_preserves_the_target_distribution(one_hot: bool) -> None:
    p, q = far_tables(seed=3)
    tokens, history = simulate(p, q, one_hot)
    threshold = 0.02  # sampling noise at N = 40,000 and V = 6 is ~0.005 TV
    for j in range(3):  # every row has positions 0..2 after three steps
        emp = empirical(tokens[:, j])
        assert tv(emp, p[j]) < threshold, f"position {j}: TV to target {tv(emp, p[j]):.3f}"
        draft_dist = one_hot_q(p, j) if one_hot else q[j]
        assert tv(emp, draft_dist) > 0.2, f"position {j} looks like the draft's distribution"

    (_start1, accepted1), (start2, _), _ = history
    after_rejection = accepted1 < K  # the next step's first token follows a recovered token
    after_bonus = accepted1 == K
    assert after_rejection.sum() > 1000 and after_bonus.sum() > (1000 if not one_hot else 100)
    for mask, name in [(after_rejection, "after a rejection"), (after_bonus, "after a bonus token")]:
        for c in start2[mask].unique().tolist():
            rows = mask & (start2 == c)
            if rows.sum() < 1000:
                continue
            emp = empirical(tokens[rows, c])
            assert tv(emp, p[c]) < 0.04, f"first token {name} at position {c}: TV {tv(emp, p[c]):.3f}"
    # the bonus token itself (position K when all K were accepted) is a fresh draw from p
    emp = empirical(tokens[after_bonus, K])
    assert tv(emp, p[K]) < (0.04 if not one_hot else 0.15)
    # the recovered token at a first-position rejection follows norm(max(0, p - q))
    rejected_first = accepted1 == 0
    q0 = one_hot_q(p, 0) if one_hot else q[0]
    residual = (p[0] - q0).clamp_min(0)
    emp = empirical(tokens[rejected_first, 0])
    assert tv(emp, residual / residual.sum()) < 0.04


def test_seeded_randoms_repeat_exactly_and_depend_on_the_position_only() -> None:
    cpu = torch.device("cpu")

    def draw(seed: int, position: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return draw_acceptance_randoms(make_generator(0, cpu), seed, position, k, 50, cpu)

    a, b, c = draw(7, 10, 4), draw(7, 10, 4), draw(8, 10, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # positions 12.. drawn as part of a block at 10 or a block at 12: the same numbers
    later = draw(7, 12, 2)
    assert torch.equal(a[0][2:], later[0]) and torch.equal(a[1][2:], later[1])
    p, q = far_tables(seed=3)
    t1, _ = simulate(p, q, one_hot=False, seed=5)
    t2, _ = simulate(p, q, one_hot=False, seed=5)
    assert torch.equal(t1, t2)


def test_identical_draft_and_target_always_accept() -> None:
    p, _ = far_tables(seed=4)
    _tokens, history = simulate(p, p.clone(), one_hot=False, steps=1)
    assert bool((history[0][1] == K).all())


def test_one_hot_none_equals_explicit_one_hot_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.softmax(torch.randn(4, K + 1, V, generator=gen), -1)
    drafts = torch.randint(0, V, (4, K), generator=gen)
    uniforms = torch.rand(4, K, generator=gen)
    noise = torch.empty(4, K + 1, V).exponential_(generator=gen)
    explicit = torch.nn.functional.one_hot(drafts, V).float()
    num = torch.tensor([K, K, 1, 0])
    a = kernels.rejection_sample(target, None, drafts, num, uniforms, noise)
    b = kernels.rejection_sample(target, explicit, drafts, num, uniforms, noise)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
