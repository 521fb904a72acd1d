"""Statistics of benchmark runs: summaries across iterations, latency percentiles, paired ratios, and the
speedup the Leviathan cost model predicts from measured acceptance and times. Pure functions on numbers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from specdec.orchestrator.cost_model import expected_tokens


@dataclass(frozen=True)
class Summary:
    """One quantity across iterations."""

    n: int
    mean: float
    median: float
    std: float  # sample standard deviation (0 with one value)
    min: float
    max: float
    p50: float
    p95: float
    p99: float


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lower = math.floor(rank)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (rank - lower)


def summarise(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("summary of no values")
    return Summary(
        n=len(values),
        mean=statistics.fmean(values),
        median=statistics.median(values),
        std=statistics.stdev(values) if len(values) > 1 else 0.0,
        min=min(values),
        max=max(values),
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
    )


def paired_ratio(values: Sequence[float], baseline: Sequence[float]) -> float:
    """Median over iterations of values[i] / baseline[i]: runs measured side by side share a machine's slow
    phases, so their ratios are steadier than the ratio of two medians."""
    if len(values) != len(baseline) or not values:
        raise ValueError(f"need equally many values and baselines, got {len(values)} and {len(baseline)}")
    return statistics.median(v / b for v, b in zip(values, baseline, strict=True) if b > 0)


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Leviathan et al.: E = (1 - alpha^(K+1)) / (1 - alpha) tokens per step, the target's own included."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return expected_tokens(alpha, alpha, k)  # the controller's form with one rate for every position


def predicted_speedup(
    alpha: float, k: int, draft_ms_per_token: float, verify_ms: float, network_ms: float, target_ms: float
) -> float:
    """S = E * t_target / (K * t_draft + t_verify + t_network): the speedup over target-only decoding (a
    step of `target_ms` per token) that the measured acceptance and per-step times predict."""
    step_ms = k * draft_ms_per_token + verify_ms + network_ms
    if step_ms <= 0:
        raise ValueError("a step must take some time")
    return expected_tokens_per_step(alpha, k) * target_ms / step_ms
