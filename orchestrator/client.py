"""A small Python client for the public API (used by the CLI and the benchmarks)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any

from specdec import service
from specdec.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from specdec.wire import policy_params_to_pb


def build_request(
    prompt: str = "",
    *,
    prompt_token_ids: list[int] | None = None,
    messages: list[dict[str, str]] | None = None,
    max_new_tokens: int = 0,
    temperature: float = 0.0,
    top_p: float = 0.0,
    top_k: int = 0,
    seed: int | None = None,
    num_samples: int = 0,
    stop: list[str] | None = None,
    return_logprobs: bool = False,
    draft: str = "",
    k: int | None = None,
    policy: str = "",
    policy_params: dict[str, float] | None = None,
    k_controller: str = "",
    k_max: int | None = None,
    draft_min_confidence: float = 0.0,
    model: str = "",
    probs_encoding: common_pb2.ProbsEncoding = common_pb2.PROBS_ENCODING_UNSPECIFIED,
    draft_ahead: bool | None = None,
    tree_nodes: int = 0,
) -> orchestrator_pb2.GenerateRequest:
    """Keyword arguments -> GenerateRequest; None/zero leaves the server's default."""
    request = orchestrator_pb2.GenerateRequest(
        prompt=prompt,
        prompt_token_ids=prompt_token_ids or [],
        messages=[orchestrator_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages or []],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        num_samples=num_samples,
        stop=stop or [],
        return_logprobs=return_logprobs,
        draft=draft,
        policy=policy,
        k_controller=k_controller,
        draft_min_confidence=draft_min_confidence,
        model=model,
        probs_encoding=probs_encoding,
        tree_nodes=tree_nodes,
    )
    if policy_params:
        request.policy_params.CopyFrom(policy_params_to_pb(policy_params))
    if seed is not None:
        request.seed = seed
    if k is not None:
        request.k = k
    if k_max is not None:
        request.k_max = k_max
    if draft_ahead is not None:
        request.draft_ahead = draft_ahead
    return request


class SpecdecClient:
    """`async with SpecdecClient("host:port") as client: response = await client.generate("Hi")`.

    `security` (or just `auth_token`) when the server requires a token or speaks TLS: e.g.
    `SpecdecClient(address, Security(auth_token=token, tls_ca="ca.pem"))`.
    """

    def __init__(self, address: str, security: service.Security | None = None, *, auth_token: str = "") -> None:
        self.address = address
        security = security or service.Security()
        if auth_token:
            security = dataclasses.replace(security, auth_token=auth_token)
        self.channel = service.channel(address, security)
        self.stub = orchestrator_pb2_grpc.OrchestratorStub(self.channel)

    async def __aenter__(self) -> SpecdecClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def generate(self, prompt: str = "", **kwargs: Any) -> orchestrator_pb2.GenerateResponse:
        return await self.stub.Generate(build_request(prompt, **kwargs))

    async def usage(self, reset_peaks: bool = False) -> orchestrator_pb2.DeploymentUsage:
        """Memory held by the orchestrator and the services behind it."""
        return await self.stub.GetUsage(common_pb2.GetUsageRequest(reset_peaks=reset_peaks))

    async def generate_stream(
        self, prompt: str = "", **kwargs: Any
    ) -> AsyncGenerator[orchestrator_pb2.GenerateStreamResponse, None]:
        async for message in self.stub.GenerateStream(build_request(prompt, **kwargs)):
            yield message
