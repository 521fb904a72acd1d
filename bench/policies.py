"""What the LOSSY acceptance policies cost in quality and gain in speed, on the default model.

For each prompt (the foundation's three and two more), greedy (temperature 0), the n-gram draft at fixed
K = 4 (what a lossy request gets by default: `cost` would make its output depend on timings), it runs
`--draft none` (the target's own greedy output, the reference), the lossless `exact` policy and each lossy
policy (`typical`, `topk-agree`, `threshold`, default parameters) interleaved, after one warm-up round, and
reports per policy:

- speed: median tokens/s and the median per-round ratio to `none` and to `exact`;
- agreement with the target's greedy output: identical or not, and the share of it reproduced before the
  first differing token;
- the target's mean per-token log-likelihood of the output, minus that of its greedy output (0 = as likely
  as greedy; negative = text the target finds less likely).

    python -m specdec.bench.policies [--repeats 2] [--max-new-tokens 96] [--out results/policies.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from specdec.bench import stats
from specdec.bench.foundation import PROMPTS, prompt_token_ids, system_info
from specdec.modeling import LoadedModel, load_model
from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.embedded import EmbeddedStack

MORE_PROMPTS = {
    "json-fix": 'Fix the syntax errors in this JSON and reply with the corrected JSON only:\n{"name": "Ada", '
    '"age": 36, "skills": ["math", "poetry",], "address": {"city": "London" "country": "UK"}}',
    "explain": "Explain the difference between a list and a tuple in Python.",
}
POLICIES = ("none", "exact", "typical", "topk-agree", "threshold")
K = 4


@dataclass
class Run:
    prompt: str
    policy: str
    repeat: int  # -1: warm-up
    token_ids: list[int]
    logprobs: list[float]
    tokens_per_second: float
    acceptance_rate: float
    mean_accepted_length: float


@dataclass
class PolicySummary:
    prompt: str
    policy: str
    median_tokens_per_second: float
    vs_none: float  # median over rounds of tokens/s / `none`'s in the same round
    vs_exact: float
    identical_to_greedy: bool
    greedy_prefix_share: float  # share of the greedy output reproduced before the first difference
    loglik_per_token_delta: float  # mean target log-likelihood per token minus the greedy output's
    acceptance_rate: float
    mean_accepted_length: float


async def run_once(client: SpecdecClient, ids: list[int], policy: str, max_new_tokens: int) -> Run:
    response = await client.generate(
        prompt_token_ids=ids,
        max_new_tokens=max_new_tokens,
        draft="none" if policy == "none" else "ngram",
        k=K,
        k_controller="fixed",
        policy="" if policy == "none" else policy,
        return_logprobs=True,
    )
    c, s = response.completions[0], response.stats
    return Run("", policy, 0, list(c.token_ids), list(c.logprobs), s.tokens_per_second, s.acceptance_rate,
               s.mean_accepted_length)  # fmt: skip


async def bench(lm: LoadedModel, repeats: int, max_new_tokens: int) -> list[Run]:
    runs: list[Run] = []
    stack = EmbeddedStack(target_model=lm, device="cpu", dtype="float32")
    async with stack, SpecdecClient(stack.address) as client:
        for name, content in {**PROMPTS, **MORE_PROMPTS}.items():
            ids = prompt_token_ids(lm, content)
            for repeat in range(-1, repeats):
                for policy in POLICIES:
                    run = await run_once(client, ids, policy, max_new_tokens)
                    run.prompt, run.repeat = name, repeat
                    runs.append(run)
                    print(f"  {name:<10} {policy:<11} {repeat:>2} {run.tokens_per_second:6.1f} tok/s",
                          file=sys.stderr, flush=True)  # fmt: skip
    return runs


def _paired(runs: list[Run], policy: str, baseline: str) -> float:
    pairs = [(a, b) for a in runs for b in runs if a.repeat == b.repeat and (a.policy, b.policy) == (policy, baseline)]
    if not pairs:
        return 0.0
    return stats.paired_ratio([a.tokens_per_second for a, _ in pairs], [b.tokens_per_second for _, b in pairs])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarise(runs: list[Run]) -> list[PolicySummary]:
    out = []
    for prompt in dict.fromkeys(r.prompt for r in runs):
        timed = [r for r in runs if r.prompt == prompt and r.repeat >= 0]
        greedy = next(r for r in timed if r.policy == "none")
        for policy in POLICIES:
            mine = [r for r in timed if r.policy == policy]
            first = mine[0]  # greedy decoding: every round produces the same tokens
            agree = next(
                (i for i, (a, b) in enumerate(zip(first.token_ids, greedy.token_ids, strict=False)) if a != b), None
            )
            prefix = min(len(first.token_ids), len(greedy.token_ids)) if agree is None else agree
            out.append(
                PolicySummary(
                    prompt=prompt,
                    policy=policy,
                    median_tokens_per_second=statistics.median(r.tokens_per_second for r in mine),
                    vs_none=_paired(timed, policy, "none"),
                    vs_exact=_paired(timed, policy, "exact"),
                    identical_to_greedy=first.token_ids == greedy.token_ids,
                    greedy_prefix_share=prefix / max(1, len(greedy.token_ids)),
                    loglik_per_token_delta=_mean(first.logprobs) - _mean(greedy.logprobs),
                    acceptance_rate=statistics.median(r.acceptance_rate for r in mine),
                    mean_accepted_length=statistics.median(r.mean_accepted_length for r in mine),
                )
            )
    return out


def overall(summaries: list[PolicySummary]) -> list[str]:
    """One line per policy over all prompts: geometric-mean speed, identical outputs, mean log-lik delta."""
    lines = ["| policy | speed vs none (geo-mean) | speed vs exact | identical to greedy | greedy prefix kept "
             "| log-lik/token vs greedy |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for policy in POLICIES:
        mine = [s for s in summaries if s.policy == policy]
        speed = statistics.geometric_mean(max(s.vs_none, 1e-9) for s in mine)
        vs_exact = statistics.geometric_mean(max(s.vs_exact, 1e-9) for s in mine)
        lines.append(
            f"| {policy} | {speed:.2f}x | {vs_exact:.2f}x | {sum(s.identical_to_greedy for s in mine)}/{len(mine)} "
            f"| {_mean([s.greedy_prefix_share for s in mine]):.0%} "
            f"| {_mean([s.loglik_per_token_delta for s in mine]):+.3f} |"
        )
    return lines


def table(summaries: list[PolicySummary]) -> list[str]:
    lines = ["| prompt | policy | tok/s | vs none | vs exact | identical | greedy prefix | log-lik delta | accept "
             "| accepted len |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for s in summaries:
        lines.append(
            f"| {s.prompt} | {s.policy} | {s.median_tokens_per_second:.1f} | {s.vs_none:.2f}x | {s.vs_exact:.2f}x "
            f"| {'yes' if s.identical_to_greedy else 'no'} | {s.greedy_prefix_share:.0%} "
            f"| {s.loglik_per_token_delta:+.3f} | {s.acceptance_rate:.0%} | {s.mean_accepted_length:.2f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specdec.bench.policies", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="measured rounds per prompt, after one warm-up")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("results/policies.json"))
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.max_new_tokens < 1:
        raise SystemExit("--repeats and --max-new-tokens must be at least 1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    lm = load_model("", device="cpu", dtype="float32")
    runs = asyncio.run(bench(lm, args.repeats, args.max_new_tokens))
    summaries = summarise(runs)
    print("\n".join([*overall(summaries), "", *table(summaries)]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "policies",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "system": system_info(lm),
        "settings": {"repeats": args.repeats, "max_new_tokens": args.max_new_tokens, "draft": "ngram", "k": K},
        "prompts": {**PROMPTS, **MORE_PROMPTS},
        "overall": overall(summaries),
        "summary": [asdict(s) for s in summaries],
        "runs": [asdict(r) for r in runs],
    }
    args.out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
