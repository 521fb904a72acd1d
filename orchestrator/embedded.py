"""The three services started in this process on loopback ports: still real gRPC between them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from types import TracebackType

from specdec import compute, service, tracing
from specdec.draft_service.core import DraftCore
from specdec.draft_service.server import serve as serve_draft
from specdec.limits import ServiceLimits
from specdec.modeling import LoadedModel, load_model
from specdec.orchestrator.core import Limits
from specdec.orchestrator.server import serve as serve_orchestrator
from specdec.verifier_service.server import serve as serve_verifier

log = logging.getLogger(__name__)


@dataclass
class EmbeddedStack:
    """`async with EmbeddedStack(target=...) as stack:` then talk to `stack.address`."""

    target: str = ""
    device: str = "auto"
    dtype: str = "auto"
    preload: list[str] = field(default_factory=list)
    limits: Limits | None = None
    target_model: LoadedModel | None = None  # already loaded (tests); else loaded from `target`
    http_port: int | None = None  # also serve the OpenAI-compatible HTTP API (0: a free port)
    port: int = 0  # the public gRPC API's port (the verifier and draft always take free loopback ports)
    host: str = "127.0.0.1"  # where the public APIs listen
    metrics_port: int | None = None  # Prometheus: orchestrator on it, verifier +1, draft +2 (0: free ports)
    security: service.Security | None = None  # token and TLS of all three services and the channels between them
    service_limits: ServiceLimits | None = None  # the verifier's and the draft service's session cap and TTL
    grace_s: float = 5.0  # on exit, in-flight requests get this long to finish (the orchestrator stops first)
    servers: list[service.RunningServer] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.servers[-1].port}"

    @property
    def http_url(self) -> str:
        http = self.servers[-1].servicer.http
        assert http is not None, "start the stack with http_port to serve HTTP"
        return f"http://127.0.0.1:{http.port}/v1"

    async def __aenter__(self) -> EmbeddedStack:
        lm = self.target_model
        if lm is None:
            lm = await compute.run(load_model, self.target, self.device, self.dtype)
        try:
            await self._start(lm)
        except BaseException:
            await self.__aexit__(None, None, None)  # never leave half a stack running
            raise
        return self

    def _metrics_port(self, offset: int) -> int | None:
        if self.metrics_port is None:
            return None
        return self.metrics_port + offset if self.metrics_port else 0

    async def _start(self, lm: LoadedModel) -> None:
        verifier = await serve_verifier(
            lm, host="127.0.0.1", metrics_port=self._metrics_port(1), security=self.security, limits=self.service_limits
        )
        self.servers.append(verifier)
        draft_core = DraftCore(self.device, self.dtype)
        draft_core.register(lm)  # a model draft naming the target reuses its weights
        draft = await serve_draft(
            draft_core,
            preload=self.preload,
            metrics_port=self._metrics_port(2),
            security=self.security,
            limits=self.service_limits,
        )
        self.servers.append(draft)
        orchestrator = await serve_orchestrator(
            f"127.0.0.1:{verifier.port}",
            f"127.0.0.1:{draft.port}",
            self.port,
            self.host,
            limits=self.limits,
            http_port=self.http_port,
            metrics_port=self._metrics_port(0),
            security=self.security,
        )
        self.servers.append(orchestrator)
        if orchestrator.servicer.readiness is not None:  # its verifier is up: SERVING within moments
            await asyncio.wait_for(asyncio.shield(orchestrator.servicer.readiness), 60)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in reversed(self.servers):
            await server.stop(grace=self.grace_s)
        self.servers.clear()
        if tracing.enabled():  # the last requests' spans leave before the caller moves on (or exits)
            await asyncio.to_thread(tracing.force_flush)
