"""Bearer-token auth, TLS and mutual TLS on the three services and the HTTP API, with certificates made here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from specdec import service
from specdec.orchestrator.cli import _security, build_parser
from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.embedded import EmbeddedStack
from specdec.security import Security, SecurityConfigError, read_token_file
from specdec.v1 import draft_pb2_grpc, verifier_pb2, verifier_pb2_grpc
from specdec.verifier_service.server import serve as serve_verifier
from tests.helpers import load

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the stacks are shared by the module, on its loop
TOKEN = "s3cret-token"
PROMPT = "def add(a, b):"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@dataclass
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA nobody here trusts
    other_client_cert: str  # signed by it
    other_client_key: str


def _write(directory: Path, name: str, blob: trustme.Blob) -> str:
    path = directory / name
    blob.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("orchestrator.test")
    stranger = other.issue_cert("stranger.test")
    return Pki(
        ca=_write(out, "ca.pem", ca.cert_pem),
        server_cert=_write(out, "server.pem", server.cert_chain_pems[0]),
        server_key=_write(out, "server.key", server.private_key_pem),
        client_cert=_write(out, "client.pem", client.cert_chain_pems[0]),
        client_key=_write(out, "client.key", client.private_key_pem),
        other_ca=_write(out, "other-ca.pem", other.cert_pem),
        other_client_cert=_write(out, "stranger.pem", stranger.cert_chain_pems[0]),
        other_client_key=_write(out, "stranger.key", stranger.private_key_pem),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def token_stack(tiny_target: Path) -> AsyncIterator[EmbeddedStack]:
    """Plaintext, token required everywhere; with the HTTP API."""
    security = Security(auth_token=TOKEN)
    async with EmbeddedStack(target_model=load(str(tiny_target)), device="cpu", http_port=0, security=security) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mtls_stack(tiny_target: Path, pki: Pki) -> AsyncIterator[EmbeddedStack]:
    """Mutual TLS and a token between all three services, as `serve all --tls-cert --tls-key --tls-ca` runs
    them: the orchestrator presents its server certificate to the verifier and the draft service."""
    security = Security(auth_token=TOKEN, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca)
    async with EmbeddedStack(target_model=load(str(tiny_target)), device="cpu", security=security) as s:
        yield s


async def _generate(address: str, security: Security | None = None) -> list[int]:
    async with SpecdecClient(address, security) as client:
        response = await client.generate(prompt=PROMPT, max_new_tokens=6, draft="ngram")
    return list(response.completions[0].token_ids)


async def _rpc_error(address: str, security: Security | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _generate(address, security)
    return info.value


# --- bearer token ----------------------------------------------------------------------------------------


@in_module_loop
async def test_a_call_without_the_token_is_unauthenticated(token_stack: EmbeddedStack) -> None:
    error = await _rpc_error(token_stack.address)
    assert error.code() == UNAUTHENTICATED
    assert "requires a bearer token" in (error.details() or "")


@in_module_loop
async def test_a_wrong_token_is_unauthenticated(token_stack: EmbeddedStack) -> None:
    error = await _rpc_error(token_stack.address, Security(auth_token="not-it"))
    assert error.code() == UNAUTHENTICATED
    assert "invalid bearer token" in (error.details() or "")


@in_module_loop
async def test_the_right_token_generates_through_all_three_services(token_stack: EmbeddedStack) -> None:
    """The orchestrator forwards its own token to the verifier and the draft service."""
    async with SpecdecClient(token_stack.address, auth_token=TOKEN) as client:
        response = await client.generate(prompt=PROMPT, max_new_tokens=6, draft="ngram")
        streamed = [m async for m in client.generate_stream(prompt=PROMPT, max_new_tokens=6, draft="ngram")]
        usage = await client.usage()  # the orchestrator's own calls to both services carry the token too
    assert len(response.completions[0].token_ids) == 6
    assert list(streamed[-1].done.completions[0].token_ids) == list(response.completions[0].token_ids)
    assert {s.service for s in usage.services} >= {"verifier", "draft"}


@in_module_loop
async def test_health_needs_no_token_but_reflection_does(token_stack: EmbeddedStack) -> None:
    for server in token_stack.servers:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == UNAUTHENTICATED


@in_module_loop
async def test_the_verifier_and_draft_refuse_direct_calls_without_the_token(token_stack: EmbeddedStack) -> None:
    verifier, draft = token_stack.servers[0], token_stack.servers[1]
    async with service.channel(f"127.0.0.1:{verifier.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await verifier_pb2_grpc.VerifierStub(channel).GetModelInfo(verifier_pb2.GetModelInfoRequest(), timeout=10)
        assert info.value.code() == UNAUTHENTICATED
    async with service.channel(f"127.0.0.1:{draft.port}") as channel:
        call = draft_pb2_grpc.DraftStub(channel).Session(timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == UNAUTHENTICATED
    async with service.channel(f"127.0.0.1:{verifier.port}", Security(auth_token=TOKEN)) as channel:
        info_reply = await verifier_pb2_grpc.VerifierStub(channel).GetModelInfo(verifier_pb2.GetModelInfoRequest())
        assert info_reply.vocab_size > 0


@in_module_loop
async def test_http_api_needs_the_token_except_health(token_stack: EmbeddedStack) -> None:
    base = token_stack.http_url.removesuffix("/v1")
    body = {"prompt": PROMPT, "max_tokens": 4, "draft": "ngram", "temperature": 0}  # greedy: no early EOS
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            refused = await http.post("/v1/completions", json=body, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            error = refused.json()["error"]
            assert error["type"] == "authentication_error" and error["message"]
            assert set(error) == {"message", "type", "param", "code"}
        assert (await http.get("/v1/models")).status_code == 401
        assert (await http.get("/health")).status_code == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        ok = await http.post("/v1/completions", json=body, headers=auth)
        assert ok.status_code == 200, ok.text
        assert ok.json()["usage"]["completion_tokens"] == 4
        assert (await http.get("/v1/models", headers=auth)).status_code == 200


# --- TLS -------------------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tls_verifier(tiny_target: Path, pki: Pki) -> AsyncIterator[str]:
    """One server with TLS only (no client certificates, no token)."""
    security = Security(tls_cert=pki.server_cert, tls_key=pki.server_key)
    running = await serve_verifier(load(str(tiny_target)), security=security)
    yield f"127.0.0.1:{running.port}"
    await running.stop(grace=0)


async def _model_info(address: str, channel: grpc.aio.Channel) -> verifier_pb2.ModelInfo:
    async with channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        return await stub.GetModelInfo(verifier_pb2.GetModelInfoRequest(), timeout=10)


@in_module_loop
async def test_tls_client_trusting_the_ca_works(tls_verifier: str, pki: Pki) -> None:
    info = await _model_info(tls_verifier, service.channel(tls_verifier, Security(tls_ca=pki.ca)))
    assert info.vocab_size > 0


@in_module_loop
async def test_tls_refuses_plaintext_and_untrusting_clients(tls_verifier: str, pki: Pki) -> None:
    for channel in (
        grpc.aio.insecure_channel(tls_verifier),
        service.channel(tls_verifier, Security(tls_ca=pki.other_ca)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _model_info(tls_verifier, channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# --- mutual TLS ------------------------------------------------------------------------------------------


@in_module_loop
async def test_mtls_with_a_client_certificate_generates_end_to_end(mtls_stack: EmbeddedStack, pki: Pki) -> None:
    security = Security(auth_token=TOKEN, tls_ca=pki.ca, tls_client_cert=pki.client_cert, tls_client_key=pki.client_key)
    assert len(await _generate(mtls_stack.address, security)) == 6


@in_module_loop
async def test_mtls_refuses_clients_without_a_trusted_certificate(mtls_stack: EmbeddedStack, pki: Pki) -> None:
    without = Security(auth_token=TOKEN, tls_ca=pki.ca)
    stranger = Security(
        auth_token=TOKEN, tls_ca=pki.ca, tls_client_cert=pki.other_client_cert, tls_client_key=pki.other_client_key
    )
    for security in (without, stranger):
        assert (await _rpc_error(mtls_stack.address, security)).code() == grpc.StatusCode.UNAVAILABLE


@in_module_loop
async def test_mtls_still_needs_the_token(mtls_stack: EmbeddedStack, pki: Pki) -> None:
    security = Security(tls_ca=pki.ca, tls_client_cert=pki.client_cert, tls_client_key=pki.client_key)
    assert (await _rpc_error(mtls_stack.address, security)).code() == UNAUTHENTICATED


# --- configuration ---------------------------------------------------------------------------------------


def test_configuration_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SecurityConfigError, match="--tls-key"):
        Security(tls_cert="cert.pem")
    with pytest.raises(SecurityConfigError, match="cannot read"):
        Security(tls_ca=str(tmp_path / "missing.pem")).check_files()
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    assert read_token_file(str(tmp_path / "token")) == TOKEN
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecurityConfigError, match="empty"):
        read_token_file(str(tmp_path / "empty"))


def test_cli_flags_and_env_build_the_config(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    tls = ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key, "--tls-ca", pki.ca]
    args = build_parser().parse_args(["serve", "orchestrator", "--auth-token-file", str(token_file), *tls])
    assert _security(args) == Security(TOKEN, pki.server_cert, pki.server_key, pki.ca)
    monkeypatch.setenv("SPECDEC_AUTH_TOKEN", "from-env")
    assert _security(build_parser().parse_args(["serve", "verifier"])).auth_token == "from-env"
    both = build_parser().parse_args(["generate", "--prompt", "x", "--auth-token-file", str(token_file)])
    with pytest.raises(SecurityConfigError, match="not both"):
        _security(both)
