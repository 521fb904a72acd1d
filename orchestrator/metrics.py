"""The orchestrator's Prometheus metrics: vLLM-style speculative-decoding counters under our prefix, request
counts and latency histograms, labelled by draft and acceptance policy. Recorded when a request ends, from
the same LoopStats that fill the response's GenerationStats, so the two always agree."""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from specdec.errors import SpecdecError
from specdec.metrics import LATENCY_BUCKETS
from specdec.orchestrator.loop import SampleResult

LABELS = ("draft", "policy")
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class OrchestratorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.num_drafts = Counter(
            "specdec:spec_decode_num_drafts", "Steps that verified at least one draft token.", LABELS, registry=r
        )
        self.num_draft_tokens = Counter(
            "specdec:spec_decode_num_draft_tokens", "Draft tokens sent for verification.", LABELS, registry=r
        )
        self.num_accepted_tokens = Counter(
            "specdec:spec_decode_num_accepted_tokens", "Draft tokens accepted.", LABELS, registry=r
        )
        self.accepted_per_pos = Counter(
            "specdec:spec_decode_num_accepted_tokens_per_pos",
            "Draft tokens accepted at each position of a block (0 = the first draft token).",
            (*LABELS, "position"),
            registry=r,
        )
        self.requests = Counter("specdec:requests", "Requests completed.", LABELS, registry=r)
        self.request_errors = Counter(
            "specdec:request_errors", "Requests that failed, by status.", ["code"], registry=r
        )
        self.generation_tokens = Counter("specdec:generation_tokens", "Tokens generated.", LABELS, registry=r)
        self.ttft = Histogram(
            "specdec:time_to_first_token_seconds",
            "From the request's arrival to its first committed token.",
            LABELS,
            registry=r,
            buckets=TTFT_BUCKETS,
        )
        self.itl = Histogram(
            "specdec:inter_token_latency_seconds",
            "Between successive token deliveries of one completion (a speculative step delivers several tokens at "
            "once, as in vLLM's histogram).",
            LABELS,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.live_requests = Gauge("specdec:live_requests", "Requests in progress.", registry=r)
        self.draft_failovers = Counter(
            "specdec:draft_failovers",
            "Completions whose draft service failed (died, timed out, was full) and that finished target-only.",
            LABELS,
            registry=r,
        )

    def record(self, samples: list[SampleResult], draft: str, policy: str, started_at: float) -> None:
        """One finished request: every completion's steps and deliveries."""
        labels = (draft, policy)
        self.requests.labels(*labels).inc()
        for sample in samples:
            s = sample.stats
            self.num_drafts.labels(*labels).inc(sum(1 for k in s.k_history if k > 0))
            self.num_draft_tokens.labels(*labels).inc(s.draft_tokens)
            self.num_accepted_tokens.labels(*labels).inc(s.accepted_tokens)
            for position, accepted in enumerate(s.accepted_per_position):
                self.accepted_per_pos.labels(*labels, str(position)).inc(accepted)
            self.generation_tokens.labels(*labels).inc(len(sample.token_ids))
            if s.draft_failure:
                self.draft_failovers.labels(*labels).inc()
            if s.deliveries:
                self.ttft.labels(*labels).observe(s.deliveries[0] - started_at)
            for before, after in zip(s.deliveries, s.deliveries[1:], strict=False):
                self.itl.labels(*labels).observe(after - before)

    def record_error(self, exc: BaseException) -> None:
        self.request_errors.labels(status_of(exc).name).inc()


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status a failed request ends with (as `service.abort_with` maps it)."""
    if isinstance(exc, SpecdecError):
        return exc.code
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL
