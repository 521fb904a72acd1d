"""`specdec bench`: run a sweep interleaved (every method once per prompt and iteration, in turn), then
summarise each method against the target-only baseline and HF `generate`, pair by pair, and write
results.json (every run), results.csv (one row per method) and a table."""

from __future__ import annotations

import csv
import datetime
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from specdec.bench import stats
from specdec.bench.foundation import fmt_optional
from specdec.bench.sweep import BASELINE, HF, Method, SweepConfig
from specdec.bench.targets import Run, Target


async def run_sweep(
    targets: dict[str, Target], cfg: SweepConfig, progress: Callable[[Run], None] | None = None
) -> list[Run]:
    """Every method on every prompt, in turn (interleaved, so a slow phase of the machine hits all methods
    alike); first `cfg.warmup` rounds of every method on the first prompt, recorded with iteration < 0.
    `targets` maps a method kind to what runs it."""
    runs: list[Run] = []
    methods = cfg.methods()
    prompts = cfg.prompts()
    schedule = [(prompts[0], i) for i in range(-cfg.warmup, 0)] + [
        (p, i) for p in prompts for i in range(cfg.iterations)
    ]
    for prompt, iteration in schedule:
        for method in methods:
            run = await targets[method.kind].run(method, prompt, cfg)
            run.prompt_id, run.iteration = prompt.id, iteration
            runs.append(run)
            if progress is not None:
                progress(run)
    return runs


@dataclass
class Row:
    """One (suite, method) over its measured runs."""

    suite: str
    method: str
    kind: str
    draft: str
    k: int
    policy: str
    controller: str
    runs: int
    tokens_per_second: stats.Summary
    latency_s: stats.Summary
    time_to_first_token_ms: stats.Summary | None  # client-side
    inter_token_latency_ms: stats.Summary | None  # client-side, mean per run after the first token
    vs_baseline: float | None  # median of per-run ratios to the target-only run of the same prompt and iteration
    vs_hf: float | None  # the same against HF `generate`
    acceptance_rate: float | None
    mean_accepted_length: float | None
    acceptance_per_position: list[float]  # [i]: accepted / drafted at draft position i, over all runs
    steps: float | None  # mean verify steps per run
    time_split_ms: dict[str, float]  # mean per run: draft, verify, network, prefill (server-reported)
    peak_memory_mib: dict[str, dict[str, float]]  # service -> peak RSS / KV cache, the highest over the runs
    predicted_speedup: float | None  # Leviathan, from the measured acceptance and times
    identical_to_baseline: bool | None  # greedy: the same output as the target-only run, prompt by prompt


def summarise(runs: list[Run], cfg: SweepConfig) -> list[Row]:
    timed = [r for r in runs if r.iteration >= 0]
    methods = {m.label: m for m in cfg.methods()}
    rows = []
    for suite in dict.fromkeys(r.suite for r in timed):
        mine = [r for r in timed if r.suite == suite]
        by_key = {(r.prompt_id, r.iteration, r.method): r for r in mine}
        for label in dict.fromkeys(r.method for r in mine):
            these = [r for r in mine if r.method == label]
            baseline = _paired(these, by_key, BASELINE)
            server = [r.server_stats for r in these if r.server_stats.get("steps")]
            method = methods.get(label, Method("specdec"))
            rows.append(
                Row(
                    suite=suite, method=label, kind=method.kind, draft=method.draft, k=method.k,
                    policy=method.policy, controller=method.controller, runs=len(these),
                    tokens_per_second=stats.summarise([r.tokens_per_second for r in these]),
                    latency_s=stats.summarise([r.seconds for r in these]),
                    time_to_first_token_ms=_summary([r.ttft_s * 1e3 for r in these if r.ttft_s is not None]),
                    inter_token_latency_ms=_summary(
                        [r.inter_token_latency_s * 1e3 for r in these if r.inter_token_latency_s is not None]
                    ),
                    vs_baseline=_ratio(these, baseline),
                    vs_hf=_ratio(these, _paired(these, by_key, HF)),
                    acceptance_rate=_mean([s["acceptance_rate"] for s in server if s.get("draft_tokens")]),
                    mean_accepted_length=_mean([s["mean_accepted_length"] for s in server]),
                    acceptance_per_position=_per_position(server),
                    steps=_mean([s["steps"] for s in server]),
                    time_split_ms={
                        part: statistics.fmean(s.get(f"{part}_ms", 0.0) for s in server)
                        for part in ("draft", "verify", "network", "prefill")
                    } if server else {},
                    peak_memory_mib=_peak_memory(these),
                    predicted_speedup=_predicted(server, [b.server_stats for b in baseline or []]),
                    identical_to_baseline=_identical(these, baseline, cfg),
                )
            )  # fmt: skip
    return rows


def _paired(these: list[Run], by_key: dict[tuple[str, int, str], Run], method: str) -> list[Run] | None:
    """The runs of `method` on the same prompts and iterations as `these`, or None if any is missing."""
    found = [by_key.get((r.prompt_id, r.iteration, method)) for r in these]
    return [f for f in found if f is not None] if all(found) else None


def _ratio(these: list[Run], peers: list[Run] | None) -> float | None:
    if not peers:
        return None
    return stats.paired_ratio([r.tokens_per_second for r in these], [p.tokens_per_second for p in peers])


def _identical(these: list[Run], baseline: list[Run] | None, cfg: SweepConfig) -> bool | None:
    """Greedy identity with the target-only run: token ids where both have them, else text."""
    if baseline is None or cfg.temperature > 0:
        return None
    return all(
        (r.token_ids == b.token_ids) if r.token_ids and b.token_ids else r.text == b.text
        for r, b in zip(these, baseline, strict=True)
    )


def _summary(values: list[float]) -> stats.Summary | None:
    return stats.summarise(values) if values else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _per_position(server: list[dict[str, Any]]) -> list[float]:
    """Acceptance per draft position pooled over runs: sum accepted / sum drafted."""
    drafted: list[int] = []
    accepted: list[int] = []
    for s in server:
        pairs = zip(s.get("drafted_per_position", []), s.get("accepted_per_position", []), strict=True)
        for i, (d, a) in enumerate(pairs):
            if i == len(drafted):
                drafted.append(0)
                accepted.append(0)
            drafted[i] += d
            accepted[i] += a
    return [a / d if d else 0.0 for a, d in zip(accepted, drafted, strict=True)]


def _peak_memory(these: list[Run]) -> dict[str, dict[str, float]]:
    peaks: dict[str, dict[str, float]] = {}
    for run in these:
        for service, figures in run.memory.items():
            mine = peaks.setdefault(service, {})
            for name, value in figures.items():
                mine[name] = max(mine.get(name, 0.0), value)
    return peaks


def _predicted(server: list[dict[str, Any]], base: list[dict[str, Any]]) -> float | None:
    """S = E * t_target / (K * t_draft + t_verify + t_network) with alpha, K and the per-step times averaged
    over the runs, t_target the baseline's time per step."""
    needed = ("steps", "draft_tokens", "accepted_tokens", "draft_ms", "verify_ms", "network_ms")
    drafted = [s for s in server if all(k in s for k in needed) and s["draft_tokens"] and s["steps"]]
    base = [b for b in base if all(k in b for k in needed) and b["steps"]]
    if not drafted or not base:
        return None
    steps = sum(s["steps"] for s in drafted)
    k = sum(s["draft_tokens"] for s in drafted) / steps
    alpha = sum(s["accepted_tokens"] for s in drafted) / sum(s["draft_tokens"] for s in drafted)
    per_token_draft = sum(s["draft_ms"] for s in drafted) / max(1, sum(s["draft_tokens"] for s in drafted))
    verify = sum(s["verify_ms"] for s in drafted) / steps
    network = sum(s["network_ms"] for s in drafted) / steps
    target = sum(b["verify_ms"] + b["network_ms"] for b in base) / sum(b["steps"] for b in base)
    return stats.predicted_speedup(min(alpha, 1.0), max(1, round(k)), per_token_draft, verify, network, target)


def table(rows: list[Row]) -> str:
    lines = [
        "| suite | method | tok/s (median) | vs none | vs HF | latency p50 / p95 / p99 s | TTFT ms | ITL ms "
        "| accept | accepted len | predicted | peak RSS / KV MiB | same output |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lat = r.latency_s
        ttft = r.time_to_first_token_ms.median if r.time_to_first_token_ms else None
        itl = r.inter_token_latency_ms.median if r.inter_token_latency_ms else None
        lines.append(
            f"| {r.suite} | {r.method} | {r.tokens_per_second.median:.1f} | {fmt_optional(r.vs_baseline, '.2f', 'x')} "
            f"| {fmt_optional(r.vs_hf, '.2f', 'x')} | {lat.p50:.2f} / {lat.p95:.2f} / {lat.p99:.2f} "
            f"| {fmt_optional(ttft, '.0f')} | {fmt_optional(itl, '.1f')} | {fmt_optional(r.acceptance_rate, '.0%')} "
            f"| {fmt_optional(r.mean_accepted_length, '.2f')} | {fmt_optional(r.predicted_speedup, '.2f', 'x')} "
            f"| {_memory_cell(r.peak_memory_mib)} | {_yes_no(r.identical_to_baseline)} |"
        )
    return "\n".join(lines)


def _memory_cell(peaks: dict[str, dict[str, float]]) -> str:
    """Peak resident memory (the highest process) / the verifier's peak KV cache."""
    rss = max((p.get("peak_rss_mib", 0.0) for p in peaks.values()), default=None)
    kv = peaks.get("verifier", {}).get("peak_kv_cache_mib")
    return f"{fmt_optional(rss, '.0f')} / {fmt_optional(kv, '.1f')}"


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "NO")


def write_outputs(
    out_dir: Path, cfg: SweepConfig, system: dict[str, Any], runs: list[Run], rows: list[Row],
    extra: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """results.json (the system, the configuration, the summary and every run), results.csv (one row per
    method and suite) and config.yaml (the sweep as a file `--config` reads back)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "specdec bench",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "system": system,
        "config": cfg.to_dict(),
        "summary": [asdict(r) for r in rows],
        "runs": [
            {**asdict(r), "tokens_per_second": r.tokens_per_second, "inter_token_latency_s": r.inter_token_latency_s}
            for r in runs
        ],
        **(extra or {}),
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(csv_row(r))


def csv_row(r: Row) -> list[Any]:
    t, lat = r.tokens_per_second, r.latency_s
    ttft, itl = r.time_to_first_token_ms, r.inter_token_latency_ms
    return [
        r.suite, r.method, r.kind, r.draft, r.k, r.policy, r.controller, r.runs,
        t.median, t.mean, t.std, t.min, t.max, lat.p50, lat.p95, lat.p99,
        ttft.median if ttft else None, ttft.p95 if ttft else None, itl.median if itl else None,
        r.vs_baseline, r.vs_hf, r.acceptance_rate, r.mean_accepted_length,
        " ".join(f"{a:.4f}" for a in r.acceptance_per_position), r.steps,
        *(r.time_split_ms.get(part) for part in ("draft", "verify", "network", "prefill")),
        max((p.get("peak_rss_mib", 0.0) for p in r.peak_memory_mib.values()), default=None),
        r.peak_memory_mib.get("verifier", {}).get("peak_kv_cache_mib"),
        r.peak_memory_mib.get("draft", {}).get("peak_kv_cache_mib"),
        r.predicted_speedup, r.identical_to_baseline,
    ]  # fmt: skip


CSV_COLUMNS = [
    "suite", "method", "kind", "draft", "k", "policy", "controller", "runs",
    "tokens_per_second_median", "tokens_per_second_mean", "tokens_per_second_std", "tokens_per_second_min",
    "tokens_per_second_max", "latency_p50_s", "latency_p95_s", "latency_p99_s",
    "ttft_median_ms", "ttft_p95_ms", "itl_median_ms",
    "vs_baseline", "vs_hf", "acceptance_rate", "mean_accepted_length", "acceptance_per_position", "steps",
    "draft_ms", "verify_ms", "network_ms", "prefill_ms",
    "peak_rss_mib", "verifier_peak_kv_cache_mib", "draft_peak_kv_cache_mib",
    "predicted_speedup", "identical_to_baseline",
]  # fmt: skip
