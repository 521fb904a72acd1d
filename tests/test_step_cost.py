"""The step-cost benchmark's arithmetic and a tiny-model run of its measurements (no timing is asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specdec.bench.step_cost import _interpolate, format_report, measure, needed_accepted_length, wide_tree
from specdec.draft_service.heads.eagle import EagleHead
from specdec.draft_service.heads.layers import LayerShape
from tests.helpers import load


def test_wide_tree_hangs_chains_below_three_root_children() -> None:
    assert wide_tree(7) == [-1, -1, -1, 0, 1, 2, 3]
    assert wide_tree(2) == [-1, -1]
    assert wide_tree(0) == []


def test_the_break_even_accepted_length_is_the_speedup_times_the_cost_ratio() -> None:
    # a step costing 1.5 target-only steps needs 1.8 accepted tokens for 1.2x and exactly 1.5 for 1.0x
    assert needed_accepted_length(1.2, 60.0, 40.0) == pytest.approx(1.8)
    assert needed_accepted_length(1.0, 60.0, 40.0) == pytest.approx(1.5)


def test_verify_times_are_interpolated_between_measured_block_sizes() -> None:
    by_size = {1: 10.0, 4: 16.0, 8: 30.0}
    assert _interpolate(by_size, 1) == 10.0 and _interpolate(by_size, 0) == 10.0
    assert _interpolate(by_size, 2) == pytest.approx(12.0)
    assert _interpolate(by_size, 6) == pytest.approx(23.0)
    assert _interpolate(by_size, 20) == 30.0  # past the largest measured size: its time, not an extrapolation


def test_a_tiny_run_measures_every_block_size_and_tree(tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    hidden = int(lm.model.config.hidden_size)
    torch.manual_seed(0)
    head = EagleHead(LayerShape(hidden, 4, 2, 2 * hidden), 32).eval()
    head.vocab_ids.copy_(torch.arange(32))
    report = measure(lm, head, list(range(3, 15)), [1, 4], floor=0.0, speedup=1.2, reps=2, answer_tokens=6)
    assert report["none_ms"] > 0
    assert [row["tokens"] for row in report["verify"]] == [1, 4]
    assert all(row["chain_ms"] > 0 and row["tree_ms"] > 0 for row in report["verify"])
    assert len(report["trees"]) == 4
    for row in report["trees"]:
        assert 1 <= row["tree_tokens"] <= row["nodes"]  # no floor: the tree fills up to what was asked, or its depth
        assert row["step_ms"] == pytest.approx(row["draft_ms"] + row["verify_ms"])
        assert row["needed_accepted_length"] == pytest.approx(1.2 * row["step_ms"] / report["none_ms"])
    assert "accepted length for 1.2x" in format_report(report)
