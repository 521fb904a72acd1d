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


@dataclass
class Row:
    kernel: str
    backend: str
    device: str
    batch: int
    k: int
    vocab: int
    median_ms: float
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
        "uniforms": torch.rand(b, k, device=device, generator=gen),
        "noise": torch.empty(b, k + 1, v, device=device).exponential_(generator=gen),
    }


def floor_bytes(kernel: str, inputs: dict[str, torch.Tensor], num_accepted: torch.Tensor) -> int:
    """The bytes the step must read: greedy reads (a+1) logit rows; rejection reads one p, noise (and q,
    after a rejection) row plus the gathered scalars."""
    v = inputs["p"].shape[-1]
    k = inputs["drafts"].shape[1]
    element = inputs["p"].element_size()
    if kernel == "greedy_verify":
        return int((num_accepted + 1).sum()) * v * element
    rejected = int((num_accepted < k).sum())
    rows = num_accepted.numel()
    return (2 * rows + rejected) * v * element + rows * k * 3 * element


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, return_mode="median"))
    fn()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def bench_case(kernel: str, backend: str, b: int, k: int, v: int, device: torch.device, peak_gbps: float) -> Row:
    x = make_inputs(b, k, v, device)
    if kernel == "greedy_verify":

        def call() -> tuple[torch.Tensor, torch.Tensor]:
            return kernels.greedy_verify(x["logits"], x["drafts"], x["num_draft"], backend=backend)
    else:

        def call() -> tuple[torch.Tensor, torch.Tensor]:
            return kernels.rejection_sample(
                x["p"], x["q"], x["drafts"], x["num_draft"], x["uniforms"], x["noise"], backend=backend
            )

    num_accepted, _ = call()
    assert kernels.last_backend() == backend
    ms = time_ms(call, device)
    floor = floor_bytes(kernel, x, num_accepted)
    return Row(kernel, backend, device.type, b, k, v, ms, floor, floor / ms / 1e6, floor / (peak_gbps * 1e6))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/kernels.json")
    parser.add_argument("--peak-gbps", type=float, default=4800.0, help="device peak bandwidth (H200: 4800)")
    parser.add_argument("--smoke", action="store_true", help="tiny grid (tests)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    backends = ["torch", "triton"] if cuda else ["torch"]
    if args.smoke:
        grid = [(1, 1, 64), (2, 4, 128)]
    elif cuda:
        grid = [(b, k, v) for b in (1, 8, 64) for k in (1, 4, 8) for v in (32000, 49152, 128256)]
    else:
        grid = [(b, k, 49152) for b in (1, 8) for k in (1, 4, 8)]
    if not cuda:
        print("no CUDA device: timing the torch reference on the CPU only; Triton timing is pending a GPU")
    rows = [
        bench_case(kernel, backend, b, k, v, device, args.peak_gbps)
        for kernel in ("greedy_verify", "rejection_sample")
        for (b, k, v) in grid
        for backend in backends
    ]
    print(f"| kernel | B | K | V | {' | '.join(f'{b} ms' for b in backends)} | floor ms | best GB/s | speedup |")
    print("|---|---:|---:|---:|" + "---:|" * (len(backends) + 3))
    for i in range(0, len(rows), len(backends)):
        group = rows[i : i + len(backends)]
        first = group[0]
        times = " | ".join(f"{r.median_ms:.3f}" for r in group)
        speedup = group[0].median_ms / group[-1].median_ms
        best = max(r.achieved_gbps for r in group)
        print(
            f"| {first.kernel} | {first.batch} | {first.k} | {first.vocab} | {times} | {first.floor_ms:.4f} | "
            f"{best:.1f} | {speedup:.2f}x |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu"}
    out.write_text(json.dumps({"system": info, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
