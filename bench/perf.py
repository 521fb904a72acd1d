"""`specdec bench --perf`: the deployment's performance report, in one run on one model object.

1. **Lean path**: target-only decoding through the three services (`--draft none`) against HF `generate`
   in-process, interleaved prompt by prompt; the ratio is the median of per-prompt tokens/s ratios.
2. **Batching**: aggregate tokens/s of N requests one after another against the same N all at once, through one
   verifier, for `none` and for the draft.
3. **Network**: tokens/s of the draft relative to target-only *at the same added latency*, at 0 ms and at each
   added round-trip time, with draft-ahead off and on. The latency comes from delaying proxies on both of the
   orchestrator's links (verifier and draft), as if each service ran on another machine (the 0 ms row goes
   through the same proxies, without delay); "kept" is the
   speedup at that latency over the speedup at 0 ms, "recovered" the share of what the latency cost with
   draft-ahead off that draft-ahead wins back: in speedup over `none` (undefined when the latency costs the draft
   nothing relative to `none`, which pays the verifier link's delay too) and in absolute tokens/s (where the
   verifier link's share of the delay, which no draft can hide, counts as a cost).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specdec import compute, cpu_linear
from specdec.bench.load import Outcome, run_load
from specdec.bench.peers import hf_generate
from specdec.bench.suites import Prompt, load_prompts, load_suite
from specdec.bench.targets import prompt_ids
from specdec.modeling import LoadedModel
from specdec.netdelay import DelayProxy
from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.embedded import EmbeddedStack
from specdec.orchestrator.server import serve as serve_orchestrator


@dataclass
class PerfConfig:
    suites: list[str] = field(default_factory=lambda: ["chat", "code", "summarise"])
    prompts_per_suite: int = 2
    max_new_tokens: int = 64
    draft: str = "ngram"
    k: int = 8
    concurrency: int = 8
    rtts_ms: list[float] = field(default_factory=lambda: [0.0, 5.0, 20.0])
    network_suite: str = "code"  # where the draft pays, so that latency has a speedup to eat into
    prompts_file: Path | None = None  # JSONL prompts instead of the suites (for every section)

    def prompts(self) -> tuple[list[Prompt], list[Prompt]]:
        """(prompts of the lean-path and batching sections, prompts of the network section)."""
        if self.prompts_file is not None:
            mine = load_prompts(self.prompts_file)
            return mine, mine
        chosen = [p for suite in self.suites for p in load_suite(suite)[: self.prompts_per_suite]]
        return chosen, load_suite(self.network_suite)[: max(2, self.prompts_per_suite)]


@dataclass
class Timed:
    tokens: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


async def run_perf(lm: LoadedModel, cfg: PerfConfig) -> dict[str, Any]:
    prompts, network_prompts = cfg.prompts()
    ids = [prompt_ids(lm, p) for p in prompts]
    network_ids = [prompt_ids(lm, p) for p in network_prompts]
    async with EmbeddedStack(target_model=lm) as stack:
        async with SpecdecClient(stack.address) as client:
            await generate(client, ids[0], cfg, "none")  # warm-up of the services, the draft and HF below
            await generate(client, ids[0], cfg, cfg.draft)
            await compute.run(hf_generate, lm, ids[0], 8)
            lean = await lean_path(lm, client, ids, cfg)
            batching = await batching_report(client, ids, cfg)
        network = await network_report(stack, network_ids, cfg)
    return {"config": asdict(cfg), "lean_path": lean, "batching": batching, "network": network}


async def generate(client: SpecdecClient, ids: list[int], cfg: PerfConfig, draft: str, **extra: Any) -> Timed:
    k = 0 if draft == "none" else cfg.k
    start = time.perf_counter()
    response = await client.generate(
        prompt_token_ids=ids, max_new_tokens=cfg.max_new_tokens, draft=draft, k=k, k_controller="fixed", **extra
    )
    return Timed(len(response.completions[0].token_ids), time.perf_counter() - start)


async def lean_path(lm: LoadedModel, client: SpecdecClient, prompts: Sequence[list[int]], cfg: PerfConfig) -> dict:
    """`--draft none` through the services against HF `generate` on the same model object (the same linear layers:
    what the services add), and, when the model runs packed oneDNN linears (specdec/cpu_linear.py), against HF
    `generate` with torch's stock linears too (what a user of plain transformers gets on this CPU)."""
    stock_too = cpu_linear.uses_onednn(lm.model)
    ratios, ours, hf, stock_ratios, stock = [], [], [], [], []
    for ids in prompts:
        peer = await timed_hf_generate(lm, ids, cfg)
        if stock_too:
            with cpu_linear.stock_linears():
                stock_peer = await timed_hf_generate(lm, ids, cfg)
        mine = await generate(client, ids, cfg, "none")
        ours.append(mine.rate)
        hf.append(peer.rate)
        ratios.append(mine.rate / peer.rate)
        if stock_too:
            stock.append(stock_peer.rate)
            stock_ratios.append(mine.rate / stock_peer.rate)
    report = {
        "none_tokens_per_second": statistics.median(ours),
        "hf_generate_tokens_per_second": statistics.median(hf),
        "ratio_to_hf_generate": statistics.median(ratios),
    }
    if stock_too:
        report["hf_generate_stock_linears_tokens_per_second"] = statistics.median(stock)
        report["ratio_to_hf_generate_stock_linears"] = statistics.median(stock_ratios)
    return report


async def timed_hf_generate(lm: LoadedModel, ids: list[int], cfg: PerfConfig) -> Timed:
    start = time.perf_counter()
    tokens = await compute.run(hf_generate, lm, ids, cfg.max_new_tokens)
    return Timed(len(tokens), time.perf_counter() - start)


async def batching_report(client: SpecdecClient, prompts: Sequence[list[int]], cfg: PerfConfig) -> dict:
    report: dict[str, dict[str, float]] = {}
    requests = cfg.concurrency  # the same requests one after another, then all at once
    for draft in ("none", cfg.draft):
        by_concurrency = {}
        for concurrency in (1, cfg.concurrency):

            async def send(i: int, draft: str = draft) -> Outcome:
                timed = await generate(client, list(prompts[i % len(prompts)]), cfg, draft)
                return Outcome(tokens=timed.tokens, seconds=timed.seconds)

            load = await run_load(send, concurrency=concurrency, rate=None, max_requests=requests, duration_s=None)
            by_concurrency[concurrency] = load.output_tokens_per_second
        report[draft] = {
            "aggregate_tokens_per_second_1": by_concurrency[1],
            f"aggregate_tokens_per_second_{cfg.concurrency}": by_concurrency[cfg.concurrency],
            "scaling": by_concurrency[cfg.concurrency] / by_concurrency[1],
        }
    return report


@asynccontextmanager
async def delayed_orchestrator(stack: EmbeddedStack, rtt_ms: float) -> AsyncIterator[str]:
    """An orchestrator reaching the stack's verifier and draft service through proxies adding `rtt_ms` (0: the
    same proxies without delay, so every row pays the same proxy hop and only the latency differs)."""
    verifier, draft = stack.servers[0], stack.servers[1]
    one_way = rtt_ms / 2e3
    async with DelayProxy(verifier.port, one_way) as to_verifier, DelayProxy(draft.port, one_way) as to_draft:
        orchestrator = await serve_orchestrator(to_verifier.address, to_draft.address, 0, "127.0.0.1")
        try:
            yield f"127.0.0.1:{orchestrator.port}"
        finally:
            await orchestrator.stop(1.0)


async def network_report(stack: EmbeddedStack, prompts: Sequence[list[int]], cfg: PerfConfig) -> dict:
    rows: dict[str, dict[str, float]] = {}
    for rtt in cfg.rtts_ms:
        async with delayed_orchestrator(stack, rtt) as address, SpecdecClient(address) as client:
            await generate(client, list(prompts[0]), cfg, cfg.draft)  # warm the new channels
            speedups: dict[str, list[float]] = {"off": [], "on": []}
            rates: dict[str, list[float]] = {"none": [], "off": [], "on": []}
            for ids in prompts:
                base = await generate(client, ids, cfg, "none")
                rates["none"].append(base.rate)
                for mode in ("off", "on"):
                    timed = await generate(client, ids, cfg, cfg.draft, draft_ahead=mode == "on")
                    speedups[mode].append(timed.rate / base.rate)
                    rates[mode].append(timed.rate)
            row = {f"speedup_ahead_{m}": statistics.median(v) for m, v in speedups.items()}
            row.update({_rate_key(m): statistics.median(v) for m, v in rates.items()})  # absolute tokens/s
            rows[f"{rtt:g}"] = row
    zero = rows.get("0")
    for key, row in rows.items():
        if zero is None or key == "0":
            continue
        for mode in ("off", "on"):
            row[f"kept_ahead_{mode}"] = row[f"speedup_ahead_{mode}"] / zero[f"speedup_ahead_{mode}"]
        lost = zero["speedup_ahead_off"] - row["speedup_ahead_off"]
        row["recovered"] = (row["speedup_ahead_on"] - row["speedup_ahead_off"]) / lost if lost > 0 else float("nan")
        # the same in absolute throughput: the draft's tokens/s that the latency took, and draft-ahead's share back
        lost_rate = zero[_rate_key("off")] - row[_rate_key("off")]
        gained = row[_rate_key("on")] - row[_rate_key("off")]
        row["recovered_tokens_per_second"] = gained / lost_rate if lost_rate > 0 else float("nan")
    return rows


def _rate_key(mode: str) -> str:
    return "tokens_per_second_none" if mode == "none" else f"tokens_per_second_ahead_{mode}"


def format_report(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lean, lines = report["lean_path"], []
    ours, hf, ratio = (
        lean["none_tokens_per_second"],
        lean["hf_generate_tokens_per_second"],
        lean["ratio_to_hf_generate"],
    )
    lines.append(f"lean path: --draft none {ours:.1f} tok/s, HF generate {hf:.1f} tok/s -> {ratio:.2f}x")
    if "ratio_to_hf_generate_stock_linears" in lean:
        lines.append(
            f"  HF generate with torch's stock linears {lean['hf_generate_stock_linears_tokens_per_second']:.1f}"
            f" tok/s -> {lean['ratio_to_hf_generate_stock_linears']:.2f}x"
        )
    n = cfg["concurrency"]
    for draft, row in report["batching"].items():
        one, many = row["aggregate_tokens_per_second_1"], row[f"aggregate_tokens_per_second_{n}"]
        lines.append(
            f"batching ({draft}): 1 session {one:.1f} tok/s, {n} sessions {many:.1f} tok/s aggregate"
            f" -> {row['scaling']:.2f}x"
        )
    lines.append(f"network ({cfg['draft']} K={cfg['k']} on {cfg['network_suite']}; speedup vs none at the same RTT):")
    header = "  added RTT   none tok/s   off tok/s   on tok/s   ahead off   ahead on   kept off   kept on   recovered"
    lines.append(header + "   recovered tok/s")
    for rtt, row in report["network"].items():
        rates = "   ".join(f"{row.get(_rate_key(m), float('nan')):8.1f}" for m in ("none", "off", "on"))
        kept = (f"{row['kept_ahead_off']:8.2f}   {row['kept_ahead_on']:7.2f}   {row['recovered']:9.2f}"
                f"   {row.get('recovered_tokens_per_second', float('nan')):15.2f}"
                if "kept_ahead_on" in row else "")  # fmt: skip
        lines.append(
            f"  {rtt:>6} ms   {rates}   {row['speedup_ahead_off']:8.2f}x   {row['speedup_ahead_on']:7.2f}x   {kept}"
        )
    return "\n".join(lines)
