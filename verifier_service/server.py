"""The verifier's gRPC server: a thin servicer (protobuf -> domain -> core -> protobuf)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc

from specdec import compute, service, tracing
from specdec.errors import FailedPrecondition, InvalidArgument, Unavailable
from specdec.idle import expiring
from specdec.limits import (
    DEFAULT_BATCH_WINDOW_S,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_TTL_S,
    ServiceLimits,
    SessionCapacity,
)
from specdec.metrics import ModelServiceMetrics
from specdec.modeling import LoadedModel, load_model, weights_fingerprint
from specdec.static_cache import GraphOptions
from specdec.usage import UsageTracker
from specdec.v1 import common_pb2, verifier_pb2, verifier_pb2_grpc
from specdec.verifier_service.batcher import VerifyBatcher, VerifyRequest
from specdec.verifier_service.core import (
    ACCEPTED,
    REJECTED,
    SessionOptions,
    VerifierCore,
    VerifierSession,
    VerifyOutcome,
    check_block_size,
)
from specdec.wire import decode_distributions, hidden_to_pb, policy_params_from_pb, sampling_from_pb

log = logging.getLogger(__name__)
SERVICE_NAME = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name
SESSION_METHOD = f"/{SERVICE_NAME}/Session"
_OUTCOME_PB = {
    ACCEPTED: verifier_pb2.DRAFT_OUTCOME_ACCEPTED,
    REJECTED: verifier_pb2.DRAFT_OUTCOME_REJECTED,
}


def tokenizer_files(lm: LoadedModel) -> dict[str, bytes]:
    """The tokenizer as files, so clients (the orchestrator) need no copy of the model."""
    with tempfile.TemporaryDirectory() as tmp:
        lm.tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def verdict_to_pb(step: int, position: int, v: VerifyOutcome) -> verifier_pb2.Verdict:
    msg = verifier_pb2.Verdict(
        step=step,
        position=position,
        num_accepted=v.num_accepted,
        token_ids=v.token_ids,
        outcomes=[_OUTCOME_PB.get(o, verifier_pb2.DRAFT_OUTCOME_SKIPPED) for o in v.outcomes],
        bonus=v.bonus,
        committed_length=v.committed_length,
        forward_ms=v.forward_ms,
        accept_ms=v.accept_ms,
        logprobs=v.logprobs,
        accepted_nodes=v.accepted_nodes,
    )
    if v.hidden is not None:
        msg.hidden_states.CopyFrom(hidden_to_pb(v.hidden_start, v.hidden))
    return msg


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    """`core` None: the model is still loading (health NOT_SERVING); calls get UNAVAILABLE until `set_core`."""

    def __init__(
        self,
        core: VerifierCore | None,
        session_ttl_s: float | None = DEFAULT_SESSION_TTL_S,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        batch_window_s: float = DEFAULT_BATCH_WINDOW_S,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._core = core
        self.session_ttl_s = session_ttl_s
        self.capacity = SessionCapacity("verifier", max_sessions, self.live_sessions)
        self.worker = service.ModelWorker("verifier-model")

        # Blocks of concurrent sessions share forward passes; the core is read per batch (it is set late
        # when the model loads after the server starts).
        def verify(requests: Sequence[VerifyRequest]) -> list[VerifyOutcome | Exception]:  # "verifier-model:verify"
            return self.core.verify_batch(requests)

        self.batcher = VerifyBatcher(self.worker, verify, self.live_sessions, batch_window_s, max_batch)
        self.tracer = tracing.tracer(tracing.VERIFIER)
        self.metrics = ModelServiceMetrics(UsageTracker("verifier", self.kv_cache_bytes, self.live_sessions))
        self._tokenizer_files: dict[str, bytes] | None = None
        self._weights_fingerprint = ""  # computed on first use (hashes the embedding once)

    @property
    def core(self) -> VerifierCore:
        if self._core is None:
            raise Unavailable("the verifier is still loading its model; retry once its health check says SERVING")
        return self._core

    def set_core(self, core: VerifierCore) -> None:
        self._core = core

    def live_sessions(self) -> int:
        return self._core.live_sessions if self._core is not None else 0

    def kv_cache_bytes(self) -> int:
        return self._core.kv_cache_bytes() if self._core is not None else 0

    async def aclose(self) -> None:
        self.worker.shutdown()

    async def GetModelInfo(
        self, request: verifier_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.ModelInfo:
        try:
            lm = self.core.lm
        except Unavailable as exc:
            await service.abort_with(context, exc)
        if not self._weights_fingerprint:  # hashing the embedding is model work: keep it off the event loop's thread
            self._weights_fingerprint = await self.worker.run(weights_fingerprint, lm.model)
        info = verifier_pb2.ModelInfo(
            name=lm.name,
            vocab_size=lm.vocab_size,
            vocab_fingerprint=lm.fingerprint,
            eos_token_ids=lm.eos_token_ids,
            max_context=lm.max_context,
            device=str(lm.device),
            dtype=str(lm.dtype).removeprefix("torch."),
            hidden_size=int(lm.model.config.hidden_size),
            weights_fingerprint=self._weights_fingerprint,
        )
        if request.include_tokenizer:
            if self._tokenizer_files is None:
                self._tokenizer_files = tokenizer_files(lm)
            info.tokenizer_files.update(self._tokenizer_files)
        return info

    async def GetUsage(
        self, request: common_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ServiceUsage:
        return self.metrics.usage.snapshot(request.reset_peaks)

    async def Session(
        self, request_iterator: AsyncIterator[verifier_pb2.VerifierRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[verifier_pb2.VerifierResponse]:
        session: VerifierSession | None = None
        opened: service.StreamSessions[VerifierSession] | None = None
        span = tracing.start_server_span(self.tracer, SESSION_METHOD, context.invocation_metadata())
        try:
            core = self.core
            opened = service.StreamSessions(self.worker, core.open_session, core.close_session)
            async for request in expiring(request_iterator, self.session_ttl_s, "verifier"):
                kind = request.WhichOneof("kind")
                if kind is None:
                    raise InvalidArgument("a VerifierRequest must set `open` or `verify`")
                if kind == "open":
                    if session is not None:
                        raise FailedPrecondition("the session is already open")
                    prompt = {"specdec.prompt_tokens": len(request.open.prompt_token_ids)}
                    with tracing.child_span(self.tracer, span, "prefill", prompt) as s:
                        with self.capacity.reserve():  # refused at once when full, before queueing for the model
                            session = await opened.open(_options_from_pb(request.open))
                        s.set_attribute("specdec.prefill_ms", session.prefill_ms)
                    self.metrics.observe_forward("prefill", session.prefill_ms)
                    yield verifier_pb2.VerifierResponse(
                        opened=verifier_pb2.VerifierSessionOpened(
                            committed_length=session.committed_length,
                            prefill_ms=session.prefill_ms,
                            policy=session.policy,
                        )
                    )
                elif kind == "verify":
                    if session is None:
                        raise FailedPrecondition("the first message of a session must be `open`")
                    block = request.verify
                    tokens = list(block.draft_token_ids)
                    check_block_size(len(tokens))  # before decoding its probabilities
                    probs = decode_distributions(list(block.draft_probs), len(tokens), core.lm.vocab_size)
                    with tracing.child_span(self.tracer, span, "verify", _block_attributes(block, tokens)) as s:
                        parents = list(block.draft_parents) or None
                        outcome = await self.batcher.verify(session, block.position, tokens, probs, parents)
                        if s.is_recording():
                            s.set_attributes(_outcome_attributes(outcome))
                    self.metrics.observe_forward("verify", outcome.forward_ms)
                    yield verifier_pb2.VerifierResponse(verdict=verdict_to_pb(block.step, block.position, outcome))
            await opened.aclose()  # the client half-closed: its session is freed before the stream ends
        except Exception as exc:
            tracing.record_error(span, exc)
            await service.abort_with(context, exc)
        except BaseException:  # cancelled: the client went away or its deadline passed
            span.add_event("cancelled")
            raise
        finally:
            span.end()
            if opened is not None:
                opened.close_all()


def _block_attributes(block: verifier_pb2.VerifyBlock, tokens: list[int]) -> dict[str, int]:
    return {"specdec.step": block.step, "specdec.position": block.position, "specdec.k": len(tokens)}


def _outcome_attributes(outcome: VerifyOutcome) -> dict[str, float]:
    """The verify pass as the verifier measured it (the span itself also covers waiting for the model)."""
    return {
        "specdec.accepted": outcome.num_accepted,
        "specdec.committed": len(outcome.token_ids),
        "specdec.forward_ms": outcome.forward_ms,
        "specdec.accept_ms": outcome.accept_ms,
    }


def _options_from_pb(msg: verifier_pb2.OpenVerifierSession) -> SessionOptions:
    return SessionOptions(
        prompt_token_ids=list(msg.prompt_token_ids),
        sampling=sampling_from_pb(msg.sampling),
        policy=msg.policy,
        policy_params=policy_params_from_pb(msg.policy_params),
        return_logprobs=msg.return_logprobs,
        return_hidden_states=msg.return_hidden_states,
    )


async def serve(
    lm: LoadedModel,
    port: int = 0,
    host: str = "127.0.0.1",
    metrics_port: int | None = None,
    security: service.Security | None = None,
    limits: ServiceLimits | None = None,
    graphs: GraphOptions | None = None,
) -> service.RunningServer:
    """Start a verifier for an already loaded target; `port=0` binds a free port (see `.port`); with
    `metrics_port`, Prometheus metrics too (see `.metrics_port`); `security`: token and TLS (default open);
    `limits`: session cap and idle TTL; `graphs`: the static KV pool and CUDA graphs (default auto: the pool for a
    Llama-family target, graphs when it is on CUDA)."""
    limits = limits or ServiceLimits()
    servicer = VerifierServicer(VerifierCore(lm, graphs), *_servicer_limits(limits))
    return await _start(servicer, port, host, metrics_port, security, serving=True)


async def _start(
    servicer: VerifierServicer,
    port: int,
    host: str,
    metrics_port: int | None,
    security: service.Security | None,
    serving: bool,
) -> service.RunningServer:
    register = lambda server: verifier_pb2_grpc.add_VerifierServicer_to_server(servicer, server)  # noqa: E731
    return await service.start([SERVICE_NAME], register, servicer, port, host, metrics_port, security, serving)


async def serve_loading(
    load: Callable[[], LoadedModel],
    port: int = 0,
    host: str = "127.0.0.1",
    metrics_port: int | None = None,
    security: service.Security | None = None,
    limits: ServiceLimits | None = None,
    graphs: GraphOptions | None = None,
) -> service.RunningServer:
    """Listen at once with health NOT_SERVING (so orchestrators and compose see a live but unready verifier),
    load the model with `load()`, warm it up with one prefill and one verify pass, then report SERVING."""
    limits = limits or ServiceLimits()
    servicer = VerifierServicer(None, *_servicer_limits(limits))
    running = await _start(servicer, port, host, metrics_port, security, serving=False)
    try:
        lm = await compute.run(load)  # on the model thread: see specdec/compute.py
        core = VerifierCore(lm, graphs)  # FailedPrecondition here for --cuda-graphs on without CUDA
        await servicer.worker.run(core.warm_up)
    except BaseException:
        await running.stop(0)
        raise
    servicer.set_core(core)
    await running.set_serving(True)
    return running


def _servicer_limits(limits: ServiceLimits) -> tuple[float | None, int, float, int]:
    return limits.session_ttl_s, limits.max_sessions, limits.batch_window_s, limits.max_batch


def load_target(target: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    log.info("loading target %s", target or "(default)")
    return load_model(target, device=device, dtype=dtype)
