"""Load mode of `specdec bench --concurrency N --rate R`: N workers issue requests through a caller-supplied
`send(i)`, an optional throttle paces request starts across all of them, and the run stops issuing after
`max_requests` starts or `duration_s` seconds, letting requests in flight finish. The report gives throughput,
latency and time-to-first-token percentiles, and errors counted by status. Pure scheduling: no services here."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from asyncio_throttle import Throttler

from specdec.bench import stats


@dataclass
class Outcome:
    """One request's result as `send` saw it."""

    tokens: int
    seconds: float
    ttft_s: float | None = None
    error: str | None = None  # None: success; otherwise a status name ("RESOURCE_EXHAUSTED", "503", ...)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class TimedOutcome:
    """An outcome with the request's index and its start, in seconds after the run began."""

    index: int
    start_s: float
    outcome: Outcome


@dataclass
class LoadReport:
    requests: int  # started (and, since in-flight requests are awaited, completed)
    succeeded: int
    errors_by_status: dict[str, int]
    wall_s: float  # from the run's start to the last completion
    requests_per_second: float  # successful completions per wall second
    output_tokens_per_second: float  # tokens of successful requests, summed, per wall second
    latency: stats.Summary | None  # seconds over successes; None when nothing succeeded
    ttft: stats.Summary | None  # seconds over successes that reported a first-token time
    concurrency: int
    rate: float | None
    outcomes: list[TimedOutcome] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # every field is a number, a string, None, or a dataclass of those

    def table(self) -> str:
        rate = "unlimited" if self.rate is None else f"{self.rate:g} req/s"
        errors = ", ".join(f"{status}: {n}" for status, n in sorted(self.errors_by_status.items())) or "none"
        lines = [
            "| metric | value |",
            "|---|---|",
            f"| requests | {self.requests} ({self.succeeded} ok) |",
            f"| concurrency / rate | {self.concurrency} / {rate} |",
            f"| throughput | {self.requests_per_second:.2f} req/s, {self.output_tokens_per_second:.1f} tok/s |",
            f"| latency p50 / p95 / p99 / max | {_fmt_ms(self.latency)} |",
            f"| ttft p50 / p95 / p99 / max | {_fmt_ms(self.ttft)} |",
            f"| errors | {errors} |",
        ]
        return "\n".join(lines)


def _fmt_ms(s: stats.Summary | None) -> str:
    if s is None:
        return "n/a"
    return " / ".join(f"{v * 1000:.1f}" for v in (s.p50, s.p95, s.p99, s.max)) + " ms"


def status_of(exc: BaseException) -> str:
    """A status name for a failed request: the gRPC code's name, an HTTP-style `.status`, else the class name."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    status = getattr(exc, "status", None)
    if isinstance(status, grpc.StatusCode):
        return status.name
    if status is not None:
        return str(status)
    return type(exc).__name__


def _throttler(rate: float) -> Throttler:
    # asyncio-throttle admits `rate_limit` starts per sliding `period`, so Throttler(R, 1.0) would let a burst of
    # R requests through at once. Windows of ~50 ms (one request when R < 20/s, or a fractional R) pace starts
    # evenly, and a poll interval well inside the window keeps its overshoot from lowering the achieved rate.
    per_window = max(1, math.floor(rate / 20))
    period = per_window / rate
    return Throttler(rate_limit=per_window, period=period, retry_interval=min(0.01, period / 10))


async def run_load(
    send: Callable[[int], Awaitable[Outcome]],
    *,
    concurrency: int,
    rate: float | None,
    max_requests: int | None,
    duration_s: float | None,
) -> LoadReport:
    """Run `send(0)`, `send(1)`, ... from `concurrency` workers, at most `rate` starts a second, until
    `max_requests` were started or `duration_s` elapsed (whichever first); a failed request never stops the run."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if max_requests is None and duration_s is None:
        raise ValueError("need a bound: max_requests or duration_s")
    if max_requests is not None and max_requests < 0:
        raise ValueError(f"max_requests must not be negative, got {max_requests}")
    if duration_s is not None and duration_s < 0:
        raise ValueError(f"duration_s must not be negative, got {duration_s}")

    loop = asyncio.get_running_loop()
    throttler = _throttler(rate) if rate is not None else None
    t0 = loop.time()
    deadline = t0 + duration_s if duration_s is not None else None
    issued = 0
    records: list[TimedOutcome] = []

    def may_issue() -> bool:
        if max_requests is not None and issued >= max_requests:
            return False
        return deadline is None or loop.time() < deadline

    async def call(i: int) -> Outcome:
        start = loop.time()
        try:
            return await send(i)
        except Exception as exc:  # one failed request is data, not the end of the load test
            return Outcome(tokens=0, seconds=loop.time() - start, error=status_of(exc))

    async def worker() -> None:
        nonlocal issued
        while may_issue():
            if throttler is not None:
                try:
                    # A slow rate must not hold a worker past the deadline waiting for its turn.
                    async with asyncio.timeout_at(deadline):
                        await throttler.acquire()
                except TimeoutError:
                    return
            # Checked again after the wait, with no await before claiming the index, so the count is exact.
            if not may_issue():
                return
            i = issued
            issued += 1
            start_s = loop.time() - t0
            outcome = await call(i)
            records.append(TimedOutcome(index=i, start_s=start_s, outcome=outcome))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall_s = loop.time() - t0
    return build_report(records, wall_s=wall_s, concurrency=concurrency, rate=rate)


def build_report(records: list[TimedOutcome], *, wall_s: float, concurrency: int, rate: float | None) -> LoadReport:
    """Aggregate timed outcomes into a report (separate from `run_load` so the arithmetic is testable alone)."""
    records = sorted(records, key=lambda r: r.index)
    ok = [r.outcome for r in records if r.outcome.ok]
    errors = Counter(r.outcome.error for r in records if r.outcome.error is not None)
    latencies = [o.seconds for o in ok]
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    per_second = 1.0 / wall_s if wall_s > 0 else 0.0
    return LoadReport(
        requests=len(records),
        succeeded=len(ok),
        errors_by_status=dict(errors),
        wall_s=wall_s,
        requests_per_second=len(ok) * per_second,
        output_tokens_per_second=sum(o.tokens for o in ok) * per_second,
        latency=stats.summarise(latencies) if latencies else None,
        ttft=stats.summarise(ttfts) if ttfts else None,
        concurrency=concurrency,
        rate=rate,
        outcomes=records,
    )
