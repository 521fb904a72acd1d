"""Prometheus metrics: each service keeps its own registry (three services may share one process) and
serves it on its own `/metrics` port with prometheus-client's HTTP server."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from specdec.usage import UsageTracker

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class MetricsEndpoint:
    """A running `/metrics` HTTP server."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsEndpoint:
    """Serve `registry` over HTTP (any path, `/metrics` by convention); `port=0` binds a free port."""
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(httpd, thread)


class ModelServiceMetrics:
    """What the draft and verifier services expose: forward latency, live sessions and KV-cache bytes.
    The two gauges are read at scrape time from the service's usage tracker, whose KV-cache peak every
    observed forward updates."""

    def __init__(self, usage: UsageTracker) -> None:
        service = usage.service
        self.usage = usage
        self.registry = CollectorRegistry()
        self.forward_latency = Histogram(
            "specdec:forward_latency_seconds",
            "Model forward time per call: the verifier's prefill and verify passes, the draft's proposal blocks.",
            ["service", "kind"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.service = service
        live = Gauge("specdec:live_sessions", "Sessions open now.", ["service"], registry=self.registry)
        live.labels(service).set_function(usage.live_sessions)
        kv = Gauge("specdec:kv_cache_bytes", "Bytes held by the KV caches of open sessions.", ["service"],
                   registry=self.registry)  # fmt: skip
        kv.labels(service).set_function(usage.kv_cache_bytes)

    def observe_forward(self, kind: str, milliseconds: float) -> None:
        self.forward_latency.labels(self.service, kind).observe(milliseconds / 1e3)
        self.usage.observe()
