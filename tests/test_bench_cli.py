"""`specdec bench` end to end on the tiny model: a K sweep with the baseline and HF peers, every output file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

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
    assert len(doc["runs"]) == (1 + 2 * 2) * len(methods)  # (one warm-up round + prompts x 2 iterations) x methods
    assert {r["iteration"] for r in doc["runs"] if r["prompt_id"] == "fox"} == {0, 1}
    for row in doc["summary"]:
        assert row["runs"] == 4 and row["identical_to_baseline"], row
        assert row["tokens_per_second"]["median"] > 0
        assert 0 < row["time_to_first_token_ms"]["median"] <= row["latency_s"]["max"] * 1e3
        assert row["inter_token_latency_ms"]["median"] > 0
        assert max(p["peak_rss_mib"] for p in row["peak_memory_mib"].values()) > 10  # a process holding a model
    by_method = {row["method"]: row for row in doc["summary"]}
    assert by_method["none"]["vs_baseline"] == 1.0
    ngram = by_method["ngram k=4 fixed"]
    assert ngram["acceptance_rate"] > 0  # the repetitive prompt gets drafts accepted
    assert ngram["predicted_speedup"] > 0
    assert len(ngram["acceptance_per_position"]) == 4 and ngram["acceptance_per_position"][0] > 0
    assert ngram["peak_memory_mib"]["verifier"]["peak_kv_cache_mib"] > 0
    assert set(ngram["time_split_ms"]) == {"draft", "verify", "network", "prefill"}
    assert ngram["time_split_ms"]["verify"] > 0
    assert by_method["hf"]["peak_memory_mib"]["bench process"]["peak_rss_mib"] > 10
    with (out / "results.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_COLUMNS and [r[1] for r in rows[1:]] == methods
    assert "| ngram k=4 fixed |" in done.stdout
    for name in ("throughput_vs_k", "acceptance_vs_k", "acceptance_per_position", "speedup_vs_peers"):
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and image.size[0] > 200
    assert "prompts: throughput peaks at K=" in done.stdout  # the plots' finding, printed
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["k"] == [1, 4] and config["max-new-tokens"] == 12 and config["prompts"] == str(prompts)


def test_hf_assisted_generation_with_a_model_draft(tiny_target: Path, tiny_unrelated: Path, tmp_path: Path) -> None:
    """The HF peer of a model draft is HF's assistant model at the same K; both keep the target's output."""
    import asyncio

    from specdec.bench.runner import run_sweep, summarise
    from specdec.bench.targets import HFTarget, SpecdecTarget
    from specdec.orchestrator.client import SpecdecClient
    from specdec.orchestrator.embedded import EmbeddedStack
    from tests.helpers import load

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "fox", "prompt": "The quick brown fox jumps over the lazy dog. The quick"}\n')
    cfg = SweepConfig(prompts_file=prompts, drafts=[f"model:{tiny_unrelated}"], ks=[3], max_new_tokens=10, warmup=0)
    lm = load(str(tiny_target))

    async def bench() -> list:
        async with EmbeddedStack(target_model=lm, device="cpu") as stack, SpecdecClient(stack.address) as client:
            hf = HFTarget(lm)
            return await run_sweep({"specdec": SpecdecTarget(client, lm), "hf": hf, "hf-assisted": hf}, cfg)

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


def _bench(argv: list[str]) -> int:
    """`specdec bench ...` in this process (its own event loop, on a worker thread of the test's)."""
    from specdec.orchestrator.cli import main

    return main(["bench", "--quiet", *argv])


def test_a_yaml_sweep_file_with_flags_overriding_it(tiny_target: Path, tmp_path: Path) -> None:
    from specdec.bench.cli import apply_config
    from specdec.orchestrator.cli import build_parser

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("suite: [code]\nk: [2, 3]\nk-controller: [fixed, cost]\nmax_new_tokens: 7\nhf: false\n")
    argv = ["bench", "--config", str(sweep), "--k", "5"]
    parser = build_parser()
    args = apply_config(parser, argv, parser.parse_args(argv))
    assert args.suite == ["code"] and args.k == [5] and args.k_controller == ["fixed", "cost"]
    assert args.max_new_tokens == 7 and args.hf is False

    bad = tmp_path / "bad.yaml"
    bad.write_text("kk: [1]\n")
    with pytest.raises(ValueError, match="unknown key 'kk'"):
        apply_config(parser, ["bench", "--config", str(bad)], parser.parse_args(["bench", "--config", str(bad)]))
    assert _bench(["--config", str(bad)]) == 2


async def test_a_running_deployment_over_grpc_and_in_load_mode(tiny_target: Path, tmp_path: Path) -> None:
    """--orchestrator: the deployment tokenises the text itself, HF peers are off (another machine's speed
    would mean nothing), the memory peaks come from GetUsage; then load mode against it."""
    import asyncio

    from specdec.orchestrator.embedded import EmbeddedStack

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "count", "prompt": "one two three four one two three four one two"}\n')
    async with EmbeddedStack(target=str(tiny_target), device="cpu") as stack:
        out = tmp_path / "sweep"
        common = ["--orchestrator", stack.address, "--prompts", str(prompts), "--max-new-tokens", "8", "--k", "3"]
        assert await asyncio.to_thread(_bench, [*common, "--out", str(out), "--no-plots"]) == 0
        doc = json.loads((out / "results.json").read_text())
        assert [r["method"] for r in doc["summary"]] == ["none", "ngram k=3 fixed"]
        assert doc["system"]["orchestrator"] == stack.address
        ngram = doc["summary"][1]
        assert ngram["identical_to_baseline"] and ngram["peak_memory_mib"]["verifier"]["peak_kv_cache_mib"] > 0

        load = tmp_path / "load"
        argv = [*common, "--out", str(load), "--concurrency", "3", "--requests", "6", "--warmup", "0"]
        assert await asyncio.to_thread(_bench, argv) == 0
    reports = json.loads((load / "results.json").read_text())["load"]
    assert list(reports) == ["none", "ngram k=3 fixed"]
    for report in reports.values():
        assert report["requests"] == report["succeeded"] == 6 and report["errors_by_status"] == {}
        assert report["output_tokens_per_second"] > 0
        assert report["peak_memory_mib"]["verifier"]["peak_kv_cache_mib"] > 0


def test_the_load_comparison_names_errors_and_ratios() -> None:
    from specdec.bench.cli import load_comparison

    latency = {"p50": 0.5, "p95": 0.9}
    reports = {
        "none": {"requests_per_second": 2.0, "output_tokens_per_second": 50.0, "latency": latency,
                 "errors_by_status": {}},
        "ngram k=4 fixed": {"requests_per_second": 3.0, "output_tokens_per_second": 100.0, "latency": latency,
                            "errors_by_status": {"RESOURCE_EXHAUSTED": 2}},
    }  # fmt: skip
    text = load_comparison(reports)
    assert "| ngram k=4 fixed | 3.00 | 100.0 | 2.00x | 0.50 / 0.90 | RESOURCE_EXHAUSTED: 2 |" in text
    assert "| none | 2.00 | 50.0 | 1.00x |" in text


async def test_an_openai_compatible_server(tiny_target: Path, tmp_path: Path) -> None:
    """--openai-url on our own HTTP API: as configured (one "remote" row), and with the sweep's speculative
    options sent as extra body fields; token counts from `usage`."""
    import asyncio

    from specdec.orchestrator.embedded import EmbeddedStack

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "hi", "messages": [{"role": "user", "content": "Count: one two three one two"}]}\n')
    async with EmbeddedStack(target=str(tiny_target), device="cpu", http_port=0) as stack:
        common = ["--openai-url", stack.http_url, "--prompts", str(prompts), "--max-new-tokens", "6", "--no-plots"]
        as_is, swept = tmp_path / "as-is", tmp_path / "swept"
        assert await asyncio.to_thread(_bench, [*common, "--out", str(as_is)]) == 0
        assert await asyncio.to_thread(_bench, [*common, "--out", str(swept), "--draft", "ngram", "--k", "2"]) == 0
    rows = json.loads((as_is / "results.json").read_text())["summary"]
    assert [r["method"] for r in rows] == ["remote"] and rows[0]["vs_baseline"] is None
    assert rows[0]["tokens_per_second"]["median"] > 0 and rows[0]["time_to_first_token_ms"]["median"] > 0
    doc = json.loads((swept / "results.json").read_text())
    assert [r["method"] for r in doc["summary"]] == ["none", "ngram k=2 fixed"]
    assert all(run["tokens"] == 6 for run in doc["runs"])  # from usage: max_tokens reached
    assert doc["summary"][1]["identical_to_baseline"]  # compared by text: no token ids over HTTP


async def test_a_deployment_that_requires_a_token(tiny_target: Path, tmp_path: Path) -> None:
    """--orchestrator with --auth-token; without it the run fails with UNAUTHENTICATED (exit 1), and the token
    is never written into the config.yaml kept with the results."""
    import asyncio

    from specdec.orchestrator.embedded import EmbeddedStack
    from specdec.security import Security

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "count", "prompt": "one two three one two three"}\n')
    async with EmbeddedStack(target=str(tiny_target), device="cpu", security=Security(auth_token="s3cret")) as stack:
        common = ["--orchestrator", stack.address, "--prompts", str(prompts), "--max-new-tokens", "4", "--no-plots"]
        out = tmp_path / "ok"
        assert await asyncio.to_thread(_bench, [*common, "--auth-token", "s3cret", "--out", str(out)]) == 0
        assert await asyncio.to_thread(_bench, [*common, "--out", str(tmp_path / "refused")]) == 1
    assert "s3cret" not in (out / "config.yaml").read_text()
    assert json.loads((out / "results.json").read_text())["summary"][0]["runs"] == 1
