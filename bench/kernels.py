"""Kernel benchmark: Triton vs the torch reference for the acceptance step.

    python -m specdec.bench.kernels [--out results/kernels.json] [--peak-gbps 4800]

On CUDA it times both backends with `triton.testing.do_bench` (median) over B in {1, 8, 64}, K in {1, 4, 8},
V in {32000, 49152, 128256}, and reports the bytes-moved floor (the rows the acceptance step must read,
given how many tokens were accepted), the achieved bandwidth and the speedup. Without CUDA it runs the torch
reference on the CPU over a small grid (a smoke run; Triton timing needs a GPU) so the script stays tested.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from specdec import kernels
from specdec.sampling import SamplingConfig, logits_to_probs

TEMPERATURE_ONE = SamplingConfig(temperature=1.0)
KERNELS = ("greedy_verify", "rejection_sample", "rejection_sample_one_hot", "tree_greedy_verify")
HEADLINE = (64, 8, 49152)  # the goal: fused rejection sampler >= 3x torch, within 2x of the floor
Outputs = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Row:
    kernel: str
    backend: str
    device: str
    batch: int
    k: int
    vocab: int
    median_ms: float  # GPU time per call: replayed in a CUDA graph with L2 flushed, launch cost excluded
    launch_ms: float  # per call as a Python caller sees it (triton do_bench: launches, allocations included)
    floor_bytes: int
    achieved_gbps: float
    floor_ms: float  # floor_bytes at the peak bandwidth


def make_inputs(b: int, k: int, v: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Realistic inputs: target/draft probabilities of a sampled LM at temperature 1, drafts from q."""
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(b, k + 1, v, device=device, generator=gen) * 3  # [B, K+1, V]
    p = logits_to_probs(logits, TEMPERATURE_ONE)  # [B, K+1, V]
    q = logits_to_probs(logits[:, :k] + torch.randn(b, k, v, device=device, generator=gen), TEMPERATURE_ONE)
    drafts = torch.multinomial(q.reshape(-1, v), 1, generator=gen).reshape(b, k)  # [B, K]
    return {
        "logits": logits,
        "p": p,
        "q": q,
        "drafts": drafts,
        "num_draft": torch.full((b,), k, device=device, dtype=torch.long),
        "parents": (torch.arange(k, device=device) - 1).div(2, rounding_mode="floor")[None].expand(b, k),  # binary
        "uniforms": torch.rand(b, k, device=device, generator=gen),
        "noise": torch.empty(b, k + 1, v, device=device).exponential_(generator=gen),
    }


def floor_bytes(kernel: str, inputs: dict[str, torch.Tensor], num_accepted: torch.Tensor) -> int:
    """The bytes the step must read: greedy reads (a+1) logit rows; rejection reads one p, noise (and q,
    after a rejection) row plus the gathered scalars."""
    v = inputs["p"].shape[-1]
    k = inputs["drafts"].shape[1]
    element = inputs["p"].element_size()
    if kernel in ("greedy_verify", "tree_greedy_verify"):  # a tree: the rows of the path's nodes and the root
        return int((num_accepted + 1).sum()) * v * element
    rows = num_accepted.numel()
    if kernel == "rejection_sample_one_hot":  # the acceptance races read p and noise rows 0 .. a
        return int((num_accepted + 1).sum()) * 2 * v * element
    rejected = int((num_accepted < k).sum())
    return (2 * rows + rejected) * v * element + rows * k * 3 * element


def gpu_time_ms(fn: Callable[[], object], reps: int = 20) -> float:
    """Median GPU time of one call: `reps` calls, each after an L2 flush, replayed as one CUDA graph, minus the
    same graph of flushes alone. Launch overhead is excluded (the verifier can capture this step in its graph)."""
    flush = torch.empty(64 * 1024 * 1024, dtype=torch.int32, device="cuda")  # 256 MB > the L2

    def graph_of(body: Callable[[], object]) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()  # warm-up off the capture, as the PyTorch docs show
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                body()
        return graph

    def replay_ms(graph: torch.cuda.CUDAGraph) -> float:
        samples = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return statistics.median(samples)

    with_fn = graph_of(lambda: (flush.zero_(), fn()))
    flush_only = graph_of(flush.zero_)
    return max(0.0, (replay_ms(with_fn) - replay_ms(flush_only)) / reps)


def time_ms(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(GPU time, launch-inclusive time) per call; on the CPU both are the median wall time."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return gpu_time_ms(fn), float(do_bench(fn, warmup=5, rep=20, return_mode="median"))
    fn()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), statistics.median(samples)


def kernel_call(kernel: str, backend: str, x: dict[str, torch.Tensor], **tuning: int) -> Callable[[], Outputs]:
    """One acceptance call on prepared inputs; `tuning` (split, block, num_warps) goes to the Triton module."""
    if tuning:
        from specdec.kernels import triton_kernels

        assert kernel == "rejection_sample" and backend == "triton"
        return lambda: triton_kernels.rejection_sample(
            x["p"], x["q"], x["drafts"], x["num_draft"], x["uniforms"], x["noise"], **tuning
        )
    if kernel == "greedy_verify":
        return lambda: kernels.greedy_verify(x["logits"], x["drafts"], x["num_draft"], backend=backend)
    if kernel == "tree_greedy_verify":

        def tree() -> Outputs:
            accepted, _, out = kernels.tree_greedy_verify(
                x["logits"], x["drafts"], x["parents"], x["num_draft"], backend=backend
            )
            return accepted, out

        return tree
    if kernel == "rejection_sample_one_hot":
        return lambda: kernels.rejection_sample(
            x["p"], None, x["drafts"], x["num_draft"], x["uniforms"], x["noise"], backend=backend
        )
    return lambda: kernels.rejection_sample(
        x["p"], x["q"], x["drafts"], x["num_draft"], x["uniforms"], x["noise"], backend=backend
    )


def bench_case(
    kernel: str, backend: str, x: dict[str, torch.Tensor], peak_gbps: float, **tuning: int
) -> tuple[Row, Outputs]:
    b, k = x["drafts"].shape
    v = x["p"].shape[-1]
    device = x["p"].device
    call = kernel_call(kernel, backend, x, **tuning)
    result = call()
    if not tuning:
        assert kernels.last_backend() == backend
    ms, launch_ms = time_ms(call, device)
    floor = floor_bytes(kernel, x, result[0])
    gbps = floor / max(ms, 1e-9) / 1e6
    row = Row(kernel, backend, device.type, b, k, v, ms, launch_ms, floor, gbps, floor / (peak_gbps * 1e6))
    if tuning:
        row.backend = "triton " + ",".join(f"{name}={value}" for name, value in sorted(tuning.items()))
    return row, (result[0].cpu(), result[1].cpu())


def same(a: Outputs, b: Outputs) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def run_grid(
    grid: list[tuple[int, int, int]], backends: list[str], device: torch.device, peak_gbps: float
) -> tuple[list[Row], list[str]]:
    """Every kernel on every case with every backend; the backends' outputs must be identical."""
    rows: list[Row] = []
    mismatches: list[str] = []
    for b, k, v in grid:
        x = make_inputs(b, k, v, device)
        for kernel in KERNELS:
            results = []
            for backend in backends:
                row, result = bench_case(kernel, backend, x, peak_gbps)
                rows.append(row)
                results.append(result)
            if any(not same(results[0], other) for other in results[1:]):
                mismatches.append(f"{kernel} B={b} K={k} V={v}")
        del x
    return rows, mismatches


def tuning_sweep(device: torch.device, peak_gbps: float, smoke: bool) -> tuple[list[Row], list[str]]:
    """The rejection sampler at the headline case over slices per row, tile width and warps (Triton only)."""
    from specdec.kernels import triton_kernels

    b, k, v = (2, 4, 300) if smoke else HEADLINE
    x = make_inputs(b, k, v, device)
    want = kernels.rejection_sample(x["p"], x["q"], x["drafts"], x["num_draft"], x["uniforms"], x["noise"], "torch")
    want = (want[0].cpu(), want[1].cpu())
    auto = triton_kernels.auto_split(b, v, triton_kernels.REJECTION_BLOCK, device)
    splits = sorted({1, auto, 2 * auto})
    configs = [(1, 64, 1)] if smoke else [(s, blk, w) for s in splits for blk in (512, 1024, 2048) for w in (4, 8)]
    rows, mismatches = [], []
    for split, block, warps in configs:
        try:
            row, got = bench_case("rejection_sample", "triton", x, peak_gbps, split=split, block=block, num_warps=warps)
        except Exception as exc:  # a config that does not compile is reported, not fatal
            mismatches.append(f"split={split} block={block} warps={warps}: {type(exc).__name__}: {exc}")
            continue
        rows.append(row)
        if not same(got, want):
            mismatches.append(f"split={split} block={block} warps={warps}: output differs from torch")
    return rows, mismatches


def print_table(rows: list[Row], backends: list[str]) -> None:
    print("GPU time per call (CUDA graph, L2 flushed); in brackets as a Python caller sees it (launches included)")
    print(f"| kernel | B | K | V | {' | '.join(f'{b} ms' for b in backends)} | floor ms | best GB/s | speedup |")
    print("|---|---:|---:|---:|" + "---:|" * (len(backends) + 3))
    for i in range(0, len(rows), len(backends)):
        group = rows[i : i + len(backends)]
        first = group[0]
        times = " | ".join(f"{r.median_ms:.4f} ({r.launch_ms:.3f})" for r in group)
        speedup = group[0].median_ms / group[-1].median_ms
        best = max(r.achieved_gbps for r in group)
        print(
            f"| {first.kernel} | {first.batch} | {first.k} | {first.vocab} | {times} | {first.floor_ms:.4f} | "
            f"{best:.1f} | {speedup:.2f}x |"
        )


def headline_verdict(rows: list[Row], sweep: list[Row]) -> dict[str, float | bool]:
    """The issue's goal at B=64, K=8, V=49152: speedup over torch and the distance from the bandwidth floor."""

    def at_headline(r: Row) -> bool:
        return (r.batch, r.k, r.vocab) == HEADLINE and r.kernel == "rejection_sample"

    torch_rows = [r for r in rows if at_headline(r) and r.backend == "torch"]
    torch_ms = min((r.median_ms for r in torch_rows), default=0.0)
    triton_rows = [r for r in rows + sweep if at_headline(r) and r.backend.startswith("triton")]
    if not torch_ms or not triton_rows:
        return {}
    default = next(r for r in triton_rows if r.backend == "triton")
    best = min(triton_rows, key=lambda r: r.median_ms)
    return {
        "torch_ms": torch_ms,
        "triton_default_ms": default.median_ms,
        "triton_best_ms": best.median_ms,
        "floor_ms": default.floor_ms,
        "speedup_default": torch_ms / default.median_ms,
        "floor_ratio_default": default.median_ms / default.floor_ms,
        "speedup_with_launches": min(r.launch_ms for r in torch_rows) / default.launch_ms,
        "speedup_goal_met": torch_ms / default.median_ms >= 3.0,
        "floor_goal_met": default.median_ms <= 2.0 * default.floor_ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/kernels.json")
    parser.add_argument("--peak-gbps", type=float, default=4800.0, help="device peak bandwidth (H200: 4800)")
    parser.add_argument("--smoke", action="store_true", help="tiny grid (tests)")
    parser.add_argument(
        "--backends",
        default="",
        help="comma-separated (default: torch,triton on CUDA, torch on CPU; on CPU triton needs TRITON_INTERPRET=1)",
    )
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    backends = args.backends.split(",") if args.backends else (["torch", "triton"] if cuda else ["torch"])
    if args.smoke:
        grid = [(1, 1, 64), (2, 4, 128)]
    elif cuda:
        grid = [(b, k, v) for b in (1, 8, 64) for k in (1, 4, 8) for v in (32000, 49152, 128256)]
    else:
        grid = [(b, k, 49152) for b in (1, 8) for k in (1, 4, 8)]
    if not cuda:
        print("no CUDA device: CPU timings only (Triton through its interpreter when asked); GPU timing is pending")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu"}
    mismatches: list[str] = []
    sweep: list[Row] = []
    rows: list[Row] = []

    def save() -> None:  # after each section, so a run cut short still leaves its results
        payload = {
            "system": info,
            "rows": [asdict(r) for r in rows],
            "sweep": [asdict(r) for r in sweep],
            "headline": headline_verdict(rows, sweep),
            "mismatches": mismatches,
        }
        out.write_text(json.dumps(payload, indent=2))

    if "triton" in backends:  # first: the headline case's tuning
        sweep, sweep_problems = tuning_sweep(device, args.peak_gbps, args.smoke)
        mismatches += sweep_problems
        print("rejection_sample (with q) at the headline case, Triton tuning sweep:")
        for r in sorted(sweep, key=lambda r: r.median_ms):
            print(
                f"  {r.backend}: {r.median_ms:.4f} ms GPU ({r.launch_ms:.3f} ms with launches), "
                f"{r.achieved_gbps:.0f} GB/s (floor {r.floor_ms:.4f} ms)"
            )
        save()
    rows, grid_problems = run_grid(grid, backends, device, args.peak_gbps)
    mismatches += grid_problems
    print_table(rows, backends)
    verdict = headline_verdict(rows, sweep)
    if verdict:
        print(f"\nheadline B=64 K=8 V=49152: {json.dumps(verdict)}")
    print("backends agree on every case" if not mismatches else f"MISMATCHES: {mismatches}")
    save()
    print(f"wrote {out}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
