"""Verifier batching: verify requests of concurrent sessions that are waiting at the same time run as one batched
forward on the model worker (`VerifierCore.verify_batch`).

Batches form by themselves: while the model runs one batch, the requests that arrive queue up and become the
next batch. `window_s` additionally holds a batch back for up to that long to let stragglers join, but only
while other live sessions could still send (a lone session never waits). `max_batch` caps a batch's size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from specdec.limits import DEFAULT_BATCH_WINDOW_S, DEFAULT_MAX_BATCH
from specdec.service import ModelWorker


@dataclass
class VerifyRequest:
    session: Any  # a VerifierSession
    position: int
    draft_tokens: list[int]
    draft_probs: torch.Tensor | None
    future: asyncio.Future[Any]
    parents: list[int] | None = None  # a token tree (VerifyBlock.draft_parents); None: a chain


class VerifyBatcher:
    """Queues verify requests and runs them in batches on `worker` through `run_batch(requests)`, which returns
    one outcome or exception per request, in order."""

    def __init__(
        self,
        worker: ModelWorker,
        run_batch: Callable[[Sequence[VerifyRequest]], list[Any]],
        live_sessions: Callable[[], int],
        window_s: float = DEFAULT_BATCH_WINDOW_S,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError(f"batch window must be >= 0 and max batch >= 1, got {window_s} and {max_batch}")
        self.worker = worker
        self.run_batch = run_batch
        self.live_sessions = live_sessions
        self.window_s = window_s
        self.max_batch = max_batch
        self._queue: list[VerifyRequest] = []
        self._drainer: asyncio.Task[None] | None = None
        self.batches = 0  # batches run, and requests in them: their ratio is the mean batch size
        self.batched_requests = 0
        self.largest_batch = 0

    async def verify(
        self, session: Any, position: int, tokens: list[int], probs: torch.Tensor | None,
        parents: list[int] | None = None,
    ) -> Any:  # fmt: skip
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(VerifyRequest(session, position, tokens, probs, future, parents))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        # A caller cancelled while its request waits here cancels the future: the drainer skips it, so it never
        # runs after the session's close (which is queued on the same worker). Once in a running batch, the close
        # is queued behind that batch.
        return await future

    async def _drain(self) -> None:
        while self._queue:
            if self.window_s and len(self._queue) < min(self.max_batch, self.live_sessions()):
                await asyncio.sleep(self.window_s)  # others are mid-step: let them join this batch
            self._queue = [r for r in self._queue if not r.future.done()]  # callers cancelled while waiting
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            if not batch:
                continue
            self.batches += 1
            self.batched_requests += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                results = await self.worker.run(self.run_batch, batch)
            except BaseException as exc:  # the batch itself failed (a bug): every caller learns why
                results = [exc] * len(batch)
                if not isinstance(exc, Exception):
                    self._deliver(batch, results)
                    raise
            self._deliver(batch, results)

    @staticmethod
    def _deliver(batch: Sequence[VerifyRequest], results: Sequence[Any]) -> None:
        """Deliver each result (an outcome, or the exception that request raised) to its caller."""
        for request, result in zip(batch, results, strict=True):
            if request.future.done():  # the caller was cancelled
                continue
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

    @property
    def mean_batch_size(self) -> float:
        return self.batched_requests / self.batches if self.batches else 0.0
