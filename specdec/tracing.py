"""OpenTelemetry tracing for the three services: one TracerProvider per service, configured by OTEL_* variables.

Each service (orchestrator, verifier, draft) exports under its own `service.name`, also when all three share a
process (embedded mode, `serve all`): every role gets its own provider, so nothing depends on OTel's global
provider. Tracing is off unless OTEL_TRACES_EXPORTER names an exporter: then every tracer is OTel's no-op tracer
and instrumented code skips its work after one `is_recording()` check.

Configuration (standard OTel variables, plus two of ours):
  OTEL_TRACES_EXPORTER   comma-separated: otlp (OTLP/gRPC), console, jsonl (ours), none; unset = off
  OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, ..._INSECURE, ..._HEADERS: read by OTLP
  OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG: read by the SDK (default parentbased_always_on)
  OTEL_SERVICE_NAME      the prefix of the service names (default "specdec": specdec-orchestrator, ...)
  OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED: as in the SDK
  SPECDEC_TRACE_FILE     the jsonl exporter's file (default specdec-traces.jsonl)
  SPECDEC_TRACE_CONTENT  1: record prompt and output text on the request span (off: they may be sensitive)

Trace context crosses services as W3C `traceparent` / `tracestate` gRPC metadata (OTel's configured
propagator, OTEL_PROPAGATORS), injected by the caller and extracted by the server handler.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from specdec import __version__

log = logging.getLogger(__name__)

ORCHESTRATOR, VERIFIER, DRAFT = "orchestrator", "verifier", "draft"
ROLES = (ORCHESTRATOR, VERIFIER, DRAFT)
DEFAULT_PREFIX = "specdec"
DEFAULT_TRACE_FILE = "specdec-traces.jsonl"
EXPORTERS = ("otlp", "console", "jsonl", "none")
FLUSH_TIMEOUT_MS = 5000

_lock = threading.Lock()
_providers: dict[str, TracerProvider] = {}  # role -> its provider; empty and off: no-op tracers
_installed = False  # providers were given by the caller (tests): never rebuilt from the environment
_NOOP = trace.NoOpTracer()


class TracingConfigError(ValueError):
    """An OTEL_TRACES_EXPORTER value we cannot honour."""


def service_name(role: str) -> str:
    """`<OTEL_SERVICE_NAME or "specdec">-<role>`: the variable is a prefix, so the three stay apart."""
    return f"{os.environ.get('OTEL_SERVICE_NAME') or DEFAULT_PREFIX}-{role}"


def exporter_names() -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER asks for; [] = tracing off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r}; use {', '.join(EXPORTERS)}")
    return [n for n in names if n != "none"]


def enabled() -> bool:
    """Whether any service exports spans (cheap: checked before building per-step attributes)."""
    return bool(_providers) or (not _installed and bool(exporter_names()))


def tracer(role: str) -> Tracer:
    """The tracer of one service (a role), built from the environment on first use; the no-op tracer when off."""
    provider = _providers.get(role)
    if provider is None:
        if _installed or not exporter_names():
            return _NOOP
        with _lock:
            provider = _providers.get(role) or _providers.setdefault(role, _provider_from_env(role))
    return provider.get_tracer("specdec", __version__)


def _provider_from_env(role: str) -> TracerProvider:
    resource = Resource.create({SERVICE_NAME: service_name(role), "specdec.role": role})
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER / _ARG, read by the SDK
    for name in exporter_names():
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, TLS, headers, timeout: OTEL_EXPORTER_OTLP_* variables
    if name == "console":
        return ConsoleSpanExporter()
    return JsonLinesSpanExporter(os.environ.get("SPECDEC_TRACE_FILE") or DEFAULT_TRACE_FILE)


def install(providers: Mapping[str, TracerProvider]) -> None:
    """Use these providers (by role) instead of the environment's; roles left out are not traced. For tests and
    embedding applications that configure OTel themselves."""
    global _installed
    with _lock:
        _providers.clear()
        _providers.update(providers)
        _installed = True


def reset() -> None:
    """Forget every provider (shutting down those built from the environment) and read the environment again
    on next use."""
    global _installed
    with _lock:
        owned = [] if _installed else list(_providers.values())
        _providers.clear()
        _installed = False
    for provider in owned:
        provider.shutdown()


def force_flush(timeout_ms: int = FLUSH_TIMEOUT_MS) -> None:
    """Export every finished span now (blocking; run it off the event loop when exporters may be slow)."""
    for provider in list(_providers.values()):
        provider.force_flush(timeout_ms)


def shutdown() -> None:
    """Flush and stop every provider (process exit)."""
    reset()


def content_enabled() -> bool:
    """Prompt and output text go into spans only when the user opts in: SPECDEC_TRACE_CONTENT=1."""
    return os.environ.get("SPECDEC_TRACE_CONTENT", "").strip().lower() in ("1", "true", "yes")


# --- propagation -------------------------------------------------------------------------------------------


def outgoing_metadata(span: Span) -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata carrying `span` as the remote parent (W3C traceparent); None for a span that is not
    recorded, so untraced calls carry nothing extra."""
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())


def incoming_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The caller's trace context from gRPC invocation metadata (an empty context when there is none)."""
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    return propagate.extract(carrier, context=Context())


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from HTTP headers (traceparent / tracestate)."""
    return propagate.extract(dict(headers), context=Context())


def start_server_span(tracer_: Tracer, method: str, metadata: Any) -> Span:
    """The server span of one RPC, child of the caller's span in `metadata`; the handler ends it. It is not made
    the current span: streaming handlers are async generators, whose context is their caller's, so their child
    spans name it as parent (`child_span`)."""
    service_, _, rpc_method = method.rpartition("/")
    return tracer_.start_span(
        method.lstrip("/"),
        context=incoming_context(metadata),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service_.lstrip("/"), "rpc.method": rpc_method},
    )


@contextmanager
def child_span(tracer_: Tracer, parent: Span, name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A span for one piece of work inside a stream (a prefill, a verify pass, a proposal); a no-op span when
    the parent is not recorded."""
    if not parent.is_recording():
        yield trace.INVALID_SPAN
        return
    span = tracer_.start_span(name, context=child_of(parent), attributes=attributes)
    try:
        yield span
    except Exception as exc:
        record_error(span, exc)
        raise
    except BaseException:
        span.add_event("cancelled")
        raise
    finally:
        span.end()


def record_error(span: Span, exc: BaseException) -> None:
    """Mark a span failed with the error's gRPC status name when it has one."""
    if not span.is_recording():
        return
    code = getattr(exc, "code", None)
    status = code() if callable(code) else code
    span.set_attribute("error.type", getattr(status, "name", type(exc).__name__))
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))


def child_of(span: Span) -> Context:
    return trace.set_span_in_context(span, Context())


# --- the jsonl exporter --------------------------------------------------------------------------------------


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """One span as the jsonl exporter writes it (and `specdec trace` reads it)."""
    context = span.get_span_context()
    assert context is not None
    start, end = span.start_time or 0, span.end_time or span.start_time or 0
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "service": span.resource.attributes.get(SERVICE_NAME, ""),
        "name": span.name,
        "kind": span.kind.name,
        "start_unix_ns": start,
        "end_unix_ns": end,
        "start": datetime.fromtimestamp(start / 1e9, UTC).isoformat(),
        "duration_ms": (end - start) / 1e6,
        "status": span.status.status_code.name,
        "attributes": _plain(span.attributes),
        "events": [
            {"name": e.name, "time_unix_ns": e.timestamp, "attributes": _plain(e.attributes)} for e in span.events
        ],
    }


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (attributes or {}).items()}


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per span to a file. Every batch opens the file in append mode and writes its
    lines at once, so the three services (one process or three) can share one file."""

    _write_lock = threading.Lock()

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans)
        try:
            with self._write_lock, self.path.open("a", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            log.warning("cannot write spans to %s: %s", self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
