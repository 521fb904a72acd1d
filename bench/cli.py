"""`specdec bench`: its flags (or a YAML sweep file) and the run: embedded services, a running deployment over gRPC
(`--orchestrator`) or any OpenAI-compatible server (`--openai-url`); a sequential interleaved sweep, or load mode
(`--concurrency/--rate`); then the table, results.json/csv, config.yaml and the plots."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from specdec.draftspec import SYNTAX as DRAFT_SYNTAX


def csv_of(kind: type) -> Callable[[str], list[Any]]:
    """A comma-separated flag value as a list (an empty item is "" for strings, e.g. the default policy)."""

    def parse(text: str) -> list[Any]:
        return [kind(part.strip()) if part.strip() or kind is int else "" for part in text.split(",")]

    return parse


def add_bench_parser(
    commands: Any,
    add_model_flags: Callable[[argparse.ArgumentParser], None],
    add_client_security_flags: Callable[[argparse.ArgumentParser], None] | None = None,
    security_from_args: Callable[[argparse.Namespace], Any] | None = None,
) -> None:
    """The `bench` subcommand; the security hooks add `--auth-token`/TLS flags for `--orchestrator` targets."""
    bench = commands.add_parser(
        "bench",
        help="benchmark drafts, K, policies and controllers against target-only decoding and HF, interleaved",
        description="Every speed is also a ratio to the target-only run and to HF generate, measured pair by pair.",
    )
    bench.add_argument("--config", type=Path, default=None, help="a YAML sweep file (keys = flags; flags override)")
    what = bench.add_argument_group("what to run")
    what.add_argument("--suite", type=csv_of(str), default=["chat", "code", "summarise"], help="comma-separated")
    what.add_argument("--prompts", type=Path, default=None, help="a JSONL prompt file instead of the suites")
    what.add_argument("--prompts-per-suite", type=int, default=3, help="0: all")
    what.add_argument("--draft", type=csv_of(str), default=None, help=f"comma-separated {DRAFT_SYNTAX} (default ngram)")
    what.add_argument("--k", type=csv_of(int), default=[4], help="comma-separated K values, e.g. 1,2,4,8")
    what.add_argument("--policy", type=csv_of(str), default=[""], help="comma-separated; empty: by temperature")
    what.add_argument("--k-controller", type=csv_of(str), default=["fixed"], help="comma-separated")
    what.add_argument(
        "--tree-nodes", type=csv_of(int), default=[0],
        help="comma-separated token-tree sizes (0 = chains; trees: lossless policies, eagle), e.g. 0,8",
    )  # fmt: skip
    what.add_argument(
        "--draft-min-confidence", type=float, default=0.0,
        help="sent with every propose: the confidence controller's p_min; for trees, the least path probability",
    )  # fmt: skip
    what.add_argument("--max-new-tokens", type=int, default=64)
    what.add_argument("--iterations", type=int, default=1)
    what.add_argument("--warmup", type=int, default=1, help="rounds of every method on the first prompt, untimed")
    what.add_argument("--temperature", type=float, default=0.0)
    what.add_argument("--seed", type=int, default=0)
    what.add_argument(
        "--hf", action=argparse.BooleanOptionalAction, default=None,
        help="HF generate / assisted-generation peers in this process (default: on for embedded services)",
    )  # fmt: skip
    where = bench.add_argument_group("what to measure (default: the services embedded in this process)")
    where.add_argument("--target", default="", help="HF id or path of the target (embedded) / of the HF peers")
    where.add_argument("--orchestrator", default=None, help="HOST:PORT of a running specdec deployment (gRPC)")
    where.add_argument("--openai-url", default=None, help="base URL of an OpenAI-compatible server")
    where.add_argument("--model", default=None, help="--openai-url: the model id (default: the first listed)")
    where.add_argument("--api-key", default=None, help="--openai-url: bearer token (default env OPENAI_API_KEY)")
    perf = bench.add_argument_group("performance report (instead of the sweep; bench/perf.py)")
    perf.add_argument(
        "--perf", action="store_true",
        help="lean path vs HF generate, 1 vs --concurrency (default 8) sessions, and the draft's speedup at each "
        "--rtt-ms with draft-ahead off and on (first --draft and --k; default ngram, K=8)",
    )  # fmt: skip
    perf.add_argument("--rtt-ms", type=csv_of(float), default=[0.0, 5.0, 20.0], help="added round trips to try")
    load = bench.add_argument_group("load mode (instead of the sequential sweep)")
    load.add_argument("--concurrency", type=int, default=None, help="concurrent clients")
    load.add_argument("--rate", type=float, default=None, help="request starts per second (default: unpaced)")
    load.add_argument("--requests", type=int, default=None, help="requests per method (default 4 x concurrency)")
    load.add_argument("--duration", type=float, default=None, help="seconds per method; stops issuing after it")
    out = bench.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="results folder (default results/bench-TIMESTAMP)")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_flags(bench)
    if add_client_security_flags is not None:
        add_client_security_flags(where)
    bench.set_defaults(_parser=bench, _security=security_from_args)


def apply_config(root: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace) -> Any:
    """Re-parse with the sweep file's values as defaults, so that flags given on the command line win."""
    from specdec.bench.config import read_config

    if getattr(args, "config", None) is None:
        return args
    args._parser.set_defaults(**read_config(args.config, args._parser))
    return root.parse_args(argv)


async def run_bench(args: argparse.Namespace) -> int:
    from specdec.bench.sweep import SweepConfig

    remote = args.orchestrator is not None or args.openai_url is not None
    if args.orchestrator and args.openai_url:
        return _usage_error("give at most one of --orchestrator and --openai-url")
    cfg = SweepConfig(
        suites=args.suite, prompts_file=args.prompts, prompts_per_suite=args.prompts_per_suite,
        drafts=args.draft or ["ngram"], ks=args.k, policies=args.policy, controllers=args.k_controller,
        tree_nodes=args.tree_nodes, draft_min_confidence=args.draft_min_confidence,
        max_new_tokens=args.max_new_tokens, iterations=args.iterations, warmup=args.warmup,
        temperature=args.temperature, seed=args.seed, hf_peers=not remote if args.hf is None else args.hf,
        remote_as_is=args.openai_url is not None and args.draft is None,
    )  # fmt: skip
    if args.perf:
        return await _perf(args, cfg)
    load_mode = args.concurrency is not None or args.rate is not None
    try:
        cfg.validate()
        prompts = cfg.prompts()
        if load_mode and (args.concurrency or 1) < 1:
            raise ValueError("--concurrency must be >= 1")
    except ValueError as exc:
        return _usage_error(str(exc))
    out = args.out or Path("results") / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    async with AsyncExitStack() as stack:
        targets, system = await _targets(args, cfg, stack)
        if load_mode:
            return await _load(args, cfg, targets, system, out)
        rows, runs = await _sweep(args, cfg, targets, len(prompts))
    return _report(args, cfg, system, runs, rows, out)


async def _perf(args: argparse.Namespace, cfg: Any) -> int:
    import json

    from specdec import compute
    from specdec.bench.foundation import system_info
    from specdec.bench.perf import PerfConfig, format_report, run_perf
    from specdec.modeling import load_model

    if args.orchestrator or args.openai_url:
        return _usage_error("--perf runs its own services (with added latency); it cannot use a remote target")
    perf = PerfConfig(
        suites=cfg.suites, prompts_per_suite=cfg.prompts_per_suite or 2, max_new_tokens=cfg.max_new_tokens,
        draft=cfg.drafts[0], k=args.k[0] if args.k != [4] else 8, concurrency=args.concurrency or 8,
        rtts_ms=[0.0, *[r for r in args.rtt_ms if r > 0]], prompts_file=cfg.prompts_file,
    )  # fmt: skip
    lm = await compute.run(load_model, args.target, args.device, args.dtype)
    report = await run_perf(lm, perf)
    report["system"] = system_info(lm)
    out = args.out or Path("results") / f"perf-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(report, indent=2, default=str))
    print(format_report(report))
    print(f"\nwrote {out / 'perf.json'}")
    return 0


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


async def _targets(args: argparse.Namespace, cfg: Any, stack: AsyncExitStack) -> tuple[dict[str, Any], dict[str, Any]]:
    """What runs each kind of method, and the system facts recorded with the results."""
    import os

    from specdec import compute
    from specdec.bench.foundation import system_info
    from specdec.bench.openai_target import OpenAITarget
    from specdec.bench.sweep import HF, HF_ASSISTED, REMOTE
    from specdec.bench.targets import HFTarget, HttpTarget, SpecdecTarget
    from specdec.modeling import load_model
    from specdec.orchestrator.client import SpecdecClient
    from specdec.orchestrator.embedded import EmbeddedStack

    embedded = args.orchestrator is None and args.openai_url is None
    lm = None
    if embedded or cfg.hf_peers:
        lm = await compute.run(load_model, args.target, args.device, args.dtype)
    system: dict[str, Any] = system_info(lm) if lm is not None else {}
    targets: dict[str, Any] = {}
    if lm is not None:
        targets[HF] = targets[HF_ASSISTED] = HFTarget(lm)
    if args.openai_url is not None:
        key = args.api_key or os.environ.get("OPENAI_API_KEY")
        remote = await stack.enter_async_context(OpenAITarget(args.openai_url, model=args.model, api_key=key))
        system["openai_url"], system["remote_model"] = args.openai_url, await remote.health()
        targets["specdec"] = targets[REMOTE] = HttpTarget(remote, send_spec_fields=not cfg.remote_as_is)
        return targets, system
    address = args.orchestrator
    if embedded:
        assert lm is not None
        services = EmbeddedStack(target_model=lm, device=args.device, dtype=args.dtype)
        address = (await stack.enter_async_context(services)).address
    else:
        system["orchestrator"] = address
    security = args._security(args) if not embedded and getattr(args, "_security", None) else None
    client = await stack.enter_async_context(SpecdecClient(address, security))
    targets["specdec"] = SpecdecTarget(client, lm if embedded else None)
    return targets, system


async def _sweep(args: argparse.Namespace, cfg: Any, targets: dict[str, Any], prompts: int) -> tuple[list, list]:
    from tqdm import tqdm

    from specdec.bench.runner import run_sweep, summarise

    total = (cfg.warmup + prompts * cfg.iterations) * len(cfg.methods())
    with tqdm(total=total, unit="run", disable=args.quiet, file=sys.stderr, dynamic_ncols=True) as bar:

        def progress(run: Any) -> None:
            phase = "warm-up" if run.iteration < 0 else run.prompt_id
            bar.set_postfix_str(f"{phase} {run.method}: {run.tokens_per_second:.1f} tok/s", refresh=False)
            bar.update()

        runs = await run_sweep(targets, cfg, progress)
    return summarise(runs, cfg), runs


def _report(args: argparse.Namespace, cfg: Any, system: dict[str, Any], runs: list, rows: list, out: Path) -> int:
    from dataclasses import asdict

    from specdec.bench.config import write_config
    from specdec.bench.runner import table, write_outputs

    print(table(rows))
    write_outputs(out, cfg, system, runs, rows)
    write_config(out / "config.yaml", args, args._parser)
    written = ["results.json", "results.csv", "config.yaml"]
    if not args.no_plots:
        from specdec.bench.plots import findings, write_plots

        summary = [asdict(r) for r in rows]
        written += [p.name for p in write_plots(summary, out)]
        for line in findings(summary):
            print(f"- {line}")
    print(f"wrote {', '.join(written)} in {out}", file=sys.stderr)
    return 0


async def _load(args: argparse.Namespace, cfg: Any, targets: dict[str, Any], system: dict[str, Any], out: Path) -> int:
    """Load mode: for each served method (the baseline first), N concurrent clients at R starts per second over
    the prompts in turn, bounded by count and time; throughput, latency and errors by status per method."""
    import json

    from specdec.bench.load import Outcome, run_load
    from specdec.bench.sweep import HF, HF_ASSISTED

    prompts = cfg.prompts()
    concurrency = args.concurrency or 1
    bound = args.requests if args.requests is not None or args.duration is not None else 4 * concurrency
    reports: dict[str, Any] = {}
    for method in cfg.methods():
        if method.kind in (HF, HF_ASSISTED):
            continue  # in-process peers are not servers: nothing to load
        target = targets[method.kind]
        for _ in range(cfg.warmup):
            await target.run(method, prompts[0], cfg)
        usage = getattr(target, "usage", None)  # a specdec deployment's GetUsage; HTTP servers have none
        measured = bool(usage and await usage(True))  # reset the peaks: they cover this load only

        async def send(i: int, method: Any = method, target: Any = target) -> Outcome:
            run = await target.run(method, prompts[i % len(prompts)], cfg, measure_memory=False)
            return Outcome(run.tokens, run.seconds, run.ttft_s)

        report = await run_load(
            send, concurrency=concurrency, rate=args.rate, max_requests=bound, duration_s=args.duration
        )
        peaks = await usage(False) if usage and measured else {}
        reports[method.label] = {**report.to_dict(), "peak_memory_mib": peaks}
        print(f"\n## {method.label}\n{report.table()}")
    print("\n" + load_comparison(reports))
    out.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "specdec bench (load)", "system": system, "config": cfg.to_dict(), "load": reports}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    from specdec.bench.config import write_config

    write_config(out / "config.yaml", args, args._parser)
    print(f"wrote results.json, config.yaml in {out}", file=sys.stderr)
    return 0


def load_comparison(reports: dict[str, dict[str, Any]]) -> str:
    """One line per method under the same load, with its aggregate throughput as a ratio to target-only."""
    base = reports.get("none", {}).get("output_tokens_per_second")
    lines = [
        "| method | req/s | tok/s (aggregate) | vs none | latency p50 / p95 s | errors |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, r in reports.items():
        ratio = f"{r['output_tokens_per_second'] / base:.2f}x" if base else "—"
        lat = r["latency"]
        latency = f"{lat['p50']:.2f} / {lat['p95']:.2f}" if lat else "—"
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors_by_status"].items()) or "none"
        lines.append(
            f"| {label} | {r['requests_per_second']:.2f} | {r['output_tokens_per_second']:.1f} | {ratio} "
            f"| {latency} | {errors} |"
        )
    return "\n".join(lines)
