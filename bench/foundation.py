"""Foundation benchmark: HF `generate` vs. the three services: `--draft none` and the n-gram draft under
every K controller (fixed K=4, fixed K=8, heuristic, confidence, cost).

One run on the default model (SmolLM2-135M-Instruct, float32 on CPU) over three chat prompts shipped here:
a chat question, a code edit (the answer copies much of the prompt) and a summary. For each prompt the
methods run interleaved (hf, none, ngram4, ..., hf, none, ...) after one warm-up round, and the benchmark
reports the median tokens/s per method, its ratio to HF `generate` and to `none` (ratio of medians, and the
median of the per-round ratios, which cancels slow phases of a shared machine), the n-gram acceptance,
whether every method produced the same token ids (greedy identity), and the `cost` controller's goals:
chat >= 0.97x `none`, code-edit and summarisation >= 80% of the best fixed-K speedup.

    python -m specdec.bench.foundation [--repeats 3] [--max-new-tokens 96] [--out results/foundation.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from specdec.bench import stats
from specdec.bench.peers import hf_generate
from specdec.modeling import LoadedModel, chat_prompt_ids, load_model
from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.embedded import EmbeddedStack
from specdec.wire import message_dict

CODE_SNIPPET = """def summarize_orders(orders, min_total=0.0):
    tmp = {}
    for order in orders:
        customer = order["customer"]
        amount = order["quantity"] * order["unit_price"]
        if order.get("discount"):
            amount = amount * (1 - order["discount"])
        if customer not in tmp:
            tmp[customer] = 0.0
        tmp[customer] += amount
    result = []
    for customer, total in tmp.items():
        if total < min_total:
            continue
        result.append((customer, round(total, 2)))
    result.sort(key=lambda pair: pair[1], reverse=True)
    if not result:
        return []
    best_customer, best_total = result[0]
    print(f"Top customer: {best_customer} ({best_total})")
    return result
"""

ARTICLE = (
    "The city council of Riverton voted on Tuesday to convert three downtown parking lots into public parks "
    "over the next two years. The decision follows a year of public meetings in which residents complained "
    "about the lack of green space in the city centre, where summer temperatures have risen steadily over "
    "the past decade. Supporters argued that trees and grass would cool the area, absorb rainwater during "
    "storms and give families a place to gather. Local business owners were divided. Some welcomed the plan, "
    "saying that parks would bring more visitors to nearby shops and cafes, while others worried that losing "
    "about four hundred parking spaces would drive customers to the suburban mall. To address these concerns, "
    "the council also approved funding for a new parking garage near the train station and promised to "
    "extend bus service in the evenings. The first park, on Elm Street, is expected to open next spring. It "
    "will include a playground, a small stage for concerts and a community garden managed by volunteers. "
    "The total cost of the project is estimated at twelve million dollars, half of which will come from a "
    "state grant for climate adaptation. The mayor called the vote a turning point for the city."
)

PROMPTS: dict[str, str] = {
    "chat": "What are three tips for staying productive when working from home?",
    "code-edit": (
        "Rename the variable `tmp` to `totals_by_customer` in the following Python function and add a "
        "docstring. Reply with the complete updated function only.\n\n```python\n" + CODE_SNIPPET + "```"
    ),
    "summarise": "Summarise the following article in 3 sentences:\n\n" + ARTICLE,
}


@dataclass(frozen=True)
class Method:
    """One way to generate: HF `generate` in-process, or a draft/K through the services."""

    name: str
    draft: str = ""  # "" = HF generate; else the `draft` field of the request
    k: int | None = None  # the fixed or starting K
    k_controller: str = "fixed"


METHODS = (
    Method("hf"),
    Method("none", draft="none"),
    Method("ngram4", draft="ngram", k=4),
    Method("ngram8", draft="ngram", k=8),
    Method("ngram-heuristic", draft="ngram", k=4, k_controller="heuristic"),
    Method("ngram-confidence", draft="ngram", k=4, k_controller="confidence"),  # prompt lookup has no confidence
    Method("ngram-cost", draft="ngram", k=4, k_controller="cost"),
)
FIXED_K = ("ngram4", "ngram8")
COST = "ngram-cost"


@dataclass
class Measurement:
    """One timed call."""

    prompt: str
    method: str
    repeat: int  # -1 for the warm-up
    tokens: int
    seconds: float
    token_ids: list[int]
    stats: dict[str, Any] = field(default_factory=dict)  # the server's GenerationStats (services only)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, tokens/s included."""
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


@dataclass
class Summary:
    """The medians of one (prompt, method) over the measured repeats."""

    prompt: str
    method: str
    tokens: int
    median_tokens_per_second: float
    vs_hf: float
    vs_none: float
    vs_none_paired: float  # median over rounds of (this method / `none` in the same round)
    acceptance_rate: float | None
    mean_accepted_length: float | None


def prompt_token_ids(lm: LoadedModel, content: str) -> list[int]:
    """One user message through the chat template with a generation prompt, as the orchestrator does."""
    return chat_prompt_ids(lm.tokenizer, [{"role": "user", "content": content}])


async def measure(
    client: SpecdecClient, lm: LoadedModel, method: Method, ids: list[int], max_new_tokens: int
) -> tuple[list[int], float, dict[str, Any]]:
    """Run one method once; returns (new token ids, client-side wall seconds, server stats)."""
    if not method.draft:
        start = time.perf_counter()
        tokens = hf_generate(lm, ids, max_new_tokens)
        return tokens, time.perf_counter() - start, {}
    start = time.perf_counter()
    response = await client.generate(
        prompt_token_ids=ids,
        max_new_tokens=max_new_tokens,
        draft=method.draft,
        k=method.k,
        k_controller=method.k_controller,
    )
    seconds = time.perf_counter() - start
    return [int(t) for t in response.completions[0].token_ids], seconds, message_dict(response.stats)


async def bench_prompt(
    client: SpecdecClient, lm: LoadedModel, name: str, repeats: int, max_new_tokens: int
) -> list[Measurement]:
    """One warm-up round, then `repeats` interleaved rounds of every method on one prompt."""
    ids = prompt_token_ids(lm, PROMPTS[name])
    results: list[Measurement] = []
    for repeat in range(-1, repeats):
        for method in METHODS:
            tokens, seconds, stats = await measure(client, lm, method, ids, max_new_tokens)
            m = Measurement(name, method.name, repeat, len(tokens), seconds, tokens, stats)
            results.append(m)
            label = "warm-up" if repeat < 0 else f"repeat {repeat + 1}/{repeats}"
            print(
                f"  {name:<10} {method.name:<15} {label:<13} {m.tokens:>4} tok {m.tokens_per_second:8.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )
    return results


async def run_all(lm: LoadedModel, repeats: int, max_new_tokens: int) -> list[Measurement]:
    """Start the embedded stack on the loaded model and benchmark every prompt."""
    results: list[Measurement] = []
    stack = EmbeddedStack(target_model=lm, device="cpu", dtype="float32")
    async with stack, SpecdecClient(stack.address) as client:
        for name in PROMPTS:
            results += await bench_prompt(client, lm, name, repeats, max_new_tokens)
    return results


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(measurements: list[Measurement]) -> list[Summary]:
    """Median tokens/s per (prompt, method) over the measured repeats, with ratios to HF and to `none`."""
    summaries: list[Summary] = []
    for prompt in PROMPTS:
        timed = [m for m in measurements if m.prompt == prompt and m.repeat >= 0]
        medians = {
            meth.name: _median([m.tokens_per_second for m in timed if m.method == meth.name]) or 0.0 for meth in METHODS
        }
        for meth in METHODS:
            runs = [m for m in timed if m.method == meth.name]
            drafted = bool(meth.draft) and meth.draft != "none"
            summaries.append(
                Summary(
                    prompt=prompt,
                    method=meth.name,
                    tokens=runs[0].tokens if runs else 0,
                    median_tokens_per_second=medians[meth.name],
                    vs_hf=_ratio(medians[meth.name], medians["hf"]),
                    vs_none=_ratio(medians[meth.name], medians["none"]),
                    vs_none_paired=paired_ratio(timed, meth.name, "none"),
                    acceptance_rate=_median([m.stats["acceptance_rate"] for m in runs]) if drafted else None,
                    mean_accepted_length=_median([m.stats["mean_accepted_length"] for m in runs]) if drafted else None,
                )
            )
    return summaries


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def paired_ratio(timed: list[Measurement], method: str, baseline: str) -> float:
    """Median over the measured rounds of tokens/s(method) / tokens/s(baseline) within the same round."""
    pairs = [
        (a, b) for a in timed for b in timed if a.repeat == b.repeat and (a.method, b.method) == (method, baseline)
    ]
    if not pairs:
        return 0.0
    return stats.paired_ratio([a.tokens_per_second for a, _ in pairs], [b.tokens_per_second for _, b in pairs])


def goal_lines(summaries: list[Summary]) -> list[str]:
    """The `cost` controller's goals, each PASS or FAIL with the numbers behind it."""
    by = {(s.prompt, s.method): s for s in summaries}
    lines = []
    chat = by[("chat", COST)].vs_none_paired
    lines.append(f"{'PASS' if chat >= 0.97 else 'FAIL'}: chat, cost vs none = {chat:.2f}x (goal >= 0.97x)")
    for prompt in ("code-edit", "summarise"):
        best = max(FIXED_K, key=lambda m: by[(prompt, m)].vs_none_paired)
        best_speedup, cost = by[(prompt, best)].vs_none_paired, by[(prompt, COST)].vs_none_paired
        kept = cost / best_speedup if best_speedup > 0 else 0.0
        gain = (cost - 1) / (best_speedup - 1) if best_speedup > 1 else float(cost >= 1)
        lines.append(
            f"{'PASS' if kept >= 0.8 else 'FAIL'}: {prompt}, cost {cost:.2f}x vs best fixed ({best}) "
            f"{best_speedup:.2f}x = {kept:.0%} of its speedup (goal >= 80%; {gain:.0%} of its gain over none)"
        )
    return lines


def identity_warnings(measurements: list[Measurement]) -> list[str]:
    """Lines naming every measurement whose token ids differ from HF's warm-up output on the same prompt."""
    lines: list[str] = []
    for prompt in PROMPTS:
        ref = next(m.token_ids for m in measurements if m.prompt == prompt and m.method == "hf")
        for m in measurements:
            if m.prompt != prompt or m.token_ids == ref:
                continue
            at = next((i for i, (a, b) in enumerate(zip(m.token_ids, ref, strict=False)) if a != b), None)
            where = f"first differs at token {at}" if at is not None else f"length {len(m.token_ids)} vs {len(ref)}"
            lines.append(f"WARNING: greedy identity broken: {prompt}/{m.method} repeat {m.repeat}: {where}")
    return lines


def fmt_optional(value: float | None, spec: str, suffix: str = "") -> str:
    """A number formatted with `spec` (and `suffix`), or a dash for a missing one."""
    return "—" if value is None else format(value, spec) + suffix


def markdown_table(summaries: list[Summary]) -> str:
    """The summaries as a markdown table."""
    lines = [
        "| prompt | method | tokens | median tok/s | vs HF | vs none | vs none, paired | acceptance "
        "| mean accepted len |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.prompt} | {s.method} | {s.tokens} | {s.median_tokens_per_second:.1f} | {s.vs_hf:.2f}x "
            f"| {s.vs_none:.2f}x | {s.vs_none_paired:.2f}x | {fmt_optional(s.acceptance_rate, '.0%')} "
            f"| {fmt_optional(s.mean_accepted_length, '.2f')} |"
        )
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info(lm: LoadedModel) -> dict[str, Any]:
    """Versions, threads, CPU and model facts, recorded with the results."""
    import transformers

    from specdec import __version__

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "specdec": __version__,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "model": lm.name,
        "model_path": lm.path,
        "device": str(lm.device),
        "dtype": str(lm.dtype),
    }


def write_json(
    path: Path,
    info: dict[str, Any],
    args: argparse.Namespace,
    measurements: list[Measurement],
    summaries: list[Summary],
    warnings: list[str],
) -> None:
    """Every measurement, the summaries and the system info, as one JSON file (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "foundation",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "system": info,
        "settings": {"repeats": args.repeats, "max_new_tokens": args.max_new_tokens},
        "prompts": PROMPTS,
        "methods": [asdict(m) for m in METHODS],
        "greedy_identical": not warnings,
        "warnings": warnings,
        "goals": goal_lines(summaries),
        "summary": [asdict(s) for s in summaries],
        "measurements": [m.to_json() for m in measurements],
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m specdec.bench.foundation",
        description="HF generate vs. the specdec services on the default model.",
    )
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds per prompt, after one warm-up")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("results/foundation.json"), help="JSON results file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Load the default model, benchmark, print the table and warnings, write the JSON."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.max_new_tokens < 1:
        raise SystemExit("--repeats and --max-new-tokens must be at least 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    lm = load_model("", device="cpu", dtype="float32")
    info = system_info(lm)
    print(f"{lm.name} on {info['cpu_model']}, {info['torch_num_threads']} torch threads", file=sys.stderr)
    measurements = asyncio.run(run_all(lm, args.repeats, args.max_new_tokens))
    summaries = summarise(measurements)
    warnings = identity_warnings(measurements)
    print(markdown_table(summaries))
    for line in warnings:
        print(line)
    if not warnings:
        print("\nAll methods produced identical token ids on every prompt (greedy identity holds).")
    goals = goal_lines(summaries)
    print("\n".join(["", *goals]))
    write_json(args.out, info, args, measurements, summaries, warnings)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
