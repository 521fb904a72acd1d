"""A minimal OTLP/gRPC trace receiver: the collector's TraceService, writing every span it receives as one JSON
line in the format of our jsonl exporter, so `specdec trace FILE` reads it. For deployments without a collector
(and for the compose test, where no collector image can be pulled): `specdec trace-receiver --out spans.jsonl`.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

log = logging.getLogger(__name__)

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def any_value(value: AnyValue) -> Any:
    """An OTLP attribute value as plain JSON (arrays as lists)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


def span_dict(service: str, span: Span) -> dict[str, Any]:
    """One OTLP span in the jsonl exporter's format (specdec.tracing.span_to_dict)."""
    start, end = span.start_time_unix_nano, span.end_time_unix_nano or span.start_time_unix_nano
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() or None,
        "service": service,
        "name": span.name,
        "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        "start_unix_ns": start,
        "end_unix_ns": end,
        "start": datetime.fromtimestamp(start / 1e9, UTC).isoformat(),
        "duration_ms": (end - start) / 1e6,
        "status": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        "attributes": attributes(span.attributes),
        "events": [
            {"name": e.name, "time_unix_ns": e.time_unix_nano, "attributes": attributes(e.attributes)}
            for e in span.events
        ],
    }


def request_spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    for resource_spans in request.resource_spans:
        service = str(attributes(resource_spans.resource.attributes).get("service.name", ""))
        spans.extend(span_dict(service, s) for scope in resource_spans.scope_spans for s in scope.spans)
    return spans


class SpanFileReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Appends the spans of every export request to `path` as JSON lines (one write per request)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.spans_received = 0
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans = request_spans(request)
        text = "".join(json.dumps(s) + "\n" for s in spans)
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(text)
            self.spans_received += len(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def serve(out: str | Path, port: int = 4317, host: str = "0.0.0.0") -> tuple[grpc.Server, int, SpanFileReceiver]:
    """Start the receiver (with gRPC health) and return (server, bound port, receiver); port 0 binds a free one."""
    from concurrent.futures import ThreadPoolExecutor

    receiver = SpanFileReceiver(out)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    for name in ("", TRACE_SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("OTLP/gRPC trace receiver on %s:%d, writing %s", host, bound, receiver.path)
    return server, bound, receiver


def run(out: str | Path, port: int = 4317, host: str = "0.0.0.0", grace_s: float = 2.0) -> None:
    """Serve until SIGTERM or SIGINT, then finish the exports in flight (`specdec trace-receiver`)."""
    import signal

    server, bound, _ = serve(out, port, host)
    print(f"OTLP/gRPC trace receiver listening on {host}:{bound}, writing {out}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace_s).wait()
