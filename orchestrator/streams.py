"""Client ends of the per-session bidirectional streams to the verifier and the draft service.

One stream per session: its lifetime is the session's, so closing it (or the client vanishing) frees the
KV caches on the services.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from specdec.errors import Unavailable
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc, verifier_pb2, verifier_pb2_grpc
from specdec.wire import is_shared, resolve_shared

Metadata = tuple[tuple[str, str], ...] | None  # extra call metadata: the trace context, when traced


class _SessionStream:
    def __init__(self, call: Any, peer: str) -> None:
        self.call = call
        self.peer = peer

    async def _read(self, expected: str) -> Any:
        response = await self.call.read()
        if response is grpc.aio.EOF:
            raise Unavailable(f"the {self.peer} closed the session stream")
        kind = response.WhichOneof("kind")
        if kind != expected:
            raise Unavailable(f"the {self.peer} answered {kind!r} where {expected!r} was expected")
        return getattr(response, kind)

    async def _write(self, message: Any) -> None:
        """Write, or raise the peer's own status if it already ended the stream."""
        try:
            await self.call.write(message)
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            # The peer ended the stream; depending on timing the write fails in either way, and a failed
            # send reports a client-side INTERNAL. What matters is the status the peer ended it with.
            code = await self.call.code()
            if code == grpc.StatusCode.OK:
                raise Unavailable(f"the {self.peer} ended the session stream") from None
            details = await self.call.details()
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details) from None

    async def close(self) -> None:
        """Half-close and let the service end the stream (it frees the session then)."""
        if self.call.done():
            return
        try:
            await self.call.done_writing()
            while await self.call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            pass

    def cancel(self) -> None:
        self.call.cancel()


@dataclass
class TimedVerdict:
    verdict: verifier_pb2.Verdict
    round_trip_ms: float


class VerifierStream(_SessionStream):
    def __init__(
        self, stub: verifier_pb2_grpc.VerifierStub, timeout: float | None = None, metadata: Metadata = None
    ) -> None:
        """`timeout`: the request's remaining time, so the verifier stops work when the client's deadline passes;
        `metadata`: the trace context (W3C traceparent) when the request is traced."""
        super().__init__(stub.Session(timeout=timeout, metadata=metadata), "verifier")

    async def open(self, request: verifier_pb2.OpenVerifierSession) -> verifier_pb2.VerifierSessionOpened:
        await self._write(verifier_pb2.VerifierRequest(open=request))
        return await self._read("opened")

    async def verify(
        self,
        position: int,
        step: int,
        tokens: list[int],
        probs: list[common_pb2.TokenDistribution],
        parents: Sequence[int] = (),
    ) -> TimedVerdict:
        return await self.read_verdict(position, await self.send_verify(position, step, tokens, probs, parents))

    async def send_verify(
        self, position: int, step: int, tokens: list[int], probs: list[common_pb2.TokenDistribution],
        parents: Sequence[int] = (),
    ) -> float:  # fmt: skip
        """Send a block (a token tree when `parents` is given) without waiting for its verdict (draft-ahead works
        meanwhile); returns the send time."""
        start = time.perf_counter()
        block = verifier_pb2.VerifyBlock(
            position=position, step=step, draft_token_ids=tokens, draft_probs=probs, draft_parents=parents
        )
        await self._write(verifier_pb2.VerifierRequest(verify=block))
        return start

    async def read_verdict(self, position: int, sent_at: float) -> TimedVerdict:
        verdict = await self._read("verdict")
        if verdict.position != position or verdict.committed_length != position + len(verdict.token_ids):
            raise Unavailable(f"the verifier answered position {verdict.position} for a block at {position}")
        return TimedVerdict(verdict, (time.perf_counter() - sent_at) * 1e3)


@dataclass
class DraftBlock:
    tokens: list[int] = field(default_factory=list)
    probs: list[common_pb2.TokenDistribution] = field(default_factory=list)
    draft_ms: float = 0.0
    round_trip_ms: float = 0.0
    match_length: int = 0  # prompt lookup: length of the matched suffix (see DraftChunk.match_length)
    parents: list[int] = field(default_factory=list)  # a token tree (DraftChunk.parents); empty: a chain
    path_logprobs: list[float] = field(default_factory=list)  # a tree's (DraftChunk.path_logprobs); may be empty

    def truncated(self, keep: int) -> DraftBlock:
        """The first `keep` tokens (and their q) of this block (of a tree: still a tree, parents come first)."""
        return DraftBlock(self.tokens[:keep], self.probs[:keep], self.draft_ms, self.round_trip_ms, self.match_length,
                          self.parents[:keep], self.path_logprobs[:keep])  # fmt: skip

    def subtree(self, nodes: Sequence[int]) -> DraftBlock:
        """The tree of these nodes only (indices, each node's parent among them), in their original order with
        the parents renumbered."""
        keep = sorted(nodes)
        index = {node: i for i, node in enumerate(keep)}
        parents = [index[self.parents[i]] if self.parents[i] >= 0 else -1 for i in keep]  # KeyError: not a tree
        shared = resolve_shared(self.probs)  # a kept sibling may have stood for an earlier one's q
        return DraftBlock([self.tokens[i] for i in keep], [shared[i] for i in keep] if shared else [],
                          self.draft_ms, self.round_trip_ms, self.match_length, parents,
                          [self.path_logprobs[i] for i in keep] if self.path_logprobs else [])  # fmt: skip


@dataclass(frozen=True)
class SentPropose:
    """A propose on its way: its first token's position, its step, when it was sent."""

    position: int
    step: int
    at: float


class DraftStream(_SessionStream):
    def __init__(self, stub: draft_pb2_grpc.DraftStub, timeout: float | None = None, metadata: Metadata = None) -> None:
        super().__init__(stub.Session(timeout=timeout, metadata=metadata), "draft service")
        self.stale_blocks = 0  # dropped proposes whose chunks are still to come

    async def open(self, request: draft_pb2.OpenDraftSession) -> draft_pb2.DraftSessionOpened:
        await self._write(draft_pb2.DraftRequest(open=request))
        return await self._read("opened")

    async def propose(
        self, position: int, step: int, max_tokens: int, min_confidence: float = 0.0, tree_nodes: int = 0
    ) -> DraftBlock:
        """Collect the streamed chunks of one block."""
        sent = await self.send_propose(position, step, max_tokens, min_confidence, tree_nodes=tree_nodes)
        return await self.read_block(sent)

    async def send_propose(
        self, position: int, step: int, max_tokens: int, min_confidence: float = 0.0, assumed: Sequence[int] = (),
        tree_nodes: int = 0,
    ) -> SentPropose:  # fmt: skip
        """Ask for a block without waiting for it; `assumed`: draft-ahead's tokens under verification;
        `tree_nodes`: ask for a token tree of up to this many tokens (Propose.tree_nodes)."""
        request = draft_pb2.Propose(
            position=position, step=step, max_tokens=max_tokens, min_confidence=min_confidence,
            assumed_token_ids=assumed, tree_nodes=tree_nodes,
        )  # fmt: skip
        start = time.perf_counter()
        await self._write(draft_pb2.DraftRequest(propose=request))
        return SentPropose(position + len(assumed), step, start)

    async def read_block(self, sent: SentPropose) -> DraftBlock:
        """The block of a propose sent earlier; blocks of earlier proposes still in the stream (draft-ahead
        guesses that turned out wrong) are skipped first: the stream is ordered."""
        while self.stale_blocks:
            while not (await self._read("chunk")).last:
                pass
            self.stale_blocks -= 1
        block = DraftBlock()
        while True:
            chunk = await self._read("chunk")
            if chunk.position != sent.position + len(block.tokens) or chunk.step != sent.step:
                raise Unavailable(f"the draft service sent a chunk for position {chunk.position}, step {chunk.step}")
            if chunk.probs and is_shared(chunk.probs[0]):  # a reference across chunks: out of protocol
                raise Unavailable("the draft service began a chunk's probs with same_as_previous")
            block.tokens.extend(chunk.token_ids)
            block.probs.extend(chunk.probs)
            block.parents.extend(chunk.parents)
            block.path_logprobs.extend(chunk.path_logprobs)
            block.match_length = max(block.match_length, chunk.match_length)
            if chunk.last:
                block.draft_ms = chunk.draft_ms
                break
        if block.path_logprobs and len(block.path_logprobs) != len(block.tokens):
            raise Unavailable(f"the draft service sent {len(block.path_logprobs)} path_logprobs for "
                              f"{len(block.tokens)} tokens")  # fmt: skip
        block.round_trip_ms = (time.perf_counter() - sent.at) * 1e3
        return block

    def drop(self, sent: SentPropose) -> None:
        """Its block will not be used: skip it when the next block is read (no wait now)."""
        self.stale_blocks += 1

    async def commit(self, position: int, tokens: list[int]) -> None:
        """Not answered: a problem surfaces on the next read or as the stream's status."""
        await self.send_commit(draft_pb2.Commit(position=position, token_ids=tokens))

    async def send_commit(self, commit: draft_pb2.Commit) -> None:
        """A whole Commit message (with the target's hidden states, for trained heads); not answered either."""
        await self._write(draft_pb2.DraftRequest(commit=commit))
