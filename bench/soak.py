"""Soak: rounds of concurrent requests against the three services, and after each round what they still hold.

A leak shows as live sessions or KV-cache bytes left over after a round, or as resident memory that keeps
climbing round after round instead of levelling off. Each round mixes drafts (none, n-gram), greedy and
seeded sampling, and a few requests cancelled mid-stream.

    python -m specdec.bench.soak [--rounds 8] [--concurrency 8] [--requests 16] [--max-new-tokens 48] [--target ID]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from specdec import compute
from specdec.bench.suites import load_suite
from specdec.modeling import load_model
from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.embedded import EmbeddedStack

MIB = 1024 * 1024


async def one_request(client: SpecdecClient, i: int, prompt: str, max_new_tokens: int) -> str:
    """Request i of a round: the kind cycles through target-only, n-gram greedy, n-gram sampled, cancelled."""
    kind = i % 4
    if kind == 3:  # walk away after the first delta: the services must free the sessions anyway
        async with contextlib.aclosing(client.generate_stream(prompt, max_new_tokens=max_new_tokens)) as stream:
            async for _ in stream:
                break
        return "cancelled"
    options: dict[str, Any] = {"draft": "none"} if kind == 0 else {"draft": "ngram", "k": 4}
    if kind == 2:
        options |= {"temperature": 0.8, "seed": i}
    try:
        await client.generate(prompt, max_new_tokens=max_new_tokens, **options)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "ok"


async def settle(client: SpecdecClient, seconds: float = 10.0) -> dict[str, Any]:
    """The usage once every session is closed (cancelled streams close asynchronously), or after `seconds`."""
    usage = await client.usage()
    for _ in range(int(seconds / 0.1)):
        if all(u.live_sessions == 0 for u in usage.services):
            break
        await asyncio.sleep(0.1)
        usage = await client.usage()
    return {u.service: u for u in usage.services}


async def soak(args: argparse.Namespace) -> list[dict[str, Any]]:
    prompts = [p.messages[-1][1] for p in load_suite("chat") + load_suite("code")]
    lm = await compute.run(load_model, args.target, "auto", "auto")
    rounds: list[dict[str, Any]] = []
    async with EmbeddedStack(target_model=lm) as stack, SpecdecClient(stack.address) as client:
        limiter = asyncio.Semaphore(args.concurrency)

        async def limited(i: int) -> str:
            async with limiter:
                return await one_request(client, i, prompts[i % len(prompts)], args.max_new_tokens)

        for r in range(args.rounds):
            outcomes = await asyncio.gather(*(limited(r * args.requests + i) for i in range(args.requests)))
            usage = await settle(client)
            row = {
                "round": r + 1,
                "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))},
                "rss_mib": usage["orchestrator"].rss_bytes / MIB,  # one process: the figure every service reports
                "live_sessions": {s: u.live_sessions for s, u in usage.items()},
                "kv_cache_bytes": {s: u.kv_cache_bytes for s, u in usage.items()},
            }
            rounds.append(row)
            print(
                f"round {row['round']:>2}: {row['outcomes']}  RSS {row['rss_mib']:.0f} MiB  "
                f"live {row['live_sessions']}  KV bytes {row['kv_cache_bytes']}",
                flush=True,
            )
    return rounds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16, help="per round")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--target", default="")
    parser.add_argument("--out", type=Path, default=None, help="write the rounds as JSON here")
    args = parser.parse_args(argv)
    rounds = asyncio.run(soak(args))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rounds, indent=2) + "\n")
    leaks = [r for r in rounds if any(r["live_sessions"].values()) or any(r["kv_cache_bytes"].values())]
    later = [r["rss_mib"] for r in rounds[len(rounds) // 2 :]]
    growth = later[-1] - later[0] if len(later) > 1 else 0.0
    print(f"sessions or KV bytes left after a round: {len(leaks)} of {len(rounds)} rounds; "
          f"RSS over the second half: {growth:+.0f} MiB")  # fmt: skip
    return 1 if leaks else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
