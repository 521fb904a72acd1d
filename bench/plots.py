"""Plots and one-line findings from a `specdec bench` summary (the `"summary"` rows of results.json).

Figures are drawn on `matplotlib.figure.Figure` objects with an explicit Agg canvas instead of pyplot: no global
backend switch, no figure registry, no window, and safe to call from any thread. A plot with nothing to draw is
not written, and rows with missing (None / NaN) numbers are left out of the plots they would break.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

from specdec.bench.sweep import BASELINE, HF, HF_ASSISTED  # the method names of the baseline and the HF peers

Row = Mapping[str, Any]

_DPI = 100


def _num(value: Any) -> float | None:
    """A finite float, or None for None / NaN / inf / non-numbers (summaries may hold any of them)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _tps(row: Row, key: str = "median") -> float | None:
    tps = row.get("tokens_per_second")
    return _num(tps.get(key)) if isinstance(tps, Mapping) else None


def _k(row: Row) -> int:
    k = row.get("k")
    return k if isinstance(k, int) else 0


def _is_specdec(row: Row) -> bool:
    """A speculative row: through the services with a real draft (the target-only baseline is "none")."""
    return row.get("kind", "specdec") == "specdec" and row.get("draft", BASELINE) != BASELINE


def _group(row: Row) -> str:
    """What stays fixed along the K axis: draft, controller and policy (empty ones left out)."""
    return " ".join(str(row.get(f)) for f in ("draft", "controller", "policy") if row.get(f)) or str(row["method"])


def _suites(summary: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(str(r["suite"]) for r in summary))


def _find(rows: Sequence[Row], suite: str, method: str) -> Row | None:
    return next((r for r in rows if r["suite"] == suite and r["method"] == method), None)


def _by_group(rows: Sequence[Row], key: Callable[[Row], str]) -> dict[str, list[Row]]:
    """Rows grouped in first-seen order, each group sorted by K so lines are drawn left to right."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return {g: sorted(rs, key=_k) for g, rs in groups.items()}


def _panels(n: int, width: float = 5.5, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    """A figure with n subplots, at most three per row; spare cells hidden."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to fig: PNG output without pyplot or a global backend
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _legends(fig: Figure, axes: Sequence[Axes]) -> None:
    """A few entries fit inside each subplot; many go below it, and the figure grows to hold them so the axes keep
    their size and no entry is cut off (a sweep over drafts x K x policies x controllers has dozens)."""
    extra = 0.0
    for ax in axes:
        n = len(ax.get_legend_handles_labels()[1])
        if n <= 6:
            ax.legend(fontsize=7)
            continue
        cols = 2 if n > 8 else 1
        # anchored a fixed distance under the axes (below the x label) whatever the axes height
        below = ax.transAxes + ScaledTranslation(0, -0.45, fig.dpi_scale_trans)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below, ncols=cols)
        extra = max(extra, 0.5 + 0.13 * math.ceil(n / cols))
    if extra and axes:
        rows = axes[0].get_subplotspec().get_gridspec().nrows  # type: ignore[union-attr]
        width, height = fig.get_size_inches()
        fig.set_size_inches(width, height + extra * rows)


def _save(fig: Figure, out_dir: Path, name: str) -> Path:
    path = out_dir / name
    fig.savefig(path, dpi=_DPI)
    return path


def _colors(summary: Sequence[Row]) -> dict[str, str]:
    """One colour per specdec group across all panels, so a group looks the same in every suite and plot."""
    groups = dict.fromkeys(_group(r) for r in summary if _is_specdec(r))
    palette = [f"C{i}" for i in range(10) if i != 7]  # C7 is grey, kept for the HF-assisted lines
    return {g: palette[i % len(palette)] for i, g in enumerate(groups)}


def _throughput_vs_k(summary: Sequence[Row], out_dir: Path) -> Path | None:
    def drawable(r: Row) -> bool:
        return _k(r) > 0 and _tps(r) is not None and (_is_specdec(r) or r.get("kind") == HF_ASSISTED)

    suites = [s for s in _suites(summary) if any(r["suite"] == s and drawable(r) for r in summary)]
    if not suites:
        return None
    colors = _colors(summary)
    fig, axes = _panels(len(suites))
    for ax, suite in zip(axes, suites, strict=True):
        mine = [r for r in summary if r["suite"] == suite and drawable(r)]
        for group, rows in _by_group([r for r in mine if _is_specdec(r)], _group).items():
            ys = [_or(_tps(r), math.nan) for r in rows]
            # error bars span min..max across iterations (asymmetric around the median)
            lo = [max(y - _or(_tps(r, "min"), y), 0.0) for y, r in zip(ys, rows, strict=True)]
            hi = [max(_or(_tps(r, "max"), y) - y, 0.0) for y, r in zip(ys, rows, strict=True)]
            ax.errorbar(
                [_k(r) for r in rows], ys, yerr=[lo, hi], marker="o", capsize=3, label=group, color=colors.get(group)
            )
        # HF assisted: dashed grey, one marker per draft, so it reads as the peer rather than one of the groups
        assisted = _by_group([r for r in mine if r.get("kind") == HF_ASSISTED], lambda r: str(r.get("draft")))
        for (draft, rows), marker in zip(assisted.items(), itertools.cycle("s^Dv"), strict=False):
            ax.plot(
                [_k(r) for r in rows],
                [_or(_tps(r), math.nan) for r in rows],
                linestyle="--",
                marker=marker,
                color="0.35",
                alpha=0.8,
                label=f"HF assisted ({draft})",
            )
        # the baselines do not depend on K: horizontal reference lines
        for method, style, text in ((BASELINE, "-", "target only"), (HF, ":", "HF generate")):
            base = _find(summary, suite, method)
            y = _tps(base) if base is not None else None
            if y is not None:
                ax.axhline(y, linestyle=style, color="black", linewidth=1.2, label=f"{method}: {text} ({y:.1f})")
        ax.set_xticks(sorted({_k(r) for r in mine}))
        ax.set_title(suite)
        ax.set_xlabel("K (draft tokens per step)")
        ax.set_ylabel("median tokens/s")
        ax.grid(alpha=0.3)
    fig.suptitle("Throughput vs K (bars: min..max over iterations)")
    _legends(fig, axes)
    return _save(fig, out_dir, "throughput_vs_k.png")


def _acceptance_vs_k(summary: Sequence[Row], out_dir: Path) -> Path | None:
    def drawable(r: Row) -> bool:
        return _is_specdec(r) and _k(r) > 0 and _num(r.get("acceptance_rate")) is not None

    suites = [s for s in _suites(summary) if any(r["suite"] == s and drawable(r) for r in summary)]
    if not suites:
        return None
    colors = _colors(summary)
    fig, axes = _panels(len(suites))
    for ax, suite in zip(axes, suites, strict=True):
        mine = [r for r in summary if r["suite"] == suite and drawable(r)]
        for group, rows in _by_group(mine, _group).items():
            ax.plot(
                [_k(r) for r in rows],
                [_or(_num(r["acceptance_rate"]), math.nan) for r in rows],
                "o-",
                label=group,
                color=colors.get(group),
            )
        ax.set_xticks(sorted({_k(r) for r in mine}))
        ax.set_ylim(0, 1.05)
        ax.set_title(suite)
        ax.set_xlabel("K (draft tokens per step)")
        ax.set_ylabel("acceptance rate")
        ax.grid(alpha=0.3)
    fig.suptitle("Draft acceptance rate vs K")
    _legends(fig, axes)
    return _save(fig, out_dir, "acceptance_vs_k.png")


def _positions(row: Row) -> list[float]:
    """The per-position acceptance, cut at the first missing value (later positions would be misplaced)."""
    out: list[float] = []
    for v in row.get("acceptance_per_position") or []:
        x = _num(v)
        if x is None:
            break
        out.append(x)
    return out


def _acceptance_per_position(summary: Sequence[Row], out_dir: Path) -> Path | None:
    def drawable(r: Row) -> bool:
        return _is_specdec(r) and bool(_positions(r))

    suites = [s for s in _suites(summary) if any(r["suite"] == s and drawable(r) for r in summary)]
    if not suites:
        return None
    fig, axes = _panels(len(suites))
    for ax, suite in zip(axes, suites, strict=True):
        n = 0
        for i, r in enumerate(r for r in summary if r["suite"] == suite and drawable(r)):
            acc = _positions(r)
            n = max(n, len(acc))
            # past ten lines the colours repeat, so the line style changes with each round of colours
            style = ("-", "--", ":", "-.")[i // 10 % 4]
            ax.plot(
                range(1, len(acc) + 1),
                acc,
                marker="o",
                linestyle=style,
                color=f"C{i % 10}",
                markersize=4,
                label=str(r["method"]),
            )
        ax.set_xticks(range(1, n + 1) if n <= 16 else range(1, n + 1, math.ceil(n / 16)))
        ax.set_ylim(0, 1.05)
        ax.set_title(suite)
        ax.set_xlabel("draft position")
        ax.set_ylabel("acceptance at position")
        ax.grid(alpha=0.3)
    fig.suptitle("Acceptance per draft position")
    _legends(fig, axes)
    return _save(fig, out_dir, "acceptance_per_position.png")


def _speedup_vs_peers(summary: Sequence[Row], out_dir: Path) -> Path | None:
    rows = [r for r in summary if _is_specdec(r)]
    series = [
        (key, text, [_num(r.get(key)) for r in rows])
        for key, text in (("vs_baseline", "vs none (target only)"), ("vs_hf", "vs hf (HF generate)"))
    ]
    series = [s for s in series if any(v is not None for v in s[2])]
    if not rows or not series:
        return None
    fig = Figure(figsize=(9, max(3.0, 0.35 * len(rows) * len(series) + 1.5)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    height = 0.8 / len(series)
    for i, (_, text, values) in enumerate(series):
        # None ratios are dropped bar by bar, so a row without an HF peer still shows its baseline bar
        ys = [j + (i - (len(series) - 1) / 2) * height for j, v in enumerate(values) if v is not None]
        bars = ax.barh(ys, [v for v in values if v is not None], height=height, label=text, color=f"C{i}")
        ax.bar_label(bars, fmt="%.2fx", fontsize=7, padding=2)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), [f"{r['suite']}: {r['method']}" for r in rows], fontsize=8)
    ax.invert_yaxis()  # first row on top, as in the summary table
    ax.set_xlabel("speedup (paired median ratio of tokens/s; 1.0 = same speed)")
    ax.set_title("Speculative decoding vs target-only and HF generate")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "speedup_vs_peers.png")


def write_plots(summary: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the PNGs that have something to draw into out_dir (created if missing); return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        plot(summary, out_dir)
        for plot in (_throughput_vs_k, _acceptance_vs_k, _acceptance_per_position, _speedup_vs_peers)
    ]
    return [p for p in paths if p is not None]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def findings(summary: list[dict[str, Any]]) -> list[str]:
    """One plain-English line per suite: where throughput peaks, how acceptance decays, the HF-assisted peak and
    any greedy output that differs from target-only."""
    lines = []
    for suite in _suites(summary):
        mine = [r for r in summary if r["suite"] == suite]
        base, hf = _find(mine, suite, BASELINE), _find(mine, suite, HF)
        spec = [r for r in mine if _is_specdec(r) and _k(r) > 0 and _tps(r) is not None]
        parts: list[str] = []
        if spec:
            # ties go to the smaller K: the same speed for less drafting work
            best = max(spec, key=lambda r: (_tps(r), -_k(r)))
            ratios = [
                f"{v:.1f}x {name}"
                for name, v in (("none", _num(best.get("vs_baseline"))), ("hf", _num(best.get("vs_hf"))))
                if v is not None
            ]
            peak = f"throughput peaks at K={_k(best)} ({_group(best)}, {_tps(best):.1f} tok/s"
            parts.append(peak + "".join(f", {x}" for x in ratios) + ")")
            vs = _num(best.get("vs_baseline"))
            if vs is not None and vs < 1:
                parts.append("no speculative setting beats target-only")
            # acceptance decay: the longest per-position curve of the best group shows the most positions
            curves = [r for r in spec if _group(r) == _group(best) and _positions(r)] or [
                r for r in spec if _positions(r)
            ]
            if curves:
                acc = _positions(max(curves, key=lambda r: len(_positions(r))))
                if len(acc) == 1:
                    parts.append(f"acceptance {_pct(acc[0])} at position 1")
                else:
                    verb = "falls" if acc[-1] < acc[0] else "rises" if acc[-1] > acc[0] else "stays"
                    parts.append(
                        f"acceptance {verb} from {_pct(acc[0])} at position 1 to {_pct(acc[-1])} at position {len(acc)}"
                    )
        else:
            known = [
                f"{name} {_tps(r):.1f} tok/s"
                for name, r in (("none", base), ("hf", hf))
                if r is not None and _tps(r) is not None
            ]
            parts.append("no speculative rows with K>0" + (f" ({', '.join(known)})" if known else ""))
        assisted = [r for r in mine if r.get("kind") == HF_ASSISTED and _tps(r) is not None]
        if assisted:
            top = max(assisted, key=lambda r: (_tps(r), -_k(r)))
            parts.append(f"HF assisted ({top.get('draft')}) peaks at K={_k(top)} with {_tps(top):.1f} tok/s")
        differ = [str(r["method"]) for r in mine if _is_specdec(r) and r.get("identical_to_baseline") is False]
        if differ:
            parts.append(f"output differs from target-only for {', '.join(differ)}")
        lines.append(f"{suite}: " + "; ".join(parts))
    return lines
