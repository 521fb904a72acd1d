"""The draft side of one session, allowed to fail: a draft service that dies, stops answering or is full
costs speed, never the request. On such a failure the session's draft stream is cancelled and the loop goes on
target-only (output unchanged: the verifier alone decides every token); the failure is reported in the stats.
A later request opens a new stream, so service resumes as soon as the draft service is back.

A client mistake the draft service reports (INVALID_ARGUMENT, FAILED_PRECONDITION, ...) is not a failure of the
service and still fails the request. Nothing is retried: a propose is simply not made again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from specdec.errors import Unavailable
from specdec.orchestrator.streams import DraftBlock, DraftStream, SentPropose
from specdec.v1 import draft_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

# Statuses that say "the draft service cannot serve this now", as opposed to "this request is wrong".
FAILOVER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,  # died, restarting, unreachable
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,  # its side of the stream went away
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # full: degrade to target-only rather than refuse the request
        grpc.StatusCode.INTERNAL,  # a draft bug must not cost the user the request; it is logged and reported
        grpc.StatusCode.UNKNOWN,
    }
)


class GuardedDraft:
    """A session's draft stream (None: target-only from the start) that turns service failures into failover."""

    def __init__(self, stream: DraftStream | None, open_timeout_s: float, propose_timeout_s: float) -> None:
        self.stream = stream
        self.open_timeout_s = open_timeout_s  # the first open of a model draft may load its weights
        self.propose_timeout_s = propose_timeout_s
        self.failure = ""  # "STATUS: details" once the draft failed over

    async def open(self, request: draft_pb2.OpenDraftSession) -> None:
        if self.stream is not None:
            await self._guard(self.stream.open(request), self.open_timeout_s)

    async def propose(
        self, commit: draft_pb2.Commit | None, position: int, step: int, k: int, min_confidence: float,
        tree_nodes: int = 0,
    ) -> DraftBlock | None:  # fmt: skip
        """Send the pending commit and get a block, or None if the draft failed over (now or before)."""
        if self.stream is None:
            return None
        return await self._guard(self._propose(self.stream, commit, position, step, k, min_confidence, tree_nodes))

    async def propose_ahead(
        self, commit: draft_pb2.Commit | None, position: int, step: int, k: int, min_confidence: float,
        assumed: list[int],
    ) -> SentPropose | None:  # fmt: skip
        """Draft-ahead: send the pending commit and ask for the block after `assumed` (under verification now)
        without waiting; the answer is read by `collect` or skipped after `drop`."""
        if self.stream is None:
            return None
        return await self._guard(self._send_ahead(self.stream, commit, position, step, k, min_confidence, assumed))

    @staticmethod
    async def _send_ahead(
        stream: DraftStream, commit: draft_pb2.Commit | None, position: int, step: int, k: int, confidence: float,
        assumed: list[int],
    ) -> SentPropose:  # fmt: skip
        if commit is not None:
            await stream.send_commit(commit)
        return await stream.send_propose(position, step, k, confidence, assumed)

    async def collect(self, sent: SentPropose) -> DraftBlock | None:
        """The block of a draft-ahead propose, or None if the draft failed over meanwhile."""
        if self.stream is None:
            return None
        return await self._guard(self.stream.read_block(sent))

    def drop(self, sent: SentPropose) -> None:
        if self.stream is not None:
            self.stream.drop(sent)

    @staticmethod
    async def _propose(
        stream: DraftStream, commit: draft_pb2.Commit | None, position: int, step: int, k: int, confidence: float,
        tree_nodes: int = 0,
    ) -> DraftBlock:  # fmt: skip
        if commit is not None:
            await stream.send_commit(commit)  # the draft rolls back to the same prefix
        return await stream.propose(position, step, k, confidence, tree_nodes)

    async def _guard(self, call: Awaitable[T], timeout_s: float | None = None) -> T | None:
        timeout_s = timeout_s or self.propose_timeout_s
        try:
            async with asyncio.timeout(timeout_s):  # no extra task per step, unlike wait_for
                return await call
        except TimeoutError:
            self._fail(f"DEADLINE_EXCEEDED: the draft service did not answer within {timeout_s:g} s")
        except Unavailable as exc:  # the draft ended the stream or answered out of protocol
            self._fail(f"UNAVAILABLE: {exc}")
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in FAILOVER_CODES:
                raise
            self._fail(f"{exc.code().name}: {exc.details()}")
        return None

    def _fail(self, reason: str) -> None:
        log.warning("draft failed over to target-only decoding: %s", reason)
        self.failure = reason
        if self.stream is not None:
            self.stream.cancel()  # frees the session on the draft service if it is still there
            self.stream = None

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()

    def cancel(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
