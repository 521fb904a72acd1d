"""Admission control: at most N requests generate at once, at most M wait for a slot, and a request beyond
both is refused at once with RESOURCE_EXHAUSTED (TGI's rule: refuse early rather than queue without bound)."""

from __future__ import annotations

import asyncio
from types import TracebackType

from specdec.errors import ResourceExhausted


class Admission:
    """`async with admission:` around a request's work."""

    def __init__(self, max_active: int, max_queued: int) -> None:
        if max_active < 1 or max_queued < 0:
            raise ValueError("need max_active >= 1 and max_queued >= 0")
        self.max_active = max_active
        self.max_queued = max_queued
        self._slots = asyncio.Semaphore(max_active)
        self.active = 0
        self.queued = 0

    async def __aenter__(self) -> None:
        if self.active >= self.max_active and self.queued >= self.max_queued:
            raise ResourceExhausted(
                f"server busy: {self.active} requests generating (max_concurrent_requests {self.max_active}) "
                f"and {self.queued} queued (max_queued_requests {self.max_queued}); retry later"
            )
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.active += 1

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.active -= 1
        self._slots.release()
