"""Triton kernels under the CPU interpreter (TRITON_INTERPRET=1) against the torch references: exact equality.

Needs Triton. In CI (CI set) a missing Triton fails these tests; on a developer laptop it skips them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random

import pytest
import torch

from specdec import kernels
from specdec.kernels import reference
from tests.test_kernels import K as SIM_K
from tests.test_kernels import empirical, far_tables, simulate, tv

if importlib.util.find_spec("triton") is None:
    if os.environ.get("CI"):
        raise RuntimeError("Triton is required in CI for the kernel tests (pip install -e '.[test]')")
    pytest.skip("Triton is not installed", allow_module_level=True)

assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets TRITON_INTERPRET=1 before Triton loads"


def both(name: str, *args: object) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    triton_out = getattr(kernels, name)(*args, backend="triton")
    assert kernels.last_backend() == "triton"
    return triton_out, getattr(reference, name)(*args)


def assert_same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert a[0].tolist() == b[0].tolist(), f"num_accepted {a[0].tolist()} vs {b[0].tolist()}"
    assert a[1].tolist() == b[1].tolist(), f"tokens {a[1].tolist()} vs {b[1].tolist()}"


def greedy_case(b: int, k: int, v: int, seed: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k + 1, v, generator=gen).to(dtype)
    drafts = logits[:, :k].float().argmax(-1)  # all accepted ...
    flip = torch.rand(b, k, generator=gen) < 0.3  # ... except where flipped
    drafts = torch.where(flip, (drafts + 1) % v, drafts)
    num_draft = torch.randint(0, k + 1, (b,), generator=gen)
    return logits, drafts, num_draft


@pytest.mark.parametrize(("b", "k", "v"), [(1, 1, 7), (1, 8, 50), (6, 4, 1500), (3, 0, 64), (9, 3, 2049)])
def test_greedy_verify_matches_the_reference(b: int, k: int, v: int) -> None:
    for seed in range(3):
        assert_same(*both("greedy_verify", *greedy_case(b, k, v, seed)))


def test_greedy_verify_all_none_ties_and_minus_inf() -> None:
    v = 3000  # several BLOCK-wide tiles: a tie across tiles must resolve to the lower index
    logits = torch.full((3, 3, v), float("-inf"))
    logits[:, :, 5] = 1.0
    logits[:, :, 2500] = 1.0  # tie with index 5 in a later tile
    logits[1, 1, 2999] = 2.0
    drafts = torch.tensor([[5, 5], [5, 5], [7, 5]])
    out = both("greedy_verify", logits, drafts, torch.tensor([2, 2, 2]))
    assert_same(*out)
    assert out[0][0].tolist() == [2, 1, 0]
    assert out[0][1].tolist() == [[5, 5, 5], [5, 2999, -1], [5, -1, -1]]


def test_greedy_verify_bfloat16_logits() -> None:
    assert_same(*both("greedy_verify", *greedy_case(4, 4, 300, seed=11, dtype=torch.bfloat16)))


def sampling_case(b: int, k: int, v: int, seed: int, mode: str):
    """Random p, q and draws. mode: "far" (rejections), "same" (q = p: all accepted), "masked" (top-k zeros)."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(b, k + 1, v, generator=gen) * 2, -1)
    q = torch.softmax(torch.randn(b, k, v, generator=gen) * 2, -1)
    if mode == "same":
        q = p[:, :k].clone()
    if mode == "masked":  # top-4 truncated distributions, as top-k sampling makes them
        for t in (p, q):
            kth = t.topk(min(4, v), -1).values[..., -1:]
            t.masked_fill_(t < kth, 0.0)
            t.div_(t.sum(-1, keepdim=True))
        q = torch.where(q > 0, q, 0.0)
    drafts = torch.multinomial(q.reshape(-1, v), 1, generator=gen).reshape(b, k) if k else torch.zeros(b, 0).long()
    num_draft = torch.randint(0, k + 1, (b,), generator=gen)
    uniforms = torch.rand(b, k, generator=gen)
    noise = torch.empty(b, k + 1, v).exponential_(generator=gen)
    return p, q, drafts, num_draft, uniforms, noise


@pytest.mark.parametrize("mode", ["far", "same", "masked"])
@pytest.mark.parametrize(("b", "k", "v"), [(1, 1, 5), (1, 8, 40), (6, 4, 1500), (3, 0, 64)])
@pytest.mark.parametrize("one_hot", [False, True], ids=["dense-q", "one-hot-q"])
def test_rejection_sample_matches_the_reference(b: int, k: int, v: int, mode: str, one_hot: bool) -> None:
    for seed in range(2):
        p, q, drafts, num_draft, uniforms, noise = sampling_case(b, k, v, seed, mode)
        assert_same(*both("rejection_sample", p, None if one_hot else q, drafts, num_draft, uniforms, noise))


@pytest.mark.parametrize("mode", ["far", "same", "masked"])
@pytest.mark.parametrize(("split", "block"), [(1, 16), (2, 16), (5, 16), (7, 32), (64, 16)])
def test_rejection_sample_split_rows_match_the_reference(mode: str, split: int, block: int) -> None:
    """The final row split over several programs (partials combined by the row's last program) picks the same
    token as one program and the reference: small tiles make many tiles and slices of a short row."""
    from specdec.kernels import triton_kernels

    for seed in range(2):
        p, q, drafts, num_draft, uniforms, noise = sampling_case(5, 4, 203, seed, mode)
        got = triton_kernels.rejection_sample(p, q, drafts, num_draft, uniforms, noise, split=split, block=block)
        assert_same(got, reference.rejection_sample(p, q, drafts, num_draft, uniforms, noise))


@pytest.mark.parametrize("split", [1, 3])
def test_rejection_sample_with_some_one_hot_q_rows(split: int) -> None:
    """Rows of q that are one-hot on their draft token (a deterministic draft inside a sampled block) are tested by
    their race, in order, among the other positions' ratio tests."""
    from specdec.kernels import triton_kernels

    for seed in range(6):
        p, q, drafts, _, uniforms, noise = sampling_case(4, 6, 97, seed, "far")
        gen = torch.Generator().manual_seed(100 + seed)
        one_hot = torch.rand(4, 6, generator=gen) < 0.5  # [B, K]
        q = torch.where(one_hot[..., None], torch.nn.functional.one_hot(drafts, 97).float(), q)
        p = (p + torch.nn.functional.one_hot(torch.cat([drafts, drafts[:, :1]], 1), 97) * 3.0).softmax(-1)
        full = torch.full((4,), 6)
        got = triton_kernels.rejection_sample(p, q, drafts, full, uniforms, noise, split=split, block=32)
        assert_same(got, reference.rejection_sample(p, q, drafts, full, uniforms, noise))


@pytest.mark.parametrize("split", [1, 3])
def test_an_empty_residual_falls_back_to_the_target_race(split: int) -> None:
    """q == p with u = 1 rejects although the residual max(0, p - q) is empty: both backends race on p instead."""
    from specdec.kernels import triton_kernels

    p, _, drafts, _, _, noise = sampling_case(3, 2, 150, seed=4, mode="far")
    q = p[:, :2].clone()
    ones = torch.ones(3, 2)
    full = torch.full((3,), 2)
    got = triton_kernels.rejection_sample(p, q, drafts, full, ones, noise, split=split, block=32)
    want = reference.rejection_sample(p, q, drafts, full, ones, noise)
    assert_same(got, want)
    assert want[0].tolist() == [0, 0, 0]
    assert want[1][:, 0].tolist() == (p[:, 0] / noise[:, 0]).argmax(-1).tolist()


def test_rejection_sample_ties_across_slices_pick_the_lowest_index() -> None:
    """Equal race values in different slices: the lower slice's index wins, as torch.argmax."""
    from specdec.kernels import triton_kernels

    v = 96
    p = torch.full((2, 2, v), 1.0 / v)  # uniform p: the race is decided by the noise alone
    noise = torch.full((2, 2, v), 2.0)
    noise[:, :, [10, 50, 90]] = 0.5  # three equal winners in three slices of 32
    q = torch.full((2, 1, v), 1.0 / v)
    drafts = torch.tensor([[3], [3]])
    uniforms = torch.tensor([[0.5], [0.99]])
    for split in (1, 3):
        got = triton_kernels.rejection_sample(
            p, q, drafts, torch.tensor([1, 0]), uniforms, noise, split=split, block=32
        )
        want = reference.rejection_sample(p, q, drafts, torch.tensor([1, 0]), uniforms, noise)
        assert_same(got, want)
        assert got[1][1].tolist() == [10, -1]  # no draft: the bonus race winner at the lowest tied index


def test_rejection_sample_all_accepted_and_none_accepted() -> None:
    p, q, drafts, _, uniforms, noise = sampling_case(4, 3, 50, seed=5, mode="same")
    full = torch.full((4,), 3)
    out = both("rejection_sample", p, q, drafts, full, uniforms, noise)
    assert_same(*out)
    assert out[0][0].tolist() == [3, 3, 3, 3]  # q = p: always accepted, then a bonus token
    never = torch.ones_like(uniforms) * 0.999999
    p_low = p.clone()
    p_low.scatter_(2, torch.cat([drafts, drafts[:, :1]], 1)[..., None], 1e-9)  # the drafts are unlikely
    p_low = p_low / p_low.sum(-1, keepdim=True)
    out = both("rejection_sample", p_low, q, drafts, full, never, noise)
    assert_same(*out)
    assert out[0][0].tolist() == [0, 0, 0, 0]


def test_triton_rejection_sampling_preserves_the_distribution() -> None:
    p, q = far_tables(seed=3)
    tokens, history = simulate(p, q, one_hot=False, n=1000, backend="triton")  # the interpreter is slow
    reference_tokens, _ = simulate(p, q, one_hot=False, n=1000, backend="torch")
    assert torch.equal(tokens, reference_tokens)  # same randoms, same tokens, three steps deep
    for j in range(3):  # sampling noise at 1,000 rows over 6 tokens is ~0.03 TV
        assert tv(empirical(tokens[:, j]), p[j]) < 0.08
    assert int((history[0][1] == SIM_K).sum()) > 30  # bonus tokens happened


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert kernels.resolve_backend("auto", cpu) == "torch"  # auto uses Triton only on CUDA
    assert kernels.resolve_backend("triton", cpu) == "triton"  # the interpreter makes it runnable
    monkeypatch.setenv("SPECDEC_KERNELS", "triton")
    assert kernels.resolve_backend("auto", cpu) == "triton"
    monkeypatch.setenv("SPECDEC_KERNELS", "torch")
    assert kernels.resolve_backend("auto", cpu) == "torch"
    monkeypatch.delenv("SPECDEC_KERNELS")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(kernels.KernelUnavailable, match="CUDA device or TRITON_INTERPRET"):
        kernels.greedy_verify(torch.zeros(1, 1, 4), torch.zeros(1, 0, dtype=torch.long), torch.tensor([0]), "triton")


class _BrokenTriton:
    @staticmethod
    def greedy_verify(*args: object) -> None:
        raise RuntimeError("compilation failed")


def test_auto_falls_back_once_with_a_log_line(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """Pretend to be on CUDA with a Triton that fails: auto logs once, then stays on torch."""
    monkeypatch.setattr(kernels, "_triton_module", lambda device: (_BrokenTriton, ""))
    monkeypatch.setattr(kernels, "_triton_failed", None)
    cuda = torch.device("cuda")
    args = (torch.zeros(1, 1, 4), torch.zeros(1, 0, dtype=torch.long), torch.tensor([0]))
    with caplog.at_level(logging.WARNING, logger="specdec.kernels"):
        assert kernels.resolve_backend("auto", cuda) == "triton"
        kernels._dispatch("greedy_verify", "auto", cuda, args)
        assert kernels.last_backend() == "torch"
        assert kernels.resolve_backend("auto", cuda) == "torch"
        kernels._dispatch("greedy_verify", "auto", cuda, args)
    assert sum("Triton greedy_verify failed" in r.message for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="compilation failed"):  # explicit triton never falls back
        kernels._dispatch("greedy_verify", "triton", cuda, args)


def test_kernel_benchmark_smoke_run_writes_json(tmp_path) -> None:
    import json

    from specdec.bench.kernels import main

    out = tmp_path / "kernels.json"
    assert main(["--smoke", "--backends", "torch,triton", "--out", str(out)]) == 0  # 1: the backends disagree
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {r["kernel"] for r in rows} == {
        "greedy_verify",
        "rejection_sample",
        "rejection_sample_one_hot",
        "tree_greedy_verify",
    }
    assert {r["backend"] for r in rows} == {"torch", "triton"}
    assert all(r["median_ms"] > 0 and r["floor_bytes"] > 0 for r in rows)
    assert result["mismatches"] == [] and result["sweep"], result["mismatches"]


@pytest.mark.parametrize(("b", "n", "v"), [(1, 0, 5), (1, 1, 7), (5, 9, 4), (3, 12, 2100), (4, 6, 3)])
def test_tree_greedy_verify_matches_the_reference(b: int, n: int, v: int) -> None:
    from tests.test_tree_verify import _random_tree

    rng = random.Random(b * 100 + n)
    for seed in range(3):
        sizes = [rng.randrange(0, n + 1) for _ in range(b)]
        tokens = torch.zeros(b, n, dtype=torch.long)
        parents = torch.full((b, n), -1, dtype=torch.long)
        for row, size in enumerate(sizes):
            t, p = _random_tree(rng, size, min(v, 4))  # few distinct tokens: long accepted paths
            tokens[row, :size], parents[row, :size] = torch.tensor(t), torch.tensor(p)
        logits = torch.randn(b, n + 1, v, generator=torch.Generator().manual_seed(seed))
        logits[:, :, : min(v, 4)] += 3.0  # the tree's tokens are the likely ones
        if v > 2048:
            logits[0, 0, 2050] = logits[0, 0].max()  # a tie across tiles: the lower index wins
        logits[-1, 0, 1] = float("-inf")
        args = (logits, tokens, parents, torch.tensor(sizes))
        got = kernels.tree_greedy_verify(*args, backend="triton")
        assert kernels.last_backend() == "triton"
        want = reference.tree_greedy_verify(*args)
        for g, w, name in zip(got, want, ("num_accepted", "nodes", "tokens"), strict=True):
            assert g.tolist() == w.tolist(), f"{name}: {g.tolist()} vs {w.tolist()}"
    chain = torch.arange(-1, n - 1)[None].expand(b, n)  # a chain: greedy_verify's verdict
    logits = torch.randn(b, n + 1, v, generator=torch.Generator().manual_seed(7))
    drafts = logits[:, :n].argmax(-1)
    accepted, _, out = kernels.tree_greedy_verify(logits, drafts, chain, torch.full((b,), n), backend="triton")
    assert accepted.tolist() == [n] * b and out.tolist() == kernels.greedy_verify(
        logits, drafts, torch.full((b,), n), backend="torch")[1].tolist()  # fmt: skip
