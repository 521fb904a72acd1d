"""`specdec bench`: run a sweep interleaved (every method once per prompt and iteration, in turn), then
summarise each method against the target-only baseline and HF `generate`, pair by pair, and write
results.json (every run), results.csv (one row per method) and a table."""

from __future__ import annotations

import csv
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specdec.bench import stats
from specdec.bench.foundation import fmt_optional, stats_to_dict
from specdec.bench.peers import hf_generate
from specdec.bench.suites import Prompt
from specdec.bench.sweep import BASELINE, HF, HF_ASSISTED, Method, SweepConfig
from specdec.modeling import LoadedModel, chat_prompt_ids, load_model
from specdec.orchestrator.client import SpecdecClient


@dataclass
class Run:
    """One timed generation."""

    prompt_id: str
    suite: str
    method: str
    iteration: int  # < 0: warm-up
    tokens: int
    seconds: float
    token_ids: list[int]
    server_stats: dict[str, Any] = field(default_factory=dict)  # GenerationStats (specdec rows)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def prompt_ids(lm: LoadedModel, prompt: Prompt) -> list[int]:
    if prompt.prompt:
        return list(lm.tokenizer.encode(prompt.prompt))
    return chat_prompt_ids(lm.tokenizer, [{"role": r, "content": c} for r, c in prompt.messages])


async def run_once(client: SpecdecClient, lm: LoadedModel, method: Method, ids: list[int], cfg: SweepConfig) -> Run:
    start = time.perf_counter()
    server: dict[str, Any] = {}
    if method.kind == HF:
        tokens = hf_generate(lm, ids, cfg.max_new_tokens)
    elif method.kind == HF_ASSISTED and method.draft == "ngram":
        tokens = hf_generate(lm, ids, cfg.max_new_tokens, prompt_lookup_num_tokens=method.k)
    elif method.kind == HF_ASSISTED:  # a model draft: HF's assistant model, K tokens per step as ours
        assistant = _assistant(method.draft.removeprefix("model:"), lm)
        tokens = hf_generate(
            lm, ids, cfg.max_new_tokens, assistant_model=assistant.model, num_assistant_tokens=method.k,
            num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0,
        )  # fmt: skip
    else:
        response = await client.generate(
            prompt_token_ids=ids,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            seed=cfg.seed,
            draft=method.draft,
            k=method.k,
            policy=method.policy,
            k_controller=method.controller,
        )
        tokens = [int(t) for t in response.completions[0].token_ids]
        server = stats_to_dict(response.stats)
    return Run("", "", method.label, 0, len(tokens), time.perf_counter() - start, tokens, server)


_assistants: dict[str, LoadedModel] = {}


def _assistant(name: str, target: LoadedModel) -> LoadedModel:
    """The draft model for HF's assisted generation, loaded once, on the target's device and dtype."""
    if name not in _assistants:
        _assistants[name] = load_model(name, str(target.device), str(target.dtype).removeprefix("torch."))
    return _assistants[name]


async def run_sweep(
    client: SpecdecClient, lm: LoadedModel, cfg: SweepConfig, progress: Callable[[Run], None] | None = None
) -> list[Run]:
    runs: list[Run] = []
    methods = cfg.methods()
    for prompt in cfg.prompts():
        ids = prompt_ids(lm, prompt)
        for iteration in range(-cfg.warmup, cfg.iterations):
            for method in methods:
                run = await run_once(client, lm, method, ids, cfg)
                run.prompt_id, run.suite, run.iteration = prompt.id, prompt.suite, iteration
                runs.append(run)
                if progress is not None:
                    progress(run)
    return runs


@dataclass
class Row:
    """One (suite, method) over its measured runs."""

    suite: str
    method: str
    runs: int
    tokens_per_second: stats.Summary
    latency_s: stats.Summary
    vs_baseline: float  # median of per-run ratios to the target-only run of the same prompt and iteration
    vs_hf: float | None
    acceptance_rate: float | None
    mean_accepted_length: float | None
    time_to_first_token_ms: float | None
    predicted_speedup: float | None  # Leviathan, from the measured acceptance and times
    identical_to_baseline: bool  # greedy: the same token ids as the target-only run, prompt by prompt


def summarise(runs: list[Run], cfg: SweepConfig) -> list[Row]:
    timed = [r for r in runs if r.iteration >= 0]
    rows = []
    for suite in dict.fromkeys(r.suite for r in timed):
        mine = [r for r in timed if r.suite == suite]
        by_key = {(r.prompt_id, r.iteration, r.method): r for r in mine}
        for method in dict.fromkeys(r.method for r in mine):
            these = [r for r in mine if r.method == method]
            baseline = [by_key[(r.prompt_id, r.iteration, BASELINE)] for r in these]
            peers = [by_key.get((r.prompt_id, r.iteration, HF)) for r in these]
            server = [r.server_stats for r in these if r.server_stats]
            rows.append(
                Row(
                    suite=suite,
                    method=method,
                    runs=len(these),
                    tokens_per_second=stats.summarise([r.tokens_per_second for r in these]),
                    latency_s=stats.summarise([r.seconds for r in these]),
                    vs_baseline=stats.paired_ratio(
                        [r.tokens_per_second for r in these], [b.tokens_per_second for b in baseline]
                    ),
                    vs_hf=stats.paired_ratio(
                        [r.tokens_per_second for r in these], [p.tokens_per_second for p in peers if p]
                    )
                    if all(peers)
                    else None,
                    acceptance_rate=_mean([s["acceptance_rate"] for s in server if s["draft_tokens"]]),
                    mean_accepted_length=_mean([s["mean_accepted_length"] for s in server]),
                    time_to_first_token_ms=_mean([s["time_to_first_token_ms"] for s in server]),
                    predicted_speedup=_predicted(server, baseline),
                    identical_to_baseline=cfg.temperature > 0
                    or all(r.token_ids == b.token_ids for r, b in zip(these, baseline, strict=True)),
                )
            )
    return rows


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _predicted(server: list[dict[str, Any]], baseline: list[Run]) -> float | None:
    """S = E * t_target / (K * t_draft + t_verify + t_network) with alpha, K and the per-step times averaged
    over the runs, t_target the baseline's time per step."""
    drafted = [s for s in server if s["draft_tokens"] and s["steps"]]
    base = [b.server_stats for b in baseline if b.server_stats and b.server_stats["steps"]]
    if not drafted or not base:
        return None
    steps = sum(s["steps"] for s in drafted)
    k = sum(s["draft_tokens"] for s in drafted) / steps
    alpha = sum(s["accepted_tokens"] for s in drafted) / sum(s["draft_tokens"] for s in drafted)
    per_token_draft = sum(s["draft_ms"] for s in drafted) / max(1, sum(s["draft_tokens"] for s in drafted))
    verify = sum(s["verify_ms"] for s in drafted) / steps
    network = sum(s["network_ms"] for s in drafted) / steps
    target = sum(b["verify_ms"] + b["network_ms"] for b in base) / sum(b["steps"] for b in base)
    return stats.predicted_speedup(min(alpha, 1.0), round(k), per_token_draft, verify, network, target)


def table(rows: list[Row]) -> str:
    lines = [
        "| suite | method | tok/s (median) | vs none | vs HF | latency p50 / p95 s | TTFT ms | accept | "
        "accepted len | predicted | same tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.suite} | {r.method} | {r.tokens_per_second.median:.1f} | {r.vs_baseline:.2f}x "
            f"| {fmt_optional(r.vs_hf, '.2f', 'x')} | {r.latency_s.p50:.2f} / {r.latency_s.p95:.2f} "
            f"| {fmt_optional(r.time_to_first_token_ms, '.0f')} | {fmt_optional(r.acceptance_rate, '.0%')} "
            f"| {fmt_optional(r.mean_accepted_length, '.2f')} | {fmt_optional(r.predicted_speedup, '.2f', 'x')} "
            f"| {'yes' if r.identical_to_baseline else 'NO'} |"
        )
    return "\n".join(lines)


def write_outputs(out_dir: Path, cfg: SweepConfig, system: dict[str, Any], runs: list[Run], rows: list[Row]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    doc = {
        "benchmark": "specdec bench",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "system": system,
        "config": config,
        "summary": [asdict(r) for r in rows],
        "runs": [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in runs],
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            t, lat = r.tokens_per_second, r.latency_s
            writer.writerow([
                r.suite, r.method, r.runs, t.median, t.mean, t.std, t.min, t.max, lat.p50, lat.p95, lat.p99,
                r.vs_baseline, r.vs_hf, r.acceptance_rate, r.mean_accepted_length, r.time_to_first_token_ms,
                r.predicted_speedup, r.identical_to_baseline,
            ])  # fmt: skip


CSV_COLUMNS = [
    "suite", "method", "runs", "tokens_per_second_median", "tokens_per_second_mean", "tokens_per_second_std",
    "tokens_per_second_min", "tokens_per_second_max", "latency_p50_s", "latency_p95_s", "latency_p99_s",
    "vs_baseline", "vs_hf", "acceptance_rate", "mean_accepted_length", "time_to_first_token_ms",
    "predicted_speedup", "identical_to_baseline",
]  # fmt: skip
