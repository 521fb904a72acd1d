"""The draft service's gRPC server: a thin servicer (protobuf -> domain -> core -> protobuf)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator

import grpc

from specdec import service, tracing
from specdec.draft_service.core import DraftCore, DraftOptions, DraftSession
from specdec.draft_service.drafts import Proposal
from specdec.draftspec import HEAD_KINDS, parse_draft
from specdec.errors import FailedPrecondition, InvalidArgument, SpecdecError
from specdec.idle import expiring
from specdec.limits import DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_TTL_S, ServiceLimits, SessionCapacity
from specdec.metrics import ModelServiceMetrics
from specdec.usage import UsageTracker
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc
from specdec.wire import encode_distributions, hidden_from_pb, sampling_from_pb

log = logging.getLogger(__name__)
SERVICE_NAME = draft_pb2.DESCRIPTOR.services_by_name["Draft"].full_name
SESSION_METHOD = f"/{SERVICE_NAME}/Session"


def _next_batch(proposals: Iterator[Proposal], incremental: bool) -> list[Proposal]:
    """The next proposal of an incremental drafter, or all of them; [] when the block is complete."""
    if not incremental:
        return list(proposals)
    proposal = next(proposals, None)
    return [] if proposal is None else [proposal]


class DraftServicer(draft_pb2_grpc.DraftServicer):
    def __init__(
        self,
        core: DraftCore,
        session_ttl_s: float | None = DEFAULT_SESSION_TTL_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self.core = core
        self.session_ttl_s = session_ttl_s
        self.capacity = SessionCapacity("draft service", max_sessions, lambda: core.live_sessions)
        self.worker = service.ModelWorker("draft-model")
        self.tracer = tracing.tracer(tracing.DRAFT)
        self.metrics = ModelServiceMetrics(UsageTracker("draft", core.kv_cache_bytes, lambda: core.live_sessions))

    async def aclose(self) -> None:
        self.worker.shutdown()

    async def GetUsage(
        self, request: common_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ServiceUsage:
        return self.metrics.usage.snapshot(request.reset_peaks)

    async def Session(
        self, request_iterator: AsyncIterator[draft_pb2.DraftRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[draft_pb2.DraftResponse]:
        session: DraftSession | None = None
        opened = service.StreamSessions(self.worker, self.core.open_session, self.core.close_session)
        failed_commit: SpecdecError | None = None
        encoding = 0
        span = tracing.start_server_span(self.tracer, SESSION_METHOD, context.invocation_metadata())
        try:
            async for request in expiring(request_iterator, self.session_ttl_s, "draft"):
                kind = request.WhichOneof("kind")
                if kind is None:
                    raise InvalidArgument("a DraftRequest must set `open`, `propose` or `commit`")
                if kind == "open":
                    if session is not None:
                        raise FailedPrecondition("the session is already open")
                    with self.capacity.reserve():  # refused at once when full, before queueing for the model
                        session = await opened.open(_options_from_pb(request.open))
                    encoding = request.open.probs_encoding
                    if span.is_recording():
                        span.set_attributes(
                            {"specdec.draft": session.spec.name, "specdec.draft_method": session.spec.kind}
                        )
                    yield draft_pb2.DraftResponse(
                        opened=draft_pb2.DraftSessionOpened(
                            draft=session.spec.name, sends_probs=session.drafter.sends_probs
                        )
                    )
                elif session is None:
                    raise FailedPrecondition("the first message of a session must be `open`")
                elif failed_commit is not None:
                    raise failed_commit
                elif kind == "propose":
                    propose = request.propose
                    with tracing.child_span(self.tracer, span, "propose", _propose_attributes(session, propose)) as s:
                        proposed, draft_ms = 0, 0.0
                        async for chunk in self._propose(session, propose, encoding):
                            proposed, draft_ms = proposed + len(chunk.token_ids), chunk.draft_ms
                            yield draft_pb2.DraftResponse(chunk=chunk)
                        if s.is_recording():
                            s.set_attributes({"specdec.proposed": proposed, "specdec.draft_ms": draft_ms})
                elif kind == "commit":
                    if span.is_recording():
                        event = {
                            "specdec.position": request.commit.position,
                            "specdec.tokens": len(request.commit.token_ids),
                        }
                        span.add_event("commit", event)
                    try:
                        commit = request.commit
                        hidden = hidden_from_pb(commit.hidden_states) if commit.HasField("hidden_states") else None
                        session.commit(commit.position, list(commit.token_ids), hidden)
                    except SpecdecError as exc:
                        # Commits are not answered: keep the stream open and fail the next propose, so the
                        # client reads this status instead of a send failure on its next write.
                        failed_commit = failed_commit or exc
            await opened.aclose()  # the client half-closed: its session is freed before the stream ends
        except Exception as exc:
            tracing.record_error(span, exc)
            await service.abort_with(context, exc)
        except BaseException:  # cancelled: the client went away or its deadline passed
            span.add_event("cancelled")
            raise
        finally:
            span.end()
            opened.close_all()

    async def _propose(
        self, session: DraftSession, request: draft_pb2.Propose, encoding: int
    ) -> AsyncIterator[draft_pb2.DraftChunk]:
        """Stream chunks as the drafter produces tokens (one per token for model drafts, the whole block at
        once for prompt lookup); the final chunk has `last` set."""
        start = time.perf_counter()
        drafter = session.drafter
        assumed = list(request.assumed_token_ids)  # draft-ahead: being verified, assumed accepted
        if request.tree_nodes and not assumed:
            tree = await self.worker.run(session.propose_tree, request.position, request.max_tokens,
                                         request.tree_nodes, request.min_confidence)  # fmt: skip
            if tree is not None:
                draft_ms = (time.perf_counter() - start) * 1e3
                self.metrics.observe_forward(session.spec.kind, draft_ms)
                # a sampled tree carries each node's q, and no path probabilities: trimming it by them would bias it
                chunk = draft_pb2.DraftChunk(step=request.step, position=request.position, token_ids=tree.tokens,
                                             parents=tree.parents, path_logprobs=[] if tree.probs else tree.scores,
                                             last=True, draft_ms=draft_ms)  # fmt: skip
                chunk.probs.extend(encode_distributions(tree.probs, encoding))  # siblings' q once
                yield chunk
                return
        proposals = session.propose(request.position, request.max_tokens, request.min_confidence, assumed)
        position = request.position + len(assumed)
        while True:
            batch = await self.worker.run(_next_batch, proposals, drafter.incremental)
            chunk = draft_pb2.DraftChunk(
                step=request.step,
                position=position,
                token_ids=[token for token, _ in batch],
                match_length=drafter.match_length,
                last=not batch or not drafter.incremental,
            )
            chunk.probs.extend(encode_distributions([q for _, q in batch if q is not None], encoding))
            chunk.draft_ms = (time.perf_counter() - start) * 1e3
            yield chunk
            if chunk.last:
                self.metrics.observe_forward(session.spec.kind, chunk.draft_ms)
                return
            position += len(batch)


def _propose_attributes(session: DraftSession, propose: draft_pb2.Propose) -> dict[str, int | str]:
    return {
        "specdec.step": propose.step,
        "specdec.position": propose.position,
        "specdec.k": propose.max_tokens,
        "specdec.draft_method": session.spec.kind,
        "specdec.assumed": len(propose.assumed_token_ids),
    }


def _options_from_pb(msg: draft_pb2.OpenDraftSession) -> DraftOptions:
    if msg.probs_encoding not in common_pb2.ProbsEncoding.values():
        names = ", ".join(common_pb2.ProbsEncoding.keys())
        raise InvalidArgument(f"probs_encoding must be one of {names}; got {msg.probs_encoding}")
    return DraftOptions(
        prompt_token_ids=list(msg.prompt_token_ids),
        draft=msg.draft,
        sampling=sampling_from_pb(msg.sampling),
        target_name=msg.target_name,
        target_fingerprint=msg.target_vocab_fingerprint,
        target_vocab_size=msg.target_vocab_size,
        target_weights_fingerprint=msg.target_weights_fingerprint,
        target_hidden_size=msg.target_hidden_size,
    )


async def serve(
    core: DraftCore,
    port: int = 0,
    host: str = "127.0.0.1",
    preload: list[str] | None = None,
    metrics_port: int | None = None,
    security: service.Security | None = None,
    limits: ServiceLimits | None = None,
) -> service.RunningServer:
    """Start a draft service; `preload` model ids/paths (or eagle[:DIR] / medusa[:DIR] heads) are loaded and warmed
    up before it reports SERVING; with
    `metrics_port`, Prometheus metrics too (see `.metrics_port`); `security`: token and TLS (default open);
    `limits`: session cap and idle TTL."""
    limits = limits or ServiceLimits()
    servicer = DraftServicer(core, limits.session_ttl_s, limits.max_sessions)
    running = await service.start(
        [SERVICE_NAME],
        lambda server: draft_pb2_grpc.add_DraftServicer_to_server(servicer, server),
        servicer,
        port,
        host,
        metrics_port,
        security,
        serving=False,  # health says NOT_SERVING while the preloaded models load and warm up
    )
    try:
        for name in preload or []:
            if name.partition(":")[0] in HEAD_KINDS:  # a trained head (and, for eagle, its target's embedding)
                await servicer.worker.run(core.preload_head, parse_draft(name))
            else:
                await servicer.worker.run(core.warm_up, await servicer.worker.run(core.model, name))
    except BaseException:
        await running.stop(0)
        raise
    await running.set_serving(True)
    return running
