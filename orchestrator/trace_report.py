"""`specdec trace FILE`: read the jsonl exporter's spans and show, per request, a waterfall of its speculative
steps and where the time went (draft / verify / network / prefill / other).

It reads the orchestrator's spans: the request span (GenAI attributes) and its `specdec.step` children, which
carry each step's K, acceptance and time split as the orchestrator measured them. Spans of the verifier and the
draft service in the same trace are counted, so a missing service shows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specdec.orchestrator.telemetry import STEP_SPAN

BAR_WIDTH = 40
DRAFT, NETWORK, VERIFY, PREFILL, OTHER, IDLE = "▒", "░", "█", "▓", "·", " "
LEGEND = f"{PREFILL} prefill (verifier)  {DRAFT} draft  {NETWORK} network  {VERIFY} verify  {OTHER} other"


@dataclass
class Step:
    span: dict[str, Any]

    def attr(self, name: str, default: Any = 0) -> Any:
        return self.span["attributes"].get(f"specdec.{name}", default)

    @property
    def start(self) -> int:
        return int(self.span["start_unix_ns"])

    @property
    def end(self) -> int:
        return int(self.span["end_unix_ns"])

    @property
    def duration_ms(self) -> float:
        return (self.end - self.start) / 1e6


@dataclass
class RequestTrace:
    """One request: its orchestrator span, its steps in time order, and how many spans each service sent."""

    trace_id: str
    request: dict[str, Any]
    steps: list[Step]
    services: dict[str, int] = field(default_factory=dict)
    prefills: list[Step] = field(default_factory=list)  # the verifier's prefill spans under this request

    def attr(self, name: str, default: Any = None) -> Any:
        return self.request["attributes"].get(name, default)

    @property
    def wall_ms(self) -> float:
        return (int(self.request["end_unix_ns"]) - int(self.request["start_unix_ns"])) / 1e6


def load_spans(path: str | Path) -> list[dict[str, Any]]:
    """Every span of a jsonl file; blank lines are skipped, a malformed line is an error naming its number."""
    spans = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON object: {exc}") from exc
    return spans


def request_traces(spans: Iterable[dict[str, Any]], trace_id: str = "") -> list[RequestTrace]:
    """The requests found in `spans` (only those whose trace id starts with `trace_id`), oldest first."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        if span.get("trace_id", "").startswith(trace_id.lower()):
            by_trace[span["trace_id"]].append(span)
    found = []
    for tid, members in by_trace.items():
        services: dict[str, int] = defaultdict(int)
        for span in members:
            services[span.get("service", "")] += 1
        parents = {span["span_id"]: span.get("parent_span_id") for span in members}
        for request in members:
            if "gen_ai.operation.name" not in request.get("attributes", {}):
                continue
            steps = [Step(s) for s in members if s["name"] == STEP_SPAN and s["parent_span_id"] == request["span_id"]]
            steps.sort(key=lambda s: (s.start, s.attr("sample"), s.attr("step")))
            prefills = [
                Step(s) for s in members if s["name"] == "prefill" and _descends(s, request["span_id"], parents)
            ]
            prefills.sort(key=lambda s: s.start)
            found.append(RequestTrace(tid, request, steps, dict(services), prefills))
    found.sort(key=lambda r: int(r.request["start_unix_ns"]))
    return found


def _descends(span: dict[str, Any], ancestor: str, parents: dict[str, str | None]) -> bool:
    parent = span.get("parent_span_id")
    for _ in range(len(parents)):  # bounded: a malformed file may have a cycle
        if parent is None or parent == ancestor:
            return parent == ancestor
        parent = parents.get(parent)
    return False


def render(request: RequestTrace, width: int = BAR_WIDTH) -> str:
    """The waterfall and the summary of one request, as text."""
    lines = [_header(request)]
    lines += _waterfall(request, width)
    lines += _summary(request)
    return "\n".join(lines)


def _header(r: RequestTrace) -> str:
    services = ", ".join(f"{name} {count}" for name, count in sorted(r.services.items()))
    status = "" if r.request.get("status") != "ERROR" else f"  FAILED: {r.attr('error.type', 'error')}"
    settings = (
        f"draft {r.attr('specdec.draft', '?')}, K {r.attr('specdec.k', '?')} ({r.attr('specdec.k_controller', '?')}), "
        f"policy {r.attr('specdec.policy', '?')}"
    )
    tokens = r.attr("gen_ai.usage.output_tokens", "?")
    finish = ",".join(r.attr("gen_ai.response.finish_reasons", []) or [])
    return (
        f"trace {r.trace_id}  {r.request['name']}{status}\n"
        f"  {settings}\n"
        f"  {r.attr('gen_ai.usage.input_tokens', '?')} prompt tokens -> {tokens} tokens ({finish or '-'}) in "
        f"{len(r.steps)} steps, {r.wall_ms:.1f} ms\n"
        f"  spans: {services}"
    )


def _waterfall(r: RequestTrace, width: int) -> list[str]:
    if not r.steps:
        return ["  (no step spans)"]
    origin = int(r.request["start_unix_ns"])
    total_ns = max(1, int(r.request["end_unix_ns"]) - origin)
    samples = len({s.attr("sample") for s in r.steps}) > 1
    rows = []
    for prefill in r.prefills:
        label = f"prefill {prefill.attr('prompt_tokens'):>5} tokens"
        rows.append((label, f"{prefill.duration_ms:9.2f}", _bar(prefill, origin, total_ns, width, PREFILL)))
    for step in r.steps:
        ints = " ".join(f"{step.attr(name):>{w}}" for name, w in (("step", 4), ("position", 5), ("k", 3)))
        counts = f"{step.attr('drafted'):>4} {step.attr('accepted'):>4}"
        times = "  ".join(f"{float(step.attr(n, 0.0)):{w}.2f}" for n, w in (("draft_ms", 8), ("network_ms", 6)))
        sample = f"{step.attr('sample'):>3} " if samples else ""
        verify = f"{float(step.attr('verify_ms', 0.0)):9.2f}"
        rows.append((f"{sample}{ints} {counts}  {times}", verify, _bar(step, origin, total_ns, width)))
    head = f"{'smp ' if samples else ''}step   pos   K  ver  acc  draft ms  net ms"
    label_width = max(len(head), *(len(label) for label, _, _ in rows))
    end_label = f"{r.wall_ms:.0f} ms"
    scale = f"0 ms{' ' * max(1, width - 2 - len(end_label))}{end_label}"
    lines = ["", f"  {head:<{label_width}}  verify ms  {scale}", f"  {LEGEND}"]
    lines += [f"  {label:<{label_width}}  {ms}  |{bar}|" for label, ms, bar in rows]
    return lines


def _bar(step: Step, origin: int, total_ns: int, width: int, only: str = "") -> str:
    """The span's place in the request (one cell = total / width); a step's cells split draft -> network ->
    verify -> other in proportion to its measured times, any other span's cells are all `only`."""
    first = min(width - 1, int((step.start - origin) * width / total_ns))
    last = max(first + 1, min(width, round((step.end - origin) * width / total_ns)))
    if only:
        return IDLE * first + only * (last - first) + IDLE * (width - last)
    duration = max(step.duration_ms, 1e-9)
    bounds = []
    elapsed = 0.0
    for name in ("draft_ms", "network_ms", "verify_ms"):
        elapsed += float(step.attr(name, 0.0))
        bounds.append(elapsed / duration)
    cells = []
    for cell in range(first, last):
        middle = (cell + 0.5 - first) / (last - first)  # where in the step this cell is, 0 .. 1
        kind = next((c for c, bound in zip((DRAFT, NETWORK, VERIFY), bounds, strict=True) if middle < bound), OTHER)
        cells.append(kind)
    return IDLE * first + "".join(cells) + IDLE * (width - last)


def _summary(r: RequestTrace) -> list[str]:
    parts = {
        "draft": sum(float(s.attr("draft_ms", 0.0)) for s in r.steps),
        "verify": sum(float(s.attr("verify_ms", 0.0)) for s in r.steps),
        "network": sum(float(s.attr("network_ms", 0.0)) for s in r.steps),
        "prefill": float(r.attr("specdec.prefill_ms", 0.0) or 0.0),
    }
    parts["other"] = max(0.0, r.wall_ms - sum(parts.values()))
    total = sum(parts.values()) or 1.0
    lines = ["", f"  where the time went ({r.wall_ms:.1f} ms wall):"]
    for name, ms in parts.items():
        bar = VERIFY * round(ms / total * 20)
        lines.append(f"    {name:<8} {ms:9.1f} ms {ms / total:6.1%}  {bar}")
    if sum(parts.values()) - parts["other"] > r.wall_ms:
        lines.append("    (samples ran concurrently: their times add up to more than the wall time)")
    drafted = sum(int(s.attr("drafted")) for s in r.steps)
    accepted = sum(int(s.attr("accepted")) for s in r.steps)
    committed = sum(int(s.attr("committed")) for s in r.steps)
    rate = f"{accepted / drafted:.0%}" if drafted else "-"
    mean = committed / len(r.steps) if r.steps else 0.0
    lines.append(
        f"  acceptance {rate} ({accepted}/{drafted} draft tokens), {mean:.2f} tokens per step, "
        f"draft calls {sum(1 for s in r.steps if int(s.attr('k')) > 0)}"
    )
    failure = r.attr("specdec.draft_failure")
    if failure:
        lines.append(f"  draft failed over to target-only: {failure}")
    return lines


def report(path: str | Path, trace_id: str = "", width: int = BAR_WIDTH) -> str:
    """The whole report of a file (every request, or those whose trace id starts with `trace_id`)."""
    requests = request_traces(load_spans(path), trace_id)
    if not requests:
        wanted = f" with trace id {trace_id}" if trace_id else ""
        raise LookupError(f"{path}: no request spans{wanted} (is OTEL_TRACES_EXPORTER=jsonl set on the orchestrator?)")
    return "\n\n".join(render(r, width) for r in requests)
