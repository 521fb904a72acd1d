"""Idle sessions expire: a session stream that sends nothing for `ttl_s` seconds (a client that hung without
closing it) is ended with DEADLINE_EXCEEDED, which frees its KV cache. Time spent computing does not count."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from specdec.errors import DeadlineExceeded

T = TypeVar("T")


async def expiring(requests: AsyncIterator[T], ttl_s: float | None, service: str) -> AsyncIterator[T]:
    """`requests`, ending with DeadlineExceeded when the next one takes longer than `ttl_s` (None: never)."""
    iterator = aiter(requests)
    while True:
        try:
            async with asyncio.timeout(ttl_s):  # a timer on this task, not a new task per message (wait_for)
                request = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(
                f"the {service} session was idle for more than {ttl_s:g} s and expired (--session-ttl)"
            ) from None
        yield request  # outside the timer: the time spent serving the request is not idle time
