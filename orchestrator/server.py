"""The public gRPC API: a thin servicer over the orchestrator core."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from specdec import service, tracing
from specdec.orchestrator.core import GenerationRequest, GenerationResult, Limits, OrchestratorCore, stats_to_pb
from specdec.orchestrator.http_api import HttpServer, serve_http
from specdec.orchestrator.loop import Delta
from specdec.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from specdec.wire import policy_params_from_pb

READINESS_TIMEOUT_S = 30.0  # one GetModelInfo (with the tokenizer files) while waiting to report SERVING
SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name


def request_from_pb(msg: orchestrator_pb2.GenerateRequest) -> GenerationRequest:
    return GenerationRequest(
        prompt=msg.prompt,
        prompt_token_ids=list(msg.prompt_token_ids),
        messages=[{"role": m.role, "content": m.content} for m in msg.messages],
        max_new_tokens=msg.max_new_tokens,
        temperature=msg.temperature,
        top_p=msg.top_p,
        top_k=msg.top_k,
        seed=msg.seed if msg.HasField("seed") else None,
        num_samples=msg.num_samples,
        stop=list(msg.stop),
        return_logprobs=msg.return_logprobs,
        draft=msg.draft,
        k=msg.k if msg.HasField("k") else None,
        policy=msg.policy,
        policy_params=policy_params_from_pb(msg.policy_params),
        k_controller=msg.k_controller,
        k_max=msg.k_max if msg.HasField("k_max") else None,
        draft_min_confidence=msg.draft_min_confidence,
        model=msg.model,
        probs_encoding=msg.probs_encoding,
        draft_ahead=msg.draft_ahead if msg.HasField("draft_ahead") else None,
        tree_nodes=msg.tree_nodes,
    )


def request_with_deadline(
    msg: orchestrator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
) -> GenerationRequest:
    """The request, with the client's deadline (if it set one) to pass on to the verifier and draft, and its
    trace context (when tracing is on: the request span becomes a child of the client's span)."""
    request = request_from_pb(msg)
    if tracing.enabled():
        request.trace_parent = tracing.incoming_context(context.invocation_metadata())
    remaining = context.time_remaining()
    if remaining is not None:
        request.deadline = time.monotonic() + remaining
    return request


def result_to_pb(result: GenerationResult) -> orchestrator_pb2.GenerateResponse:
    stats = stats_to_pb(result)
    return orchestrator_pb2.GenerateResponse(
        completions=[
            orchestrator_pb2.Completion(
                index=c.index,
                text=c.text,
                token_ids=c.token_ids,
                finish_reason=c.finish_reason,
                logprobs=c.logprobs,
            )
            for c in result.samples
        ],
        stats=stats,
        prompt_token_ids=result.prompt_token_ids,
        model=result.model,
        draft=result.draft,
        k=result.k,
        policy=result.policy,
        seed=result.seed,
        k_controller=result.k_controller,
    )


def delta_to_pb(delta: Delta) -> orchestrator_pb2.GenerateStreamResponse:
    return orchestrator_pb2.GenerateStreamResponse(
        delta=orchestrator_pb2.TokenDelta(
            index=delta.index,
            token_ids=delta.token_ids,
            text=delta.text,
            finish_reason=delta.finish_reason,
            logprobs=delta.logprobs,
        )
    )


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, core: OrchestratorCore) -> None:
        self.core = core
        self.metrics = core.metrics
        self.http: HttpServer | None = None  # the OpenAI-compatible API on the same core, when enabled
        self.readiness: asyncio.Task[None] | None = None  # flips health to SERVING once the verifier answers

    async def aclose(self) -> None:
        if self.readiness is not None:
            self.readiness.cancel()
        if self.http is not None:
            await self.http.stop()
        await self.core.close()

    async def Generate(
        self, request: orchestrator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.GenerateResponse:
        try:
            return result_to_pb(await self.core.generate(request_with_deadline(request, context)))
        except Exception as exc:
            await service.abort_with(context, exc)

    async def GetUsage(
        self, request: common_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> orchestrator_pb2.DeploymentUsage:
        return await self.core.usage(request.reset_peaks)

    async def GenerateStream(
        self, request: orchestrator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[orchestrator_pb2.GenerateStreamResponse]:
        try:
            async with aclosing(self.core.generate_stream(request_with_deadline(request, context))) as stream:
                async for item in stream:
                    if isinstance(item, Delta):
                        yield delta_to_pb(item)
                    else:
                        yield orchestrator_pb2.GenerateStreamResponse(done=result_to_pb(item))
        except Exception as exc:
            await service.abort_with(context, exc)


async def serve(
    verifier_address: str,
    draft_address: str | None,
    port: int = 0,
    host: str = "127.0.0.1",
    limits: Limits | None = None,
    http_port: int | None = None,
    metrics_port: int | None = None,
    security: service.Security | None = None,
) -> service.RunningServer:
    """Start the public gRPC API (`port=0` binds a free port, see `.port`) and, with `http_port`, the
    OpenAI-compatible HTTP API on the same core (see `.servicer.http.port`); with `metrics_port`, Prometheus
    metrics (see `.metrics_port`). `security` applies to both public APIs (the HTTP one: its token only) and
    to the channels to the verifier and the draft service."""
    servicer = OrchestratorServicer(OrchestratorCore(verifier_address, draft_address, limits, security))
    if http_port is not None:
        token = security.auth_token if security is not None else ""
        servicer.http = await serve_http(servicer.core, http_port, host, auth_token=token)
    running = await service.start(
        [SERVICE_NAME],
        lambda server: orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(servicer, server),
        servicer,
        port,
        host,
        metrics_port,
        security,
        serving=False,
        max_receive_bytes=servicer.core.limits.max_request_bytes,
    )
    servicer.readiness = asyncio.create_task(_serving_once_the_verifier_answers(servicer.core, running))
    return running


async def _serving_once_the_verifier_answers(core: OrchestratorCore, running: service.RunningServer) -> None:
    """Health stays NOT_SERVING until the verifier has described its model (the orchestrator needs its
    tokenizer for every request); a verifier that is still loading is asked again every half second."""
    while True:
        try:
            await asyncio.wait_for(core.target(), READINESS_TIMEOUT_S)
        except (grpc.aio.AioRpcError, TimeoutError):
            await asyncio.sleep(0.5)
            continue
        await running.set_serving(True)
        return
