"""The static KV cache (specdec.static_cache): its forward against HF's (DynamicCache), the graph path's buffer
logic through the fake capture, slots and overflow, and the verifier core on static slots keeping greedy identity."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from specdec.errors import FailedPrecondition, InvalidArgument
from specdec.kvcache import CachedSequence
from specdec.static_cache import (
    GraphOptions,
    GraphRunner,
    SlotOverflow,
    StaticSequence,
    eager_capture,
    static_forward,
)
from specdec.verifier_service.batcher import VerifyRequest
from specdec.verifier_service.core import SessionOptions, VerifierCore, VerifyOutcome
from tests.helpers import assert_greedy_identical, hf_greedy, load

VOCAB = 128


@pytest.fixture(scope="module")
def model() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, rope_theta=10000.0)  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def random_ids(generator: torch.Generator, n: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=generator).tolist()


@torch.inference_mode()
def test_static_forward_matches_the_hf_forward_over_extends_and_rollbacks(model: Any) -> None:
    runner = GraphRunner(model, slots=2, max_len=64)  # no capture: static_forward eagerly
    static = runner.acquire()
    assert static is not None and static.slot == 0
    reference = CachedSequence(model)
    generator = torch.Generator().manual_seed(1)
    prompt = random_ids(generator, 9)
    got, want = static.extend(prompt, keep_logits=9, want_hidden=True), reference.extend(prompt, 9, want_hidden=True)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    assert got.hidden is not None and want.hidden is not None
    torch.testing.assert_close(got.hidden, want.hidden, rtol=1e-5, atol=1e-5)
    for step in range(6):
        block = random_ids(generator, 1 + step % 5)
        got = static.extend(block, keep_logits=len(block), want_hidden=True)
        want = reference.extend(block, keep_logits=len(block), want_hidden=True)
        assert got.logits.shape == want.logits.shape == (len(block), VOCAB)
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5, msg=f"step {step}")
        assert got.hidden is not None and want.hidden is not None
        torch.testing.assert_close(got.hidden, want.hidden, rtol=1e-5, atol=1e-5)
        length = len(reference.tokens) - step % 3  # a verdict: keep some, drop the rejected positions
        static.rollback(length)
        reference.rollback(length)
        assert static.tokens == reference.tokens


@torch.inference_mode()
def test_static_forward_keeps_only_the_last_logits_when_asked(model: Any) -> None:
    runner = GraphRunner(model, slots=1, max_len=32)
    ids, positions = torch.tensor([3, 4, 5, 6]), torch.arange(4)
    logits, hidden = static_forward(model, runner.keys, runner.values, 0, ids, positions, keep=2)
    assert logits.shape == (2, VOCAB) and hidden.shape == (4, 64)


@torch.inference_mode()
def test_the_graph_path_equals_the_eager_path_and_behaves_like_a_cached_sequence(model: Any) -> None:
    graphed = GraphRunner(model, slots=2, max_len=48, capture=eager_capture)
    eager = GraphRunner(model, slots=2, max_len=48)
    seqs = [graphed.acquire(), eager.acquire()]
    assert all(isinstance(s, StaticSequence) for s in seqs)
    a, b = seqs[0], seqs[1]
    assert a is not None and b is not None
    reference = CachedSequence(model)
    generator = torch.Generator().manual_seed(2)
    committed = random_ids(generator, 12)  # the prefill (T = 13) is not graphed
    for step in range(8):
        pending = [s.pending(committed) for s in (a, b, reference)]
        assert pending[0] == pending[1] == pending[2], step
        block = pending[0] + random_ids(generator, 1 + step % 4)  # T = 2..5 after the prefill: graphed
        keep = len(block)  # the graph computes every row's logits; the eager path as many as asked
        start = len(a.tokens)
        outs = [s.extend(block, keep_logits=keep) for s in (a, b, reference)]
        # the same computation without the graph (all max_len positions, masked) is bitwise what the replay gave
        again = graphed.forward(a.slot, block, start, keep, False, eager=True)  # rewrites the same keys/values
        assert torch.equal(outs[0].logits, again.logits), step
        # the eager path without graphs (the live positions only) agrees
        torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[0].logits, outs[2].logits, rtol=1e-5, atol=1e-5)
        accepted = step % 3
        committed = committed + block[len(pending[0]) : len(pending[0]) + accepted] + [int(outs[2].logits[-1].argmax())]
        for s in (a, b, reference):
            s.rollback(len(committed) - 1)
        assert a.tokens == b.tokens == reference.tokens
    assert {t for _, t in graphed._graphs} == {2, 3, 4, 5} and not eager._graphs
    assert a.nbytes() == len(a.tokens) * graphed.bytes_per_token > 0
    a.reset()
    assert a.tokens == [] and a.pending(committed) == committed


@torch.inference_mode()
def test_returned_outputs_are_not_the_graphs_static_buffers(model: Any) -> None:
    runner = GraphRunner(model, slots=1, max_len=32, capture=eager_capture)
    seq = runner.acquire()
    assert seq is not None
    seq.extend([1, 2, 3])
    first = seq.extend([4, 5], keep_logits=2).logits
    kept = first.clone()
    seq.rollback(3)
    seq.extend([6, 7], keep_logits=2)  # the same graph again, other inputs
    assert torch.equal(first, kept)


@torch.inference_mode()
def test_a_failed_capture_falls_back_to_eager_forwards(model: Any) -> None:
    def broken(fn: Any) -> Any:
        raise RuntimeError("operation not permitted when stream is capturing")

    runner, eager = GraphRunner(model, slots=1, max_len=32, capture=broken), GraphRunner(model, slots=1, max_len=32)
    a, b = runner.acquire(), eager.acquire()
    assert a is not None and b is not None
    for seq in (a, b):
        seq.extend([1, 2, 3])
    assert torch.equal(a.extend([4, 5]).logits, b.extend([4, 5]).logits)
    assert runner.capture is None and not runner._graphs


@torch.inference_mode()
def test_slots_run_out_and_come_back_and_overflow_is_refused(model: Any) -> None:
    runner = GraphRunner(model, slots=2, max_len=8)
    first, second = runner.acquire(), runner.acquire()
    assert first is not None and second is not None and runner.acquire() is None
    first.release()
    first.release()  # idempotent
    again = runner.acquire()
    assert again is not None and again.slot == first.slot
    with pytest.raises(RuntimeError):
        first.extend([1])
    again.extend([1, 2, 3, 4, 5, 6])
    assert again.fits(8) and not again.fits(9)
    with pytest.raises(SlotOverflow):
        again.extend([7, 8, 9])
    assert again.tokens == [1, 2, 3, 4, 5, 6]  # unchanged
    with pytest.raises(ValueError):
        GraphRunner(torch.nn.Linear(2, 2))


def fake_graphs(lm: Any, slots: int = 2, max_len: int = 64) -> VerifierCore:
    return VerifierCore(lm, GraphOptions("on", slots, max_len), graph_capture=eager_capture)


@torch.inference_mode()
@pytest.mark.parametrize("max_len", [64, 20])  # 20: the session outgrows its slot and moves to a DynamicCache
def test_the_core_on_static_slots_keeps_greedy_identity(tiny_target: Path, max_len: int) -> None:
    lm = load(str(tiny_target))
    core = fake_graphs(lm, max_len=max_len)
    assert core.graphs is not None
    core.warm_up()
    assert core.graphs.free_slots == 2
    prompt = lm.tokenizer.encode("def add(a, b):\n    return")
    new_tokens = 30
    reference = hf_greedy(lm, prompt, new_tokens)
    session = core.open_session(SessionOptions(prompt_token_ids=prompt))
    assert isinstance(session.kv, StaticSequence)
    generator = torch.Generator().manual_seed(3)
    kinds = set()
    while session.committed_length - len(prompt) < new_tokens:
        done = session.committed_length - len(prompt)
        k = 1 + done % 5
        drafts = list(reference[done : done + k])
        drafts += random_ids(generator, k - len(drafts))
        if done % 2:  # partially correct: spoil one
            spoiled = int(torch.randint(0, k, (1,), generator=generator))
            drafts[spoiled] = (drafts[spoiled] + 1) % 300
        outcome = session.verify(session.committed_length, drafts, None)
        kinds.add(type(session.kv).__name__)
        assert outcome.committed_length == session.committed_length
    ours = session.committed[len(prompt) : len(prompt) + new_tokens]
    assert_greedy_identical(lm, prompt, ours, reference)
    expected = {"StaticSequence"} if max_len == 64 else {"StaticSequence", "CachedSequence"}
    assert kinds == expected
    assert len({t for _, t in core.graphs._graphs}) >= 3  # several block sizes went through the graph path
    core.close_session(session)
    assert core.graphs.free_slots == 2 and core.live_sessions == 0


@torch.inference_mode()
def test_sessions_beyond_the_slots_and_long_prompts_use_a_dynamic_cache(tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    core = fake_graphs(lm, slots=1, max_len=16)
    first = core.open_session(SessionOptions(prompt_token_ids=[5, 6, 7]))
    second = core.open_session(SessionOptions(prompt_token_ids=[5, 6, 7]))
    assert isinstance(first.kv, StaticSequence) and isinstance(second.kv, CachedSequence)
    assert core.kv_cache_bytes() > 0
    core.close_session(first)
    long = core.open_session(SessionOptions(prompt_token_ids=list(range(10, 30))))  # 20 tokens > 16
    assert isinstance(long.kv, CachedSequence) and core.graphs is not None and core.graphs.free_slots == 1
    third = core.open_session(SessionOptions(prompt_token_ids=[5, 6, 7]))
    assert isinstance(third.kv, StaticSequence)
    with pytest.raises(InvalidArgument):
        core.open_session(SessionOptions(prompt_token_ids=[]))
    assert core.graphs.free_slots == 0  # the refused session took no slot
    core.close_session(third)
    assert core.graphs.free_slots == 1


@torch.inference_mode()
def test_a_batch_mixing_static_and_dynamic_sessions(tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    core = fake_graphs(lm, slots=2)
    sessions = [core.open_session(SessionOptions(prompt_token_ids=[5, 6, 7 + i])) for i in range(4)]
    assert [type(s.kv).__name__ for s in sessions] == ["StaticSequence"] * 2 + ["CachedSequence"] * 2
    plain = VerifierCore(lm)
    references = [plain.open_session(SessionOptions(prompt_token_ids=[5, 6, 7 + i])) for i in range(4)]
    loop = asyncio.new_event_loop()
    try:
        for step in range(3):
            drafts = [[8 + step, 9], [10], [11, 12, 13], [8 + step, 9]]
            requests = [VerifyRequest(s, s.committed_length, d, None, loop.create_future())
                        for s, d in zip(sessions, drafts, strict=True)]  # fmt: skip
            results = core.verify_batch(requests)
            for result, reference, d in zip(results, references, drafts, strict=True):
                want = reference.verify(reference.committed_length, d, None)
                assert isinstance(result, VerifyOutcome) and result.token_ids == want.token_ids
    finally:
        loop.close()


def test_cuda_graphs_on_without_cuda_fails_at_startup(tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    with pytest.raises(FailedPrecondition, match="CUDA"):
        VerifierCore(lm, GraphOptions("on"))
    with pytest.raises(InvalidArgument):
        VerifierCore(lm, GraphOptions("sometimes"))
    with pytest.raises(InvalidArgument, match="static"):
        VerifierCore(lm, GraphOptions("on", static="off"))
    cpu = VerifierCore(lm, GraphOptions("auto"))  # CPU: a static KV pool, no graphs, no stream
    assert cpu.graphs is not None and cpu.graphs.capture is None and cpu.stream is None
    assert VerifierCore(lm, GraphOptions(static="off")).graphs is None


def test_static_kv_on_needs_a_llama_family_target(tiny_target: Path) -> None:
    import dataclasses

    lm = load(str(tiny_target))
    other = dataclasses.replace(lm, model=torch.nn.Linear(2, 2))  # not a supported model
    with pytest.raises(FailedPrecondition, match="Llama-family"):
        VerifierCore(other, GraphOptions(static="on"))
    assert VerifierCore(other, GraphOptions()).graphs is None  # auto: the dynamic cache


def test_the_cli_passes_graph_options() -> None:
    from specdec.orchestrator.cli import _graph_options, build_parser

    args = build_parser().parse_args(["serve", "verifier", "--cuda-graphs", "off", "--graph-slots", "3"])
    assert _graph_options(args) == GraphOptions("off", 3, GraphOptions().max_len)
    args = build_parser().parse_args(["serve", "verifier", "--static-kv", "off"])
    assert _graph_options(args) == GraphOptions(static="off")
    assert _graph_options(build_parser().parse_args(["serve", "verifier"])) == GraphOptions()


def test_the_benchmark_smoke_run_writes_json(tmp_path: Path) -> None:
    from specdec.bench.cuda_graphs import main

    out = tmp_path / "cuda_graphs.json"
    assert main(["--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["smoke"] and not report["errors"], report["errors"]
    assert {(row["context"], row["k"]) for row in report["steps"]} == {(16, 1), (16, 4)}
    for row in report["steps"]:
        assert row["hf"]["median_ms"] > 0 and row["static_eager"]["median_ms"] > 0
        assert row["max_abs_logit_diff_static_vs_hf"] < 1e-4


@torch.inference_mode()
def test_after_a_failed_capture_sessions_run_eagerly_on_static_slots(tiny_target: Path) -> None:
    def broken(fn: Any) -> Any:
        raise RuntimeError("capture is not supported here")

    lm = load(str(tiny_target))
    core = VerifierCore(lm, GraphOptions("on", 2, 64), graph_capture=broken)
    core.warm_up()  # the static warm-up hits the failure: logged, run eagerly
    assert (
        core.graphs is not None
        and core.graphs.capture is None
        and "capture is not supported" in core.graphs.capture_error
    )
    session = core.open_session(SessionOptions(prompt_token_ids=[5, 6, 7]))
    assert isinstance(session.kv, StaticSequence)  # eager static forwards from now on
    assert session.verify(3, [8, 9], None).committed_length == session.committed_length


@torch.inference_mode()
def test_static_slots_join_the_ragged_batched_forward(model: Any) -> None:
    """`specdec.batched` runs static slots (through their `cache.update`) with dynamic caches in one ragged forward,
    with the same outputs as each sequence's own forward."""
    from specdec.batched import ExtendJob, extend_many

    runner = GraphRunner(model, slots=2, max_len=40)
    generator = torch.Generator().manual_seed(5)
    prompts = [random_ids(generator, n) for n in (7, 11, 4)]
    batched = [runner.acquire(), CachedSequence(model), runner.acquire()]
    alone = [CachedSequence(model) for _ in prompts]
    for seqs in (batched, alone):
        for seq, prompt in zip(seqs, prompts, strict=True):
            assert seq is not None
            seq.extend(prompt)
    for step in range(4):
        blocks = [random_ids(generator, 1 + (step + i) % 3) for i in range(3)]
        jobs = [ExtendJob(cast(Any, seq), block, len(block), True) for seq, block in zip(batched, blocks, strict=True)]
        got = extend_many(model, jobs)
        for seq, out, block in zip(alone, got, blocks, strict=True):
            want = seq.extend(block, len(block), True)
            torch.testing.assert_close(out.logits, want.logits, rtol=1e-5, atol=1e-5)
            assert out.hidden is not None and want.hidden is not None
            torch.testing.assert_close(out.hidden, want.hidden, rtol=1e-5, atol=1e-5)
        for a, b in zip(batched, alone, strict=True):
            assert a is not None and a.tokens == b.tokens
            a.rollback(len(a.tokens) - step % 2)
            b.rollback(len(b.tokens) - step % 2)


@torch.inference_mode()
@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1]], ids=["slot-order", "shuffled"])
def test_sessions_on_one_pool_attend_in_one_padded_call(model: Any, order: list[int]) -> None:
    """All sessions on slots of one pool: one padded attention call per layer (the pool read as a view when the
    slots are consecutive and in order, gathered otherwise), the same outputs as each sequence's own forward; slot
    1 is left out at first so the slots are not consecutive, and never-written positions must not leak NaN."""
    from specdec.batched import ExtendJob, extend_many

    runner = GraphRunner(model, slots=4, max_len=40)
    for pool in (*runner.keys, *runner.values):
        pool.fill_(float("nan"))  # what uninitialised memory may hold
    generator = torch.Generator().manual_seed(9)
    seqs = [runner.acquire() for _ in range(4)]
    prompts = [random_ids(generator, n) for n in (7, 11, 4, 9)]
    alone = [CachedSequence(model) for _ in prompts]
    for seq, ref, prompt in zip(seqs, alone, prompts, strict=True):
        assert seq is not None
        seq.extend(prompt)
        ref.extend(prompt)
    for step in range(4):
        chosen = [0, 2, 3] if step < 2 else [*order, 3]
        blocks = {i: random_ids(generator, 1 + (step + i) % 3) for i in chosen}
        jobs = [ExtendJob(cast(Any, seqs[i]), blocks[i], len(blocks[i]), True) for i in chosen]
        for i, out in zip(chosen, extend_many(model, jobs), strict=True):
            want = alone[i].extend(blocks[i], len(blocks[i]), True)
            torch.testing.assert_close(out.logits, want.logits, rtol=1e-5, atol=1e-5)
            assert out.hidden is not None and want.hidden is not None
            torch.testing.assert_close(out.hidden, want.hidden, rtol=1e-5, atol=1e-5)
            seq = seqs[i]
            assert seq is not None and seq.tokens == alone[i].tokens
            seq.rollback(len(seq.tokens) - step % 2)
            alone[i].rollback(len(alone[i].tokens) - step % 2)


@torch.inference_mode()
def test_a_forward_that_fails_midway_leaves_no_position_marked_written(model: Any) -> None:
    """A batch that fails after some layers wrote a session's new positions (here: another slot overflows) must not
    mark them written: a later padded attention zeroes them instead of reading uninitialised memory."""
    from specdec.batched import ExtendJob, extend_many

    runner = GraphRunner(model, slots=2, max_len=20)
    for pool in (*runner.keys, *runner.values):
        pool.fill_(float("nan"))  # what uninitialised memory may hold
    a, b = runner.acquire(), runner.acquire()
    assert a is not None and b is not None
    reference = CachedSequence(model)
    a.extend(list(range(5)))
    reference.extend(list(range(5)))
    mixed = [ExtendJob(cast(Any, a), list(range(10, 16))), ExtendJob(CachedSequence(model), [1, 2]),
             ExtendJob(cast(Any, b), list(range(25)))]  # fmt: skip
    with pytest.raises(SlotOverflow):
        extend_many(model, mixed)
    assert a.tokens == list(range(5))
    outs = extend_many(model, [ExtendJob(cast(Any, a), [7]), ExtendJob(cast(Any, b), list(range(12)))])
    torch.testing.assert_close(outs[0].logits, reference.extend([7]).logits, rtol=1e-5, atol=1e-5)
