"""Where a speculative step's time goes: the target's verify cost by block size, the EAGLE head's tree cost, and
the mean accepted length each block size needs to reach a given speedup over target-only decoding.

    python -m specdec.bench.step_cost --out results/step_cost.json [--speedup 1.2] [--floor 0.02]

In-process, no services (so no network or serialisation cost is counted; `specdec bench` measures those):
(a) `VerifierSession.verify` of an empty block (a target-only step), of chains and of trees (three children of the
root, chains below them, as EAGLE's dynamic trees mostly are) of T draft tokens, every token rejected so each
step commits one token and the context grows as it would; (b) `EagleDrafter.propose_tree` for a few tree sizes
at the path-probability floor `--floor` (its size is what the floor leaves). The break-even column is the
arithmetic of a step: speedup = accepted_length * none_ms / (verify_ms + draft_ms), so reaching `--speedup`
needs accepted_length >= speedup * (verify_ms + draft_ms) / none_ms.

Default: the default target and its shipped EAGLE head; `--target`/`--head` take others.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from specdec.draft_service.heads.eagle import EagleDrafter, EagleHead
from specdec.modeling import LoadedModel, chat_prompt_ids
from specdec.sampling import SamplingConfig
from specdec.static_cache import GraphOptions
from specdec.verifier_service.core import SessionOptions, VerifierCore

CHAT_PROMPT = "Explain how a bicycle stays upright while it is moving, in a few sentences."
TREE_SHAPES = ((4, 4), (8, 4), (12, 4), (20, 6))  # (nodes, depth) asked of the draft


def wide_tree(tokens: int, width: int = 3) -> list[int]:
    """Parents of a tree with `width` children of the root and a chain below each: [-1, -1, -1, 0, 1, 2, 3, ...]."""
    return [-1 if i < width else i - width for i in range(tokens)]


def verify_ms(core: VerifierCore, prompt: list[int], tokens: int, tree: bool, reps: int) -> float:
    """Median milliseconds of one verify of `tokens` rejected draft tokens (a chain, or `wide_tree`) on a fresh
    session."""
    session = core.open_session(SessionOptions(prompt_token_ids=prompt, return_hidden_states=True))
    rejected = (prompt[-1] + 1) % core.lm.vocab_size
    parents = wide_tree(tokens) if tree else None
    try:
        return _median_ms(lambda: session.verify(session.committed_length, [rejected] * tokens, None, parents), reps)
    finally:
        core.close_session(session)


def draft_tree_ms(
    drafter: EagleDrafter, sequence: list[int], nodes: int, depth: int, floor: float, reps: int
) -> tuple[float, int]:
    """Median milliseconds of one `propose_tree` after `sequence` (its features already observed), and the size
    of the tree it returns."""
    ms = _median_ms(lambda: drafter.propose_tree(sequence, depth, nodes, min_probability=floor), reps)
    return ms, len(drafter.propose_tree(sequence, depth, nodes, min_probability=floor).tokens)


def _median_ms(call: Callable[[], object], reps: int) -> float:
    """Median milliseconds of `reps` calls after two untimed ones (allocator growth, packed weights)."""
    for _ in range(2):
        call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def needed_accepted_length(speedup: float, step_ms: float, none_ms: float) -> float:
    """The mean accepted length (bonus included) at which a step of `step_ms` runs `speedup` times faster than a
    target-only step of `none_ms`."""
    return speedup * step_ms / none_ms


@torch.inference_mode()
def measure(
    lm: LoadedModel,
    head: EagleHead,
    prompt: list[int],
    sizes: Sequence[int],
    floor: float,
    speedup: float,
    reps: int,
    answer_tokens: int = 40,
) -> dict[str, Any]:
    core = VerifierCore(lm, GraphOptions())
    core.warm_up()
    none_ms = verify_ms(core, prompt, 0, False, reps)
    verify: list[dict[str, float]] = []
    for t in sizes:
        chain, tree = verify_ms(core, prompt, t, False, reps), verify_ms(core, prompt, t, True, reps)
        verify.append({"tokens": t, "chain_ms": chain, "tree_ms": tree})
    # the draft drafts after the target's own answer, from the target's features, as in a session
    ids = torch.tensor([prompt], device=lm.device)  # [1, P]
    sequence = lm.model.generate(ids, max_new_tokens=answer_tokens, do_sample=False)[0].tolist()
    hidden = lm.model(torch.tensor([sequence], device=lm.device), output_hidden_states=True).hidden_states[-1][0]
    drafter = EagleDrafter(head, lm.model.get_input_embeddings().weight, lm.vocab_size, SamplingConfig())
    drafter.observe_hidden(0, hidden[: len(sequence) - 1].float().cpu())  # [L-1, H] as the verifier sends them
    trees = []
    for nodes, depth in TREE_SHAPES:
        ms, size = draft_tree_ms(drafter, sequence, nodes, depth, floor, reps)
        verify_tree = _interpolate({int(row["tokens"]): row["tree_ms"] for row in verify}, size)
        step = ms + verify_tree
        trees.append({"nodes": nodes, "depth": depth, "tree_tokens": size, "draft_ms": ms,
                      "verify_ms": verify_tree, "step_ms": step,
                      "needed_accepted_length": needed_accepted_length(speedup, step, none_ms)})  # fmt: skip
    return {"none_ms": none_ms, "floor": floor, "speedup": speedup, "prompt_tokens": len(prompt),
            "verify": verify, "trees": trees,
            "threads": torch.get_num_threads(), "device": str(lm.device), "dtype": str(lm.dtype)}  # fmt: skip


def _interpolate(by_size: dict[int, float], size: int) -> float:
    """The verify time of a block of `size` tokens, linear between the two measured sizes around it."""
    sizes = sorted(by_size)
    if size <= sizes[0]:
        return by_size[sizes[0]]
    for low, high in itertools.pairwise(sizes):
        if size <= high:
            return by_size[low] + (by_size[high] - by_size[low]) * (size - low) / (high - low)
    return by_size[sizes[-1]]


def format_report(report: dict[str, Any]) -> str:
    lines = [f"target-only step: {report['none_ms']:.1f} ms ({report['prompt_tokens']}-token prompt)",
             "draft tokens | chain verify ms | tree verify ms | chain vs none | tree vs none"]  # fmt: skip
    none = report["none_ms"]
    for row in report["verify"]:
        lines.append(f"{row['tokens']:12d} | {row['chain_ms']:15.1f} | {row['tree_ms']:14.1f} | "
                     f"{row['chain_ms'] / none:12.2f}x | {row['tree_ms'] / none:11.2f}x")  # fmt: skip
    lines.append(f"EAGLE trees at floor {report['floor']}: nodes/depth asked | tokens | draft ms | verify ms | "
                 f"accepted length for {report['speedup']}x")  # fmt: skip
    for row in report["trees"]:
        lines.append(f"{row['nodes']:>5d}/{row['depth']:<5d} | {row['tree_tokens']:6d} | {row['draft_ms']:8.1f} | "
                     f"{row['verify_ms']:9.1f} | {row['needed_accepted_length']:.2f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="default", help="HF id or path (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--head", default="", help="an EAGLE head folder (default: the shipped one)")
    parser.add_argument("--sizes", default="1,2,4,8,12,16,24", help="draft tokens per verified block")
    parser.add_argument("--floor", type=float, default=0.02, help="the trees' least path probability")
    parser.add_argument("--speedup", type=float, default=1.2, help="the speedup the break-even column aims at")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--prompt", default=CHAT_PROMPT, help="a user message (chat template applied)")
    parser.add_argument("--out", default="", help="write the report as JSON here")
    args = parser.parse_args(argv)
    from specdec.draft_service.heads.store import DEFAULT_HEADS_DIR, load_head
    from specdec.modeling import load_model

    lm = load_model(args.target)
    head, _ = load_head(Path(args.head) if args.head else DEFAULT_HEADS_DIR / "eagle")
    if not isinstance(head, EagleHead):
        parser.error(f"{args.head} holds a Medusa head; this benchmark times EAGLE trees")
    prompt = chat_prompt_ids(lm.tokenizer, [{"role": "user", "content": args.prompt}])
    sizes = [int(s) for s in args.sizes.split(",") if s]
    report = measure(lm, head, prompt, sizes, args.floor, args.speedup, args.reps)
    print(format_report(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
