"""`specdec bench --perf` end to end on the tiny model: every section measured, ratios consistent."""

from __future__ import annotations

import json
import math
from pathlib import Path

from specdec import cpu_linear
from specdec.bench.perf import PerfConfig, format_report, run_perf
from tests.helpers import load


async def test_the_perf_report_measures_every_section(tiny_target: Path, tmp_path: Path) -> None:
    lm = load(str(tiny_target))
    prompts = tmp_path / "prompts.jsonl"
    texts = ["def add(a, b):", "The quick brown fox", "for i in range(10):"]
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": text}) + "\n" for i, text in enumerate(texts)))
    cfg = PerfConfig(max_new_tokens=8, draft=f"model:{tiny_target}", k=3, concurrency=3, rtts_ms=[0.0, 6.0],
                     prompts_file=prompts)  # fmt: skip
    report = await run_perf(lm, cfg)
    lean = report["lean_path"]
    assert lean["none_tokens_per_second"] > 0 and lean["hf_generate_tokens_per_second"] > 0
    assert lean["ratio_to_hf_generate"] > 0 and not math.isnan(lean["ratio_to_hf_generate"])
    if cpu_linear.uses_onednn(lm.model):  # the stock-linears peer is measured too
        assert lean["hf_generate_stock_linears_tokens_per_second"] > 0
        assert lean["ratio_to_hf_generate_stock_linears"] > 0
    for row in report["batching"].values():
        assert row["aggregate_tokens_per_second_1"] > 0 and row["aggregate_tokens_per_second_3"] > 0
        assert math.isclose(row["scaling"], row["aggregate_tokens_per_second_3"] / row["aggregate_tokens_per_second_1"])
    assert set(report["network"]) == {"0", "6"}
    delayed = report["network"]["6"]
    assert {"speedup_ahead_off", "speedup_ahead_on", "kept_ahead_off", "kept_ahead_on", "recovered",
            "recovered_tokens_per_second"} <= set(delayed)  # fmt: skip
    for row in report["network"].values():  # absolute rates beside the speedups
        none, off = row["tokens_per_second_none"], row["tokens_per_second_ahead_off"]
        assert none > 0 and off > 0 and row["tokens_per_second_ahead_on"] > 0
    text = format_report(report)
    assert "lean path" in text and "batching (none)" in text and "6 ms" in text
