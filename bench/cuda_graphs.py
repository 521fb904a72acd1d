"""Verifier step time: HF forward (DynamicCache) vs static-cache forward (eager) vs CUDA-graph replay, and
draft/verify overlap on two CUDA streams.

    python -m specdec.bench.cuda_graphs --out results/cuda_graphs.json

On CUDA (bf16): the default model when it is already converted locally, else a random-init Llama with
SmolLM2-135M-Instruct's config (timing does not depend on the weights). For context lengths {256, 1024} and
K in {1, 4, 8} it reports the median per-step time (CUDA events around each step, and host wall time) of
(a) `CachedSequence.extend` as the verifier runs today, (b) `static_forward` eagerly, (c) graph replay; each step
extends by K+1 tokens, reads the argmax on the host (as a verdict does) and rolls back K. Correctness: whether
(c) is bitwise equal to (b), and max |logit diff| of (b) vs (a). Then an overlap micro-benchmark: a 4-layer draft
of the same config stepping one token at a time and the verifier's graph step (K=4), N steps each, run serially
vs concurrently from two threads on two streams (wall time).

Every section is guarded: a failure is recorded under "errors" in the JSON and the run goes on. Without CUDA it
runs a tiny smoke version (2-layer model, eager paths only) so the script stays tested.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from specdec.kvcache import CachedSequence
from specdec.static_cache import GraphRunner, cuda_capture

SMOLLM2_CONFIG: dict[str, Any] = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192,
}
TINY_CONFIG = {**SMOLLM2_CONFIG, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 320}  # fmt: skip
RANDOM_NOTE = "random-init weights with SmolLM2-135M-Instruct's config: timing does not depend on the weights"


def _llama(config: dict[str, Any], dtype: torch.dtype, device: torch.device, layers: int | None = None) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{**config, **({"num_hidden_layers": layers} if layers else {})})
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(cfg)
    return model.to(device=device, dtype=dtype).eval()


def _target(device: torch.device, smoke: bool) -> tuple[Any, str]:
    """(model, what it is): the default model if already converted locally (never converted here), else random."""
    if smoke:
        return _llama(TINY_CONFIG, torch.float32, device), "tiny random-init Llama (CPU smoke run)"
    from specdec.modeling import converted_default_dir

    path = converted_default_dir()
    if (path / "config.json").exists():
        from transformers import AutoModelForCausalLM

        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        return model.to(device).eval(), f"SmolLM2-135M-Instruct from {path}"
    return _llama(SMOLLM2_CONFIG, torch.bfloat16, device), RANDOM_NOTE


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _time_steps(step: Callable[[int], None], steps: int, warmup: int, cuda: bool) -> dict[str, float]:
    """Median ms per step: CUDA events around each step (device timeline) and host wall time."""
    for i in range(warmup):
        step(i)
    _sync(cuda)
    events: list[tuple[Any, Any]] = []
    wall: list[float] = []
    for i in range(warmup, warmup + steps):
        pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else None
        if pair is not None:
            pair[0].record()
        start = time.perf_counter()
        step(i)  # ends with a host read, so the wall time covers the device work
        wall.append((time.perf_counter() - start) * 1e3)
        if pair is not None:
            pair[1].record()
            events.append(pair)
    _sync(cuda)
    result = {"median_wall_ms": statistics.median(wall)}
    if events:
        result["median_ms"] = statistics.median(s.elapsed_time(e) for s, e in events)
    else:
        result["median_ms"] = result["median_wall_ms"]
    return result


def _bench_context(model: Any, runner: GraphRunner | None, ctx: int, ks: list[int], steps: int, warmup: int,
                   cuda: bool, vocab: int) -> list[dict[str, Any]]:  # fmt: skip
    """Rows for one context length: every K, every path. Each path has its own sequence, same token stream."""
    generator = torch.Generator().manual_seed(ctx)
    stream = torch.randint(0, vocab, (ctx + warmup + steps + max(ks) + 8,), generator=generator).tolist()
    rows = []
    for k in ks:
        row: dict[str, Any] = {"context": ctx, "k": k}
        hf = CachedSequence(model)
        hf.extend(stream[:ctx])

        def hf_step(i: int, hf: CachedSequence = hf, k: int = k) -> None:
            n = ctx + i  # cached length before the step (grows by one per step)
            out = hf.extend(stream[n : n + k + 1], keep_logits=k + 1)
            int(out.logits[-1].argmax())  # the host reads the verdict
            hf.rollback(n + 1)

        row["hf"] = _time_steps(hf_step, steps, warmup, cuda)
        del hf
        if runner is not None:
            for name, eager in (("static_eager", True), ("graph", False)):
                if not eager and not cuda:
                    continue
                slot = runner.acquire()
                assert slot is not None
                runner.forward(slot.slot, stream[:ctx], 0, 1, False, eager=True)  # prefill

                def static_step(i: int, s: int = slot.slot, k: int = k, eager: bool = eager) -> None:
                    n = ctx + i
                    out = runner.forward(s, stream[n : n + k + 1], n, k + 1, False, eager=eager)
                    int(out.logits[-1].argmax())

                row[name] = _time_steps(static_step, steps, warmup, cuda)
                slot.release()
            row.update(_correctness(model, runner, stream, ctx, k, cuda))
        if "graph" in row:
            row["graph_speedup_vs_hf"] = row["hf"]["median_ms"] / row["graph"]["median_ms"]
            row["graphs_captured"] = runner.graph_count if runner is not None else 0
            row["capture_error"] = runner.capture_error if runner is not None else ""  # non-empty: graph ran eagerly
        rows.append(row)
    return rows


def _correctness(model: Any, runner: GraphRunner, stream: list[int], ctx: int, k: int, cuda: bool) -> dict[str, Any]:
    """Over 3 steps from the same prefix: graph vs static eager (bitwise) and static eager vs HF (max |diff|)."""
    hf = CachedSequence(model)
    hf.extend(stream[:ctx])
    slot = runner.acquire()
    assert slot is not None
    runner.forward(slot.slot, stream[:ctx], 0, 1, False, eager=True)
    max_diff, bitwise = 0.0, True
    for i in range(3):
        n = ctx + i
        tokens = stream[n : n + k + 1]
        a = hf.extend(tokens, keep_logits=k + 1).logits
        b = runner.forward(slot.slot, tokens, n, k + 1, False, eager=True).logits
        if cuda:  # same inputs again through the graph (rewrites the same keys/values)
            c = runner.forward(slot.slot, tokens, n, k + 1, False, eager=False).logits
            bitwise = bitwise and torch.equal(b, c)
        max_diff = max(max_diff, float((a.float() - b.float()).abs().max()))
        hf.rollback(n + 1)
    slot.release()
    out: dict[str, Any] = {"max_abs_logit_diff_static_vs_hf": max_diff}
    if cuda:
        out["graph_bitwise_equal_static"] = bitwise
    return out


def _bench_overlap(model: Any, runner: GraphRunner, device: torch.device, n: int) -> dict[str, Any]:
    """Wall time of n draft steps (4-layer model, one token each) and n verifier graph steps (K=4): serially
    on one thread and stream, then concurrently from two threads on two streams."""
    draft = _llama(SMOLLM2_CONFIG, torch.bfloat16, device, layers=4)
    ctx, k = 256, 4
    tokens = torch.randint(0, SMOLLM2_CONFIG["vocab_size"], (ctx + k + 1,), generator=torch.Generator().manual_seed(1))
    prompt = tokens.tolist()
    draft_seq = CachedSequence(draft)
    draft_seq.extend(prompt[:ctx])
    slot = runner.acquire()
    assert slot is not None
    runner.forward(slot.slot, prompt[:ctx], 0, 1, False, eager=True)

    def draft_step() -> None:
        int(draft_seq.extend(prompt[ctx : ctx + 1]).logits[-1].argmax())
        draft_seq.rollback(ctx)

    def verify_step() -> None:
        int(runner.forward(slot.slot, prompt[ctx : ctx + k + 1], ctx, k + 1, False).logits[-1].argmax())

    failures: list[BaseException] = []

    def run(step: Callable[[], None], stream: torch.cuda.Stream, barrier: threading.Barrier | None) -> None:
        try:
            with torch.inference_mode(), torch.cuda.stream(stream):  # grad mode and streams are per thread
                if barrier is not None:
                    barrier.wait()  # times out (and fails the section) rather than hang if the other thread died
                for _ in range(n):
                    step()
                stream.synchronize()
        except BaseException as exc:
            failures.append(exc)
            if barrier is not None:
                barrier.abort()

    draft_stream, verify_stream = torch.cuda.Stream(), torch.cuda.Stream()
    for step, s in ((draft_step, draft_stream), (verify_step, verify_stream)):  # warm-up (and capture)
        with torch.cuda.stream(s):
            for _ in range(5):
                step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    current = torch.cuda.current_stream()
    run(draft_step, current, None)
    run(verify_step, current, None)
    serial_ms = (time.perf_counter() - start) * 1e3
    if failures:
        raise failures[0]
    torch.cuda.synchronize()
    barrier = threading.Barrier(2, timeout=60)
    threads = [threading.Thread(target=run, args=(draft_step, draft_stream, barrier), daemon=True),
               threading.Thread(target=run, args=(verify_step, verify_stream, barrier), daemon=True)]  # fmt: skip
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    concurrent_ms = (time.perf_counter() - start) * 1e3
    if failures or any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"a concurrent thread failed or hung: {failures!r}")
    slot.release()
    return {"steps_each": n, "draft_layers": 4, "verify_k": k, "context": ctx, "serial_ms": serial_ms,
            "concurrent_ms": concurrent_ms, "speedup": serial_ms / concurrent_ms}  # fmt: skip


def _core_check(model: Any, device: torch.device, steps: int) -> dict[str, Any]:
    """The verifier core as the server runs it (`verify_batch` on the core's stream), graphs on vs off: greedy
    identity against HF `generate` (float32, so numeric noise stays far below the top-2 gaps) over blocks of
    K = 1..5 drafts taken from the reference with one spoiled every other step, and the median per-verify-step
    host time at K=4 (bf16, the served dtype)."""
    from types import SimpleNamespace

    from specdec.modeling import LoadedModel
    from specdec.static_cache import GraphOptions
    from specdec.verifier_service.core import SessionOptions, VerifierCore

    def loaded(m: Any) -> LoadedModel:
        dtype = next(m.parameters()).dtype
        return LoadedModel("bench", "bench", m, None, device, dtype, int(m.config.vocab_size), "", [0], 8192)

    def verify(core: VerifierCore, session: Any, drafts: list[int]) -> Any:
        # duck-typed VerifyRequest: its module imports the gRPC service stack, absent on a bare GPU box
        request = SimpleNamespace(session=session, position=session.committed_length, draft_tokens=drafts,
                                  draft_probs=None)  # fmt: skip
        outcome = core.verify_batch([request])[0]  # type: ignore[list-item]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    vocab = int(model.config.vocab_size)
    prompt = torch.randint(0, vocab, (64,), generator=torch.Generator().manual_seed(7)).tolist()
    fp32 = _llama(SMOLLM2_CONFIG, torch.float32, device)
    fp32.generation_config.eos_token_id = None  # the verifier does not stop at EOS: neither may the reference
    new_tokens = 48
    ids = torch.tensor([prompt], device=device)
    reference = fp32.generate(ids, max_new_tokens=new_tokens, do_sample=False)[0, 64:]
    reference = reference.tolist()
    result: dict[str, Any] = {}
    for mode in ("on", "off"):
        core = VerifierCore(loaded(fp32), GraphOptions(mode, slots=2, max_len=512))
        core.warm_up()
        session = core.open_session(SessionOptions(prompt_token_ids=prompt))
        kinds = set()
        step = 0
        while session.committed_length - len(prompt) < new_tokens:
            done = session.committed_length - len(prompt)
            k = 1 + step % 5
            drafts = list(reference[done : done + k]) + [1] * k
            drafts = drafts[:k]
            if step % 2:
                drafts[step % k] = (drafts[step % k] + 1) % vocab
            verify(core, session, drafts)
            kinds.add(type(session.kv).__name__)
            step += 1
        ours = session.committed[len(prompt) : len(prompt) + new_tokens]
        mismatch = next((i for i, (a, b) in enumerate(zip(ours, reference, strict=True)) if a != b), -1)
        result[f"identity_graphs_{mode}"] = {"first_mismatch": mismatch, "steps": step, "kv": sorted(kinds)}
        core.close_session(session)
    for mode in ("on", "off"):  # per-step time in bf16: K=4 blocks of rejected drafts (one token per step)
        core = VerifierCore(loaded(model), GraphOptions(mode, slots=2, max_len=2048))
        core.warm_up()
        session = core.open_session(SessionOptions(prompt_token_ids=prompt * 4))  # 256 tokens
        times = []
        for i in range(steps + 10):
            start = time.perf_counter()
            verify(core, session, [(i * 7 + j) % vocab for j in range(4)])
            if i >= 10:
                times.append((time.perf_counter() - start) * 1e3)
        result[f"verify_step_ms_graphs_{mode}"] = statistics.median(times)
        result[f"kv_graphs_{mode}"] = type(session.kv).__name__
        core.close_session(session)
    result["verify_step_speedup"] = result["verify_step_ms_graphs_off"] / result["verify_step_ms_graphs_on"]
    return result


def _markdown(report: dict[str, Any]) -> str:
    header = "| context | K | HF ms | static eager ms | graph ms | graph speedup | graph == eager | max diff vs HF |"
    lines = [f"model: {report.get('model', '?')}  device: {report.get('device', '?')}", "", header,
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def ms(row: dict[str, Any], key: str) -> str:
        return f"{row[key]['median_ms']:.3f}" if key in row else "-"

    for row in report.get("steps", []):
        speedup = f"{row['graph_speedup_vs_hf']:.2f}x" if "graph_speedup_vs_hf" in row else "-"
        diff = row.get("max_abs_logit_diff_static_vs_hf")
        lines.append(
            f"| {row['context']} | {row['k']} | {ms(row, 'hf')} | {ms(row, 'static_eager')} | {ms(row, 'graph')} | "
            f"{speedup} | {row.get('graph_bitwise_equal_static', '-')} | {'-' if diff is None else f'{diff:.3g}'} |"
        )
    failed = {row["capture_error"] for row in report.get("steps", []) if row.get("capture_error")}
    lines += [f"\nGRAPH CAPTURE FAILED (the graph column ran eagerly): {error}" for error in failed]
    core = report.get("core")
    if isinstance(core, dict):
        lines += ["", f"verifier core: {json.dumps(core)}"]
    overlap = report.get("overlap")
    if isinstance(overlap, dict) and "serial_ms" in overlap:
        lines += ["", f"overlap ({overlap['steps_each']} draft + {overlap['steps_each']} verify steps): serial "
                  f"{overlap['serial_ms']:.1f} ms, two streams {overlap['concurrent_ms']:.1f} ms "
                  f"({overlap['speedup']:.2f}x)"]  # fmt: skip
    for name, error in report.get("errors", {}).items():
        lines.append(f"\nERROR in {name}: {error.splitlines()[-1] if error else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdec.bench.cuda_graphs", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/cuda_graphs.json", help="JSON report path")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--overlap-steps", type=int, default=200, help="steps each in the overlap benchmark")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    smoke = not cuda
    steps, warmup = (3, 1) if smoke else (args.steps, args.warmup)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                              "smoke": smoke, "steps": [], "errors": {}}  # fmt: skip
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except Exception:  # a version string is not worth failing over
        pass
    started = time.perf_counter()
    with torch.inference_mode():
        try:
            model, report["model"] = _target(device, smoke)
            report["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
        except Exception:
            report["errors"]["model"] = traceback.format_exc()
            model = None
        runner: GraphRunner | None = None
        if model is not None:
            try:
                capture = cuda_capture(torch.cuda.graph_pool_handle()) if cuda else None
                max_len = 64 if smoke else 2048
                report["static_max_len"] = max_len  # the static forward attends over all of it (masked)
                runner = GraphRunner(model, slots=2, max_len=max_len, capture=capture)
            except Exception:
                report["errors"]["runner"] = traceback.format_exc()
            vocab = int(model.config.vocab_size)
            for ctx in [16] if smoke else [256, 1024]:
                try:
                    ks = [1, 4] if smoke else [1, 4, 8]
                    report["steps"] += _bench_context(model, runner, ctx, ks, steps, warmup, cuda, vocab)
                except Exception:
                    report["errors"][f"context {ctx}"] = traceback.format_exc()
            if cuda:
                try:
                    report["core"] = _core_check(model, device, steps)
                except Exception:
                    report["errors"]["core"] = traceback.format_exc()
            if cuda and runner is not None:
                try:
                    report["overlap"] = _bench_overlap(model, runner, device, args.overlap_steps)
                except Exception:
                    report["errors"]["overlap"] = traceback.format_exc()
            else:
                report["overlap"] = "skipped: needs CUDA"
    report["total_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(_markdown(report))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
