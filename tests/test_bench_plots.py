"""The benchmark plots and findings on a synthetic summary: every PNG is written and valid, empty plots are
skipped, missing values do not crash, and the findings name the known best K."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from specdec.bench.plots import findings, write_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {"throughput_vs_k.png", "acceptance_vs_k.png", "acceptance_per_position.png", "speedup_vs_peers.png"}


def _tps(median: float) -> dict[str, float]:
    return {
        "n": 3,
        "mean": median,
        "median": median,
        "std": 0.5,
        "min": median - 1,
        "max": median + 1,
        "p50": median,
        "p95": median + 0.9,
        "p99": median + 1,
    }


def _row(suite: str, kind: str, draft: str, k: int, median: float, **extra: Any) -> dict[str, Any]:
    controller = "fixed" if kind == "specdec" and draft != "none" else ""
    if kind == "hf":
        method = "hf"
    elif kind == "hf-assisted":
        method = f"hf-assisted {draft} k={k}"
    elif draft == "none":
        method = "none"
    else:
        method = f"{draft} k={k} {controller}"
    row: dict[str, Any] = {
        "suite": suite,
        "method": method,
        "kind": kind,
        "draft": draft,
        "k": k,
        "policy": "",
        "controller": controller,
        "tokens_per_second": _tps(median),
        "vs_baseline": median / 10.0,
        "vs_hf": median / 12.0 if kind != "hf" else 1.0,
        "acceptance_rate": None,
        "mean_accepted_length": None,
        "acceptance_per_position": [],
        "identical_to_baseline": True,
    }
    row.update(extra)
    return row


def _baselines(suite: str) -> list[dict[str, Any]]:
    return [_row(suite, "specdec", "none", 0, 10.0, vs_hf=None), _row(suite, "hf", "none", 0, 12.0)]


def _summary() -> list[dict[str, Any]]:
    """chat peaks at K=2, code at K=4; acceptance decays with position."""
    peaks = {"chat": {1: 14.0, 2: 18.0, 4: 15.0}, "code": {1: 15.0, 2: 22.0, 4: 29.0}}
    rows: list[dict[str, Any]] = []
    for suite, by_k in peaks.items():
        rows += _baselines(suite)
        rows += [_row(suite, "hf-assisted", "ngram", k, 11.0 + k) for k in by_k]
        for k, median in by_k.items():
            acc = [round(0.8 - 0.1 * i, 2) for i in range(k)]
            rows.append(
                _row(
                    suite,
                    "specdec",
                    "ngram",
                    k,
                    median,
                    acceptance_rate=sum(acc) / k,
                    mean_accepted_length=1 + sum(acc),
                    acceptance_per_position=acc,
                )
            )
    return rows


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert 300 <= width <= 4000 and 200 <= height <= 4000, (path.name, image.size)


def test_every_plot_is_written_as_a_valid_png(tmp_path: Path) -> None:
    out = tmp_path / "plots"  # created by write_plots
    paths = write_plots(_summary(), out)
    assert {p.name for p in paths} == ALL_PLOTS
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_PLOTS)
    for path in paths:
        _assert_png(path)


def test_only_baselines_writes_only_what_applies(tmp_path: Path) -> None:
    assert write_plots(_baselines("chat"), tmp_path) == []
    assert list(tmp_path.iterdir()) == []
    assert findings(_baselines("chat")) == ["chat: no speculative rows with K>0 (none 10.0 tok/s, hf 12.0 tok/s)"]
    assert write_plots([], tmp_path) == [] and findings([]) == []


def test_missing_values_are_skipped_not_fatal(tmp_path: Path) -> None:
    rows = [
        *_baselines("prompts"),
        _row("prompts", "specdec", "ngram", 2, 11.0, vs_hf=None),  # no acceptance, no HF ratio
        _row("prompts", "specdec", "ngram", 4, 13.0, vs_hf=float("nan"), acceptance_per_position=[0.5, None]),
    ]
    rows[0]["tokens_per_second"] = None  # a baseline without timings: no reference line, no crash
    names = {p.name for p in write_plots(rows, tmp_path)}
    # no acceptance rates: that plot is skipped; one position survives the None
    assert names == {"throughput_vs_k.png", "acceptance_per_position.png", "speedup_vs_peers.png"}
    for path in tmp_path.iterdir():
        _assert_png(path)
    (line,) = findings(rows)
    assert line.startswith("prompts: throughput peaks at K=4 (ngram fixed, 13.0 tok/s, 1.3x none)")
    assert "acceptance 50% at position 1" in line


def test_findings_name_the_best_k_and_acceptance_decay() -> None:
    chat, code = findings(_summary())
    assert chat.startswith("chat: throughput peaks at K=2 (ngram fixed, 18.0 tok/s, 1.8x none, 1.5x hf)")
    assert code.startswith("code: throughput peaks at K=4 (ngram fixed, 29.0 tok/s, 2.9x none, 2.4x hf)")
    # the best group's longest curve: K=4, 0.8 .. 0.5
    assert "acceptance falls from 80% at position 1 to 50% at position 4" in chat
    assert "HF assisted (ngram) peaks at K=4 with 15.0 tok/s" in code
    assert "differs" not in chat


def test_findings_flag_slowdowns_and_mismatches() -> None:
    rows = [
        *_baselines("chat"),
        _row("chat", "specdec", "ngram", 4, 8.0, identical_to_baseline=False),
        _row("chat", "specdec", "ngram", 8, 8.0),  # a tie goes to the smaller K
    ]
    (line,) = findings(rows)
    assert "peaks at K=4" in line
    assert "no speculative setting beats target-only" in line
    assert "output differs from target-only for ngram k=4 fixed" in line
