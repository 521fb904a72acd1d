"""The load mode's scheduling, bounds and accounting, with fake `send`s (no services)."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from specdec.bench.load import LoadReport, Outcome, TimedOutcome, build_report, run_load, status_of


class _StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


async def test_concurrency_caps_requests_in_flight() -> None:
    in_flight = peak = 0

    async def send(i: int) -> Outcome:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return Outcome(tokens=4, seconds=0.05)

    report = await run_load(send, concurrency=3, rate=None, max_requests=12, duration_s=None)
    assert peak == 3
    assert report.requests == report.succeeded == 12
    assert report.concurrency == 3 and report.rate is None


async def test_rate_paces_starts() -> None:
    async def send(i: int) -> Outcome:
        return Outcome(tokens=1, seconds=0.0)

    report = await run_load(send, concurrency=4, rate=20.0, max_requests=10, duration_s=None)
    starts = sorted(r.start_s for r in report.outcomes)
    assert len(starts) == 10
    # Ten starts at 20/s are nine gaps of 50 ms; no burst lets them through together.
    assert starts[-1] - starts[0] >= 0.35
    assert starts[-1] - starts[0] < 3.0


async def test_max_requests_gives_exactly_that_many() -> None:
    seen: list[int] = []

    async def send(i: int) -> Outcome:
        seen.append(i)
        await asyncio.sleep(0)
        return Outcome(tokens=2, seconds=0.0)

    report = await run_load(send, concurrency=5, rate=None, max_requests=17, duration_s=10.0)
    assert report.requests == 17
    assert sorted(seen) == list(range(17))
    assert [r.index for r in report.outcomes] == list(range(17))


async def test_duration_stops_issuing() -> None:
    async def send(i: int) -> Outcome:
        await asyncio.sleep(0.001)
        return Outcome(tokens=1, seconds=0.001)

    began = time.monotonic()
    report = await run_load(send, concurrency=2, rate=None, max_requests=None, duration_s=0.3)
    assert time.monotonic() - began < 3.0
    assert report.requests > 0
    assert all(r.start_s < 0.3 for r in report.outcomes)


async def test_slow_rate_does_not_outlast_duration() -> None:
    async def send(i: int) -> Outcome:
        return Outcome(tokens=1, seconds=0.0)

    began = time.monotonic()
    report = await run_load(send, concurrency=2, rate=0.5, max_requests=None, duration_s=0.2)
    assert time.monotonic() - began < 1.5  # the next slot would be 2 s away; waiting for it stops at the deadline
    assert report.requests == 1


async def test_errors_counted_by_status() -> None:
    async def send(i: int) -> Outcome:
        if i % 3 == 2:
            raise _StatusError(503)
        if i % 3 == 1:
            return Outcome(tokens=0, seconds=0.01, error="RESOURCE_EXHAUSTED")
        return Outcome(tokens=5, seconds=0.02, ttft_s=0.005)

    report = await run_load(send, concurrency=2, rate=None, max_requests=9, duration_s=None)
    assert report.requests == 9
    assert report.succeeded == 3
    assert report.errors_by_status == {"503": 3, "RESOURCE_EXHAUSTED": 3}
    assert report.latency is not None and report.latency.n == 3  # over successes only
    assert report.ttft is not None and report.ttft.p50 == pytest.approx(0.005)


async def test_grpc_error_counted_by_code_name() -> None:
    async def send(i: int) -> Outcome:
        if i == 0:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down"
            )
        if i == 1:
            raise RuntimeError("boom")
        return Outcome(tokens=1, seconds=0.0)

    report = await run_load(send, concurrency=1, rate=None, max_requests=3, duration_s=None)
    assert report.errors_by_status == {"UNAVAILABLE": 1, "RuntimeError": 1}
    assert report.succeeded == 1


def test_status_names() -> None:
    assert status_of(_StatusError(429)) == "429"
    assert status_of(ValueError()) == "ValueError"

    class CodedError(Exception):
        status = grpc.StatusCode.RESOURCE_EXHAUSTED

    assert status_of(CodedError()) == "RESOURCE_EXHAUSTED"


def test_aggregate_arithmetic_on_controlled_data() -> None:
    records = [
        TimedOutcome(0, 0.0, Outcome(tokens=10, seconds=1.0, ttft_s=0.1)),
        TimedOutcome(1, 0.5, Outcome(tokens=30, seconds=3.0, ttft_s=None)),
        TimedOutcome(2, 1.0, Outcome(tokens=99, seconds=0.2, error="UNAVAILABLE")),
        TimedOutcome(3, 1.5, Outcome(tokens=20, seconds=2.0, ttft_s=0.3)),
    ]
    report = build_report(records, wall_s=4.0, concurrency=2, rate=1.0)
    assert (report.requests, report.succeeded) == (4, 3)
    assert report.requests_per_second == pytest.approx(0.75)  # 3 successes / 4 s
    assert report.output_tokens_per_second == pytest.approx(15.0)  # (10 + 30 + 20) / 4 s; the failure's don't count
    assert report.latency is not None
    assert (report.latency.mean, report.latency.p50, report.latency.max) == pytest.approx((2.0, 2.0, 3.0))
    assert report.ttft is not None and report.ttft.n == 2 and report.ttft.mean == pytest.approx(0.2)
    assert report.errors_by_status == {"UNAVAILABLE": 1}


def test_report_serialises_and_renders() -> None:
    records = [TimedOutcome(0, 0.0, Outcome(tokens=8, seconds=0.5, ttft_s=0.05))]
    report = build_report(records, wall_s=1.0, concurrency=1, rate=None)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["output_tokens_per_second"] == 8.0
    assert data["outcomes"][0]["outcome"]["ttft_s"] == 0.05
    assert data["latency"]["p99"] == 0.5
    table = report.table()
    assert "| throughput | 1.00 req/s, 8.0 tok/s |" in table
    assert "| errors | none |" in table

    empty = build_report([TimedOutcome(0, 0.0, Outcome(0, 0.1, error="503"))], wall_s=0.1, concurrency=1, rate=2.0)
    assert isinstance(empty, LoadReport) and empty.latency is None
    assert "n/a" in empty.table() and "503: 1" in empty.table()
    json.dumps(empty.to_dict())


async def test_validation() -> None:
    async def send(i: int) -> Outcome:
        return Outcome(tokens=0, seconds=0.0)

    with pytest.raises(ValueError, match="bound"):
        await run_load(send, concurrency=1, rate=None, max_requests=None, duration_s=None)
    with pytest.raises(ValueError, match="concurrency"):
        await run_load(send, concurrency=0, rate=None, max_requests=1, duration_s=None)
    with pytest.raises(ValueError, match="rate"):
        await run_load(send, concurrency=1, rate=0.0, max_requests=1, duration_s=None)
    with pytest.raises(ValueError, match="rate"):
        await run_load(send, concurrency=1, rate=-5.0, max_requests=1, duration_s=None)
