"""`specdec bench` end to end on the tiny model: a K sweep with the baseline and HF peers, every output file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from specdec.bench.runner import CSV_COLUMNS
from specdec.bench.sweep import SweepConfig


def test_a_k_sweep_writes_every_output(tiny_target: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"id": "repeat", "prompt": "one two three four one two three four one two"}\n'
        '{"id": "fox", "prompt": "The quick brown fox jumps over the lazy dog. The quick"}\n'
    )
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "specdec.orchestrator.cli", "bench", "--target", str(tiny_target), "--device", "cpu",
         "--prompts", str(prompts), "--k", "1,4", "--max-new-tokens", "12", "--iterations", "2", "--warmup", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    methods = ["none", "hf", "hf-assisted ngram k=1", "hf-assisted ngram k=4", "ngram k=1 fixed", "ngram k=4 fixed"]
    doc = json.loads((out / "results.json").read_text())
    assert [row["method"] for row in doc["summary"]] == methods
    assert len(doc["runs"]) == 2 * 3 * len(methods)  # prompts x (warm-up + 2) x methods
    for row in doc["summary"]:
        assert row["runs"] == 4 and row["identical_to_baseline"], row
        assert row["tokens_per_second"]["median"] > 0
    by_method = {row["method"]: row for row in doc["summary"]}
    assert by_method["none"]["vs_baseline"] == 1.0
    assert by_method["ngram k=4 fixed"]["acceptance_rate"] > 0  # the repetitive prompt gets drafts accepted
    assert by_method["ngram k=4 fixed"]["predicted_speedup"] > 0
    with (out / "results.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_COLUMNS and [r[1] for r in rows[1:]] == methods
    assert "| ngram k=4 fixed |" in done.stdout


def test_hf_assisted_generation_with_a_model_draft(tiny_target: Path, tiny_unrelated: Path, tmp_path: Path) -> None:
    """The HF peer of a model draft is HF's assistant model at the same K; both keep the target's output."""
    import asyncio

    from specdec.bench.runner import run_sweep, summarise
    from specdec.orchestrator.client import SpecdecClient
    from specdec.orchestrator.embedded import EmbeddedStack
    from tests.helpers import load

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "fox", "prompt": "The quick brown fox jumps over the lazy dog. The quick"}\n')
    cfg = SweepConfig(prompts_file=prompts, drafts=[f"model:{tiny_unrelated}"], ks=[3], max_new_tokens=10, warmup=0)
    lm = load(str(tiny_target))

    async def bench() -> list:
        async with EmbeddedStack(target_model=lm, device="cpu") as stack, SpecdecClient(stack.address) as client:
            return await run_sweep(client, lm, cfg)

    rows = {row.method: row for row in summarise(asyncio.run(bench()), cfg)}
    assert set(rows) == {"none", "hf", f"hf-assisted model:{tiny_unrelated} k=3", f"model:{tiny_unrelated} k=3 fixed"}
    assert all(row.identical_to_baseline for row in rows.values())


def test_the_sweep_is_the_cartesian_product_with_the_baseline_first() -> None:
    cfg = SweepConfig(drafts=["ngram", "none"], ks=[2, 8], policies=["", "typical"], controllers=["fixed"])
    labels = [m.label for m in cfg.methods()]
    assert labels[:2] == ["none", "hf"]
    assert labels[2:4] == ["hf-assisted ngram k=2", "hf-assisted ngram k=8"]
    assert labels[4:] == ["ngram k=2 fixed", "ngram k=2 fixed typical", "ngram k=8 fixed", "ngram k=8 fixed typical"]
    assert "hf-assisted model:m k=2" in [m.label for m in SweepConfig(drafts=["model:m"], ks=[2]).methods()]
    assert [m.label for m in SweepConfig(temperature=0.7).methods()] == ["none", "ngram k=4 fixed"]  # HF: greedy
