"""Optional bearer-token auth and TLS / mutual TLS for the three services and their clients.

One frozen `Security` describes a process: the token it requires (servers) and sends (clients), its own
certificate, and the CA that verifies its peers. The default, `Security()`, is today's behaviour: plaintext
and open. Everything here uses grpc's public API only.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

AUTH_HEADER = "authorization"
HEALTH_PREFIX = "/grpc.health.v1.Health/"  # exempt: load balancers and compose health checks carry no token
MISSING_TOKEN = (
    "this server requires a bearer token: send the metadata `authorization: Bearer <token>` "
    "(specdec: --auth-token, --auth-token-file or SPECDEC_AUTH_TOKEN)"
)
WRONG_TOKEN = "invalid bearer token"


class SecurityConfigError(ValueError):
    """A security option that cannot work (a missing file, a certificate without its key)."""


@dataclass(frozen=True)
class Security:
    """How a process authenticates and encrypts; file fields are PEM paths, "" = not set.

    As a server: `auth_token` is required on every call but health; `tls_cert`/`tls_key` turn TLS on; `tls_ca`
    also requires every client to present a certificate signed by it (mutual TLS).
    As a client (the orchestrator towards verifier and draft, SpecdecClient, the CLI): `auth_token` is sent;
    TLS is used when `tls` or any certificate option is set; servers are verified against `tls_ca` (else the
    system's roots) under the address's host name or `tls_server_name`; `tls_client_cert`/`tls_client_key`
    (else `tls_cert`/`tls_key`) are presented for mutual TLS.
    """

    auth_token: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    tls_server_name: str = ""  # verify servers' certificates against this name instead of the address's host
    tls: bool = False  # connect with TLS even without any certificate option (system roots)

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SecurityConfigError("give both a TLS certificate and its key (--tls-cert and --tls-key)")
        if bool(self.tls_client_cert) != bool(self.tls_client_key):
            raise SecurityConfigError("give both --tls-client-cert and --tls-client-key")

    @property
    def server_tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def client_tls(self) -> bool:
        return self.tls or bool(self.tls_cert or self.tls_ca or self.tls_client_cert)

    def check_files(self) -> None:
        """Read every configured file now, so a typo fails at start-up with its name, not on the first call."""
        for path in (self.tls_cert, self.tls_key, self.tls_ca, self.tls_client_cert, self.tls_client_key):
            if path:
                _read(path)


def read_token_file(path: str) -> str:
    """A token from a file (surrounding whitespace dropped): keeps it out of `ps` and shell history."""
    token = _read(path).decode().strip()
    if not token:
        raise SecurityConfigError(f"the auth token file {path} is empty")
    return token


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


# --- server side -----------------------------------------------------------------------------------------


def server_credentials(security: Security) -> grpc.ServerCredentials:
    """TLS with this server's certificate; with `tls_ca`, clients must present a certificate it signed."""
    ca = _read(security.tls_ca) if security.tls_ca else None
    pair = (_read(security.tls_key), _read(security.tls_cert))
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def server_interceptors(security: Security) -> list[grpc.aio.ServerInterceptor]:
    return [AuthInterceptor(security.auth_token)] if security.auth_token else []


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without `authorization: Bearer <token>` with UNAUTHENTICATED, except health checks.

    Reflection is not exempt: the list of services is information an unauthenticated caller does not need.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method  # type: ignore[attr-defined]
        if method.startswith(HEALTH_PREFIX):
            return await continuation(handler_call_details)
        error = self._check(handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
        handler = await continuation(handler_call_details)
        if error is None:
            return handler
        return _refusal(handler, error)

    def _check(self, metadata: Any) -> str | None:
        """None when the token matches; else why not. The comparison takes the same time wherever it differs."""
        values = [v for k, v in metadata or () if k == AUTH_HEADER]
        if not values:
            return MISSING_TOKEN
        value = values[0].encode() if isinstance(values[0], str) else bytes(values[0])
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return MISSING_TOKEN
        return None if hmac.compare_digest(b"bearer " + token.strip(), self._expected) else WRONG_TOKEN


def _refusal(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as the real one (any kind for an unknown method, which then stays
    indistinguishable from a known one) that only aborts with UNAUTHENTICATED."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:
        return grpc.stream_stream_rpc_method_handler(refuse)
    codecs = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codecs)
    return grpc.unary_unary_rpc_method_handler(refuse, **codecs)


# --- client side -----------------------------------------------------------------------------------------


def channel_credentials(security: Security) -> grpc.ChannelCredentials:
    """TLS verifying the server (against `tls_ca` or the system's roots), presenting our certificate when we
    have one, with the bearer token as call credentials (grpc sends those only over secure channels)."""
    cert, key = security.tls_client_cert or security.tls_cert, security.tls_client_key or security.tls_key
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(security.tls_ca) if security.tls_ca else None,
        private_key=_read(key) if key else None,
        certificate_chain=_read(cert) if cert else None,
    )
    if not security.auth_token:
        return credentials
    return grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(security.auth_token))


def channel_options(security: Security) -> list[tuple[str, Any]]:
    return [("grpc.ssl_target_name_override", security.tls_server_name)] if security.tls_server_name else []


class _TokenMetadata:
    """Adds the bearer token to a call's metadata: plaintext channels refuse call credentials."""

    def __init__(self, token: str) -> None:
        self._header = (AUTH_HEADER, f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return details._replace(metadata=metadata)  # type: ignore[attr-defined, no-any-return]


# One class per call kind: grpc.aio files each interceptor under the first kind it implements only.
class _UnaryUnaryToken(_TokenMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStreamToken(_TokenMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnaryToken(_TokenMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStreamToken(_TokenMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send `authorization: Bearer <token>` on every call of a plaintext channel."""
    return [kind(token) for kind in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)]
