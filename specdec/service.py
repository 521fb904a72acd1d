"""gRPC plumbing shared by the three servers: server options, health, reflection, errors, model worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from specdec import compute, profiling
from specdec import security as sec
from specdec.errors import SpecdecError
from specdec.metrics import MetricsEndpoint, serve_metrics
from specdec.security import Security

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S")

# Dense draft distributions are 4 bytes x vocabulary per position (196 KB at V = 49,152, 1.6 MB for K = 8);
# tokenizer files are a few MB. gRPC's default 4 MiB receive limit is too small for either.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # A peer that restarts is found again within ~2 s (gRPC's default backoff grows to 120 s): the orchestrator
    # resumes drafting, and serving after a verifier restart, soon after the peer is back.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def create_server(security: Security | None = None, max_receive_bytes: int = MAX_MESSAGE_BYTES) -> grpc.aio.Server:
    """A server; with an auth token, every call but health checks must carry it. A message larger than
    `max_receive_bytes` is refused by gRPC itself with RESOURCE_EXHAUSTED (the call, not the server)."""
    interceptors = sec.server_interceptors(security or Security())
    options = [o for o in CHANNEL_OPTIONS if o[0] != "grpc.max_receive_message_length"]  # one value per key
    options.append(("grpc.max_receive_message_length", max_receive_bytes))
    return grpc.aio.server(options=options, interceptors=interceptors or None)


def insecure_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def channel(address: str, security: Security | None = None) -> grpc.aio.Channel:
    """Every outgoing channel: TLS (and mutual TLS) when configured, the bearer token on every call."""
    security = security or Security()
    if security.client_tls:
        credentials = sec.channel_credentials(security)
        return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS + sec.channel_options(security))
    if security.auth_token:
        return grpc.aio.insecure_channel(
            address, options=CHANNEL_OPTIONS, interceptors=sec.token_interceptors(security.auth_token)
        )
    return insecure_channel(address)


def add_health_and_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> health.aio.HealthServicer:
    """gRPC health v1 (starts NOT_SERVING; call `set_serving`) and server reflection, for grpcurl & co."""
    names = list(service_names)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return servicer


async def set_serving(servicer: health.aio.HealthServicer, service_names: Iterable[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await servicer.set(name, status)


@dataclass
class RunningServer:
    """A started server, its bound port, health servicer and the application servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]
    servicer: Any
    metrics: MetricsEndpoint | None = None  # the Prometheus `/metrics` endpoint, when enabled

    @property
    def metrics_port(self) -> int:
        assert self.metrics is not None, "start the server with metrics_port to serve metrics"
        return self.metrics.port

    async def set_serving(self, serving: bool) -> None:
        await set_serving(self.health, self.service_names, serving)

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful stop: report NOT_SERVING, let in-flight calls finish within `grace`, then stop."""
        await set_serving(self.health, self.service_names, False)
        await self.server.stop(grace)
        await self.servicer.aclose()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)


async def start(
    service_names: list[str],
    register: Callable[[grpc.aio.Server], None],
    servicer: Any,
    port: int,
    host: str,
    metrics_port: int | None = None,
    security: Security | None = None,
    serving: bool = True,
    max_receive_bytes: int = MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Create, register, bind (port 0 = a free port), start and mark SERVING (with `serving=False`, health
    says NOT_SERVING until `set_serving(True)`: a service still loading its model); with `metrics_port`, also
    serve `servicer.metrics.registry` for Prometheus (0 = a free port); with `security`, require its token
    and serve TLS (default: plaintext and open)."""
    server = create_server(security, max_receive_bytes)
    register(server)
    health_servicer = add_health_and_reflection(server, service_names)
    bound = bind(server, host, port, security)
    metrics = serve_metrics(servicer.metrics.registry, metrics_port, host) if metrics_port is not None else None
    try:
        await server.start()
    except BaseException:
        if metrics is not None:
            metrics.stop()
        raise
    await set_serving(health_servicer, service_names, serving)
    return RunningServer(server, bound, health_servicer, service_names, servicer, metrics)


def bind(server: grpc.aio.Server, host: str, port: int, security: Security | None = None) -> int:
    """Bind a port (0 = a free one), TLS when `security` has a certificate, and return the port bound."""
    address = f"{host}:{port}"
    if security is not None and security.server_tls:
        bound = server.add_secure_port(address, sec.server_credentials(security))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    return bound


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """Map any failure to a precise status, in one place: domain errors and downstream RPC errors keep
    their code; anything else is a bug and becomes INTERNAL."""
    if isinstance(exc, SpecdecError):
        await context.abort(exc.code, str(exc))
    if isinstance(exc, grpc.aio.AioRpcError):
        await context.abort(exc.code(), exc.details() or "")
    log.exception("internal error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    raise AssertionError("unreachable")  # context.abort always raises


class ModelWorker:
    """Runs model work off the event loop, one job at a time, in order: on a CPU on the process's one compute
    thread (`specdec.compute`, shared with the other services of the process), on CUDA on a thread of its own.

    Health checks, cancellation and new sessions stay responsive while a forward pass runs (torch releases
    the GIL in its ops).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._shared = compute.share_cpu_thread()
        self._pool = (
            compute.shared_pool() if self._shared else ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        )
        self._queued: set[Future[Any]] = set()  # this worker's jobs not finished yet (cancelled at shutdown)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue work without waiting for it: cleanup that must run even when the caller is cancelled,
        after whatever forward pass of the same session is in flight."""
        self._submit(fn, *args)

    def _submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future = self._pool.submit(self._job, fn, *args)
        self._queued.add(future)
        future.add_done_callback(self._queued.discard)
        return future

    def _job(self, fn: Callable[..., T], *args: Any) -> T:
        """One job without autograd; under --profile, a labelled range in the torch profiler's trace."""
        if not profiling.active():
            return _no_grad(fn, *args)
        with torch.profiler.record_function(f"{self.name}:{getattr(fn, '__name__', 'job')}"):
            return _no_grad(fn, *args)

    def shutdown(self) -> None:
        """Cancel this worker's jobs that have not started (a shared thread keeps serving the other services)."""
        for future in list(self._queued):
            future.cancel()
        if not self._shared:
            self._pool.shutdown(wait=False, cancel_futures=True)


class StreamSessions(Generic[S]):
    """The sessions one stream opened. They are opened and closed on the model worker, so a close queued by
    a cancelled handler still runs after any open or forward pass of the same stream still in flight."""

    def __init__(self, worker: ModelWorker, open_fn: Callable[[Any], S], close_fn: Callable[[S], None]) -> None:
        self.worker = worker
        self.open_fn = open_fn
        self.close_fn = close_fn
        self.sessions: list[S] = []

    async def open(self, options: Any) -> S:
        return await self.worker.run(self._open, options)

    def _open(self, options: Any) -> S:
        session = self.open_fn(options)
        self.sessions.append(session)
        return session

    def close_all(self) -> None:
        """Queue the close; does not wait (safe in a `finally` of a cancelled handler)."""
        self.worker.submit(self._close_all)

    async def aclose(self) -> None:
        """Close and wait for it: a stream that ends normally reports its end only once its sessions are freed."""
        await self.worker.run(self._close_all)

    def _close_all(self) -> None:
        for session in self.sessions:
            self.close_fn(session)
        self.sessions.clear()


def _no_grad(fn: Callable[..., T], *args: Any) -> T:
    with torch.inference_mode():
        return fn(*args)
