"""OpenTelemetry tracing across the three services: one trace per request with correct parents, each service under
its own service.name (also in one process), OTLP export to a real receiver, the jsonl file and `specdec trace`,
nothing at all when tracing is off; and --profile's torch profiler trace."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from specdec import otlp_receiver, tracing
from specdec.orchestrator import cli
from specdec.orchestrator.client import SpecdecClient, build_request
from specdec.orchestrator.embedded import EmbeddedStack
from specdec.orchestrator.trace_report import request_traces
from tests.helpers import load

PROMPT = "one two three four one two three four one two three"
OTEL_VARIABLES = ("OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED", "SPECDEC_TRACE_CONTENT")


@pytest.fixture(autouse=True)
def clean_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts from the environment it sets, and leaves no provider behind."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    tracing.reset()
    yield
    tracing.reset()


@pytest.fixture
def exporters() -> dict[str, InMemorySpanExporter]:
    """One in-memory exporter per service (and one for the test's own client span), installed as providers."""
    found = {role: InMemorySpanExporter() for role in (*tracing.ROLES, "client")}
    providers = {}
    for role, exporter in found.items():
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: tracing.service_name(role)}))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        providers[role] = provider
    tracing.install(providers)
    return found


async def generate(stack: EmbeddedStack, ids: list[int], metadata: Any = None, **kwargs: Any) -> Any:
    async with SpecdecClient(stack.address) as client:
        request = build_request(prompt_token_ids=ids, **{"max_new_tokens": 16, "draft": "ngram", "k": 3, **kwargs})
        return await client.stub.Generate(request, metadata=metadata)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


async def test_one_trace_across_the_three_services(
    exporters: dict[str, InMemorySpanExporter], tiny_target: Path
) -> None:
    ids = load(str(tiny_target)).tokenizer.encode(PROMPT)
    client_tracer = tracing.tracer("client")
    async with EmbeddedStack(target=str(tiny_target), device="cpu") as stack:
        with client_tracer.start_as_current_span("client call", kind=SpanKind.CLIENT) as client_span:
            response = await generate(stack, ids, tracing.outgoing_metadata(client_span))
    spans = {role: list(e.get_finished_spans()) for role, e in exporters.items()}
    stats = response.stats

    trace_ids = {s.context.trace_id for group in spans.values() for s in group if s.context is not None}
    assert trace_ids == {client_span.get_span_context().trace_id}, "one trace, started by the client"
    for role, group in spans.items():
        assert {s.resource.attributes[SERVICE_NAME] for s in group} == {f"specdec-{role}"}

    orchestrator = spans["orchestrator"]
    request = next(s for s in orchestrator if s.kind == SpanKind.SERVER)
    assert parent_of(request) == client_span.get_span_context().span_id
    assert request.name.startswith("text_completion ")
    attributes = attrs(request)
    assert attributes["gen_ai.request.max_tokens"] == 16
    assert attributes["gen_ai.usage.input_tokens"] == len(ids)
    assert attributes["gen_ai.usage.output_tokens"] == stats.generated_tokens
    assert list(attributes["gen_ai.response.finish_reasons"]) == ["length"]
    assert attributes["specdec.draft"] == "ngram" and attributes["specdec.k"] == 3
    assert attributes["specdec.policy"] == "exact"
    assert attributes["specdec.acceptance_rate"] == pytest.approx(stats.acceptance_rate)
    assert "specdec.prompt" not in attributes, "content is recorded only when the user opts in"

    steps = [s for s in orchestrator if s.name == "specdec.step"]
    assert len(steps) == stats.steps
    assert all(parent_of(s) == span_id(request) for s in steps)
    assert sum(int(attrs(s)["specdec.accepted"]) for s in steps) == stats.accepted_tokens
    verifier_client = one(orchestrator, "specdec.v1.Verifier/Session")
    draft_client = one(orchestrator, "specdec.v1.Draft/Session")
    assert parent_of(verifier_client) == parent_of(draft_client) == span_id(request)

    verifier = spans["verifier"]
    verifier_server = one(verifier, "specdec.v1.Verifier/Session")
    assert verifier_server.kind == SpanKind.SERVER and parent_of(verifier_server) == span_id(verifier_client)
    verifies = [s for s in verifier if s.name == "verify"]
    assert len(verifies) == stats.steps
    assert all(parent_of(s) == span_id(verifier_server) for s in [*verifies, one(verifier, "prefill")])
    positions = [attrs(s)["specdec.position"] for s in verifies]
    assert positions == sorted(positions) and positions[0] == len(ids)
    assert all(attrs(s)["specdec.forward_ms"] > 0 for s in verifies)

    draft = spans["draft"]
    draft_server = one(draft, "specdec.v1.Draft/Session")
    assert parent_of(draft_server) == span_id(draft_client)
    proposals = [s for s in draft if s.name == "propose"]
    assert len(proposals) == stats.draft_calls > 0
    assert all(parent_of(s) == span_id(draft_server) for s in proposals)
    assert {attrs(s)["specdec.draft_method"] for s in proposals} == {"ngram"}


async def test_content_is_opt_in_and_http_callers_pass_their_trace_context(
    exporters: dict[str, InMemorySpanExporter], tiny_target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPECDEC_TRACE_CONTENT", "1")
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    body = {"prompt": "hello there", "max_tokens": 4, "temperature": 0, "draft": "none"}
    async with (
        EmbeddedStack(target=str(tiny_target), device="cpu", http_port=0) as stack,
        httpx.AsyncClient(base_url=stack.http_url, timeout=60) as http,
    ):
        reply = await http.post("/completions", json=body, headers={"traceparent": parent})
    assert reply.status_code == 200, reply.text
    request = next(s for s in exporters["orchestrator"].get_finished_spans() if s.kind == SpanKind.SERVER)
    assert request.context is not None and f"{request.context.trace_id:032x}" == parent.split("-")[1]
    assert request.parent is not None and f"{request.parent.span_id:016x}" == parent.split("-")[2]
    attributes = attrs(request)
    assert attributes["specdec.prompt"] == "hello there"
    assert list(attributes["specdec.completions"]) == [reply.json()["choices"][0]["text"]]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[otlp_receiver.SpanFileReceiver, int]]:
    """Our OTLP/gRPC receiver (the collector's TraceService from opentelemetry-proto) on a free port."""
    server, port, servicer = otlp_receiver.serve(tmp_path / "received.jsonl", port=0, host="127.0.0.1")
    yield servicer, port
    server.stop(0)


async def test_otlp_export_reaches_a_receiver_and_the_trace_report_reads_it(
    receiver: tuple[otlp_receiver.SpanFileReceiver, int],
    tiny_target: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    servicer, port = receiver
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    tracing.reset()
    ids = load(str(tiny_target)).tokenizer.encode(PROMPT)
    async with EmbeddedStack(target=str(tiny_target), device="cpu") as stack:
        response = await generate(stack, ids)
    await asyncio.to_thread(tracing.force_flush)  # EmbeddedStack flushes on exit; this one is for certain
    lines = [json.loads(line) for line in servicer.path.read_text().splitlines()]
    assert servicer.spans_received == len(lines) > 0
    found: dict[str, list[str]] = {}
    for line in lines:
        found.setdefault(line["service"], []).append(line["name"])
    assert set(found) == {"specdec-orchestrator", "specdec-verifier", "specdec-draft"}
    assert found["specdec-orchestrator"].count("specdec.step") == response.stats.steps
    assert found["specdec-verifier"].count("verify") == response.stats.steps
    assert "propose" in found["specdec-draft"]
    # The receiver writes the jsonl exporter's format, kinds and statuses included, so `specdec trace` reads it.
    assert {line["kind"] for line in lines} >= {"SERVER", "CLIENT", "INTERNAL"}
    assert {line["status"] for line in lines} <= {"UNSET", "OK", "ERROR"}
    step = next(line for line in lines if line["name"] == "specdec.step")
    assert isinstance(step["attributes"]["specdec.k"], int) and step["parent_span_id"]
    [request] = request_traces(lines)
    assert len(request.steps) == response.stats.steps
    assert cli.main(["trace", str(servicer.path)]) == 0
    assert "where the time went" in capsys.readouterr().out


async def test_jsonl_file_and_the_trace_report(
    tiny_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "spans.jsonl"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jsonl")
    monkeypatch.setenv("SPECDEC_TRACE_FILE", str(path))
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mine")
    tracing.reset()
    ids = load(str(tiny_target)).tokenizer.encode(PROMPT)
    async with EmbeddedStack(target=str(tiny_target), device="cpu") as stack:
        first = await generate(stack, ids)
        second = await generate(stack, ids, max_new_tokens=6, draft="none")

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert {line["service"] for line in lines} == {"mine-orchestrator", "mine-verifier", "mine-draft"}
    for line in lines:
        assert set(line) >= {"trace_id", "span_id", "parent_span_id", "service", "name", "start_unix_ns", "end_unix_ns"}
        assert line["duration_ms"] >= 0 and isinstance(line["attributes"], dict) and isinstance(line["events"], list)
    requests = request_traces(lines)
    assert [len(r.steps) for r in requests] == [first.stats.steps, second.stats.steps]

    trace_id = requests[0].trace_id
    assert cli.main(["trace", str(path), "--trace-id", trace_id[:12]]) == 0
    out = capsys.readouterr().out
    print(out)  # shown with -s: the example in the README comes from here
    assert out.count("trace ") == 1 and trace_id in out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+\s.*\|.*\|$", line)]
    assert len(rows) == first.stats.steps
    assert "where the time went" in out and "acceptance" in out
    assert cli.main(["trace", str(path), "--trace-id", "0" * 32]) == 1


async def test_tracing_off_exports_nothing(tiny_target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spans.jsonl"
    monkeypatch.setenv("SPECDEC_TRACE_FILE", str(path))  # a file but no exporter: still off
    assert not tracing.enabled()
    assert all(isinstance(tracing.tracer(role), trace.NoOpTracer) for role in tracing.ROLES)
    ids = load(str(tiny_target)).tokenizer.encode(PROMPT)
    async with EmbeddedStack(target=str(tiny_target), device="cpu") as stack:
        response = await generate(stack, ids)
    assert response.stats.generated_tokens == 16
    assert not tracing.enabled() and not path.exists()


def test_an_unknown_exporter_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    assert cli.main(["generate", "--prompt", "x"]) == 2
    assert "OTEL_TRACES_EXPORTER" in capsys.readouterr().err


def test_profile_writes_a_chrome_trace(tiny_target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "profile"
    argv = ["generate", "--target", str(tiny_target), "--device", "cpu", "--prompt", PROMPT]
    assert cli.main([*argv, "--max-new-tokens", "6", "--draft", "ngram", "--profile", str(out_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["steps"] > 0  # stdout stays one JSON object
    [path] = out_dir.glob("*.json")
    events = json.loads(path.read_text())["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert "verifier-model:verify" in names and "draft-model:_next_batch" in names
    assert any(name.startswith("aten::") for name in names), "the model forwards' operators are recorded"


def test_no_traceparent_means_a_new_trace() -> None:
    """Metadata without a traceparent gives an empty context: a server span never adopts a stray current span."""
    assert trace.get_current_span(tracing.incoming_context([("other", "x")])) is trace.INVALID_SPAN
    assert tracing.outgoing_metadata(trace.INVALID_SPAN) is None
