"""Bad input gets a precise status and message; the servers keep serving."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from specdec.orchestrator.client import SpecdecClient
from specdec.v1 import verifier_pb2, verifier_pb2_grpc
from tests.helpers import load

INVALID = grpc.StatusCode.INVALID_ARGUMENT
CASES = [
    (dict(), INVALID, "exactly one of prompt"),
    (dict(prompt="hi", prompt_token_ids=[1, 2]), INVALID, "exactly one of prompt"),
    (dict(prompt_token_ids=[10**6]), INVALID, "outside the vocabulary"),
    (dict(prompt="hi", temperature=-1.0), INVALID, "temperature"),
    (dict(prompt="hi", top_p=1.5), INVALID, "top_p"),
    (dict(prompt="hi", draft="medusa-ish"), INVALID, "draft must be"),
    (dict(prompt="hi", policy="medusa-magic"), INVALID, "policy must be"),
    (dict(prompt="hi", policy="threshold", policy_params={"accept_threshold": 1.5}), INVALID, "accept_threshold"),
    (dict(prompt="hi", policy="exact", temperature=0.7), INVALID, "policy 'exact' needs temperature 0"),
    (dict(prompt="hi", k=1000), grpc.StatusCode.OUT_OF_RANGE, "k must be in"),
    (dict(prompt="hi", max_new_tokens=10**6), grpc.StatusCode.OUT_OF_RANGE, "max_new_tokens"),
    (dict(prompt="hi", num_samples=10**4), grpc.StatusCode.OUT_OF_RANGE, "num_samples"),
    (dict(prompt="hi", model="someone/else"), grpc.StatusCode.NOT_FOUND, "not served here"),
    (dict(messages=[{"role": "robot", "content": "x"}]), INVALID, "messages[0].role"),
    (dict(prompt="hi", messages=[{"role": "user", "content": "x"}]), INVALID, "exactly one of prompt"),
    (dict(prompt_token_ids=[1], messages=[{"role": "user", "content": "x"}]), INVALID, "exactly one of prompt"),
    (dict(prompt_token_ids=[5] * 600), grpc.StatusCode.OUT_OF_RANGE, "context"),
    (dict(prompt="hi", temperature=float("nan")), INVALID, "temperature"),
    (dict(prompt="hi", temperature=float("inf")), INVALID, "temperature"),
    (dict(prompt="hi", temperature=1.0, top_p=-0.5), INVALID, "top_p"),
    (dict(prompt="hi", k_max=0), grpc.StatusCode.OUT_OF_RANGE, "k_max"),
    (dict(prompt="hi", k_max=1000), grpc.StatusCode.OUT_OF_RANGE, "k_max"),
    (dict(prompt="hi", k=9, k_max=4, k_controller="cost"), grpc.StatusCode.OUT_OF_RANGE, "k_max"),
    (dict(prompt="hi", k_controller="oracle"), INVALID, "k_controller"),
    (dict(prompt="hi", draft_min_confidence=1.5), grpc.StatusCode.OUT_OF_RANGE, "draft_min_confidence"),
    (dict(prompt="hi", draft_min_confidence=float("nan")), grpc.StatusCode.OUT_OF_RANGE, "draft_min_confidence"),
    (dict(prompt="hi", draft="ngram:0"), INVALID, "draft must be"),
    (dict(prompt="hi", draft="model:"), INVALID, "draft must be"),
    (dict(prompt="hi", policy="typical", policy_params={"typical_epsilon": 2.0}), INVALID, "typical_epsilon"),
    (dict(prompt="hi", policy="exact", policy_params={"accept_threshold": 0.2}), INVALID, "accept_threshold"),
    (
        dict(prompt="hi", policy="topk-agree", temperature=1.0, top_k=2, policy_params={"agree_top_m": 3}),
        INVALID,
        "agree_top_m",
    ),
    (dict(prompt="hi", stop=["x"] * 100), INVALID, "stop"),
    (dict(prompt="hi", stop=[""]), INVALID, "stop"),
    (dict(prompt="hi", stop=["y" * 10_000]), INVALID, "stop"),
    (dict(prompt="hi", probs_encoding=9), INVALID, "probs_encoding"),
]


@pytest.mark.parametrize(("request_kwargs", "code", "message"), CASES, ids=[c[2] for c in CASES])
async def test_bad_requests_get_precise_statuses(tiny_stack, request_kwargs, code, message) -> None:
    async with SpecdecClient(tiny_stack.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.generate(**request_kwargs)
        assert info.value.code() == code
        assert message in (info.value.details() or "")
        ok = await client.generate(prompt="def add(a, b):", max_new_tokens=4)  # still serving
        assert len(ok.completions[0].token_ids) == 4


async def test_draft_with_another_vocabulary_is_refused(tiny_stack, tiny_target: Path, tiny_other_vocab: Path) -> None:
    async with SpecdecClient(tiny_stack.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.generate(prompt="def add(a, b):", max_new_tokens=4, draft=f"model:{tiny_other_vocab}")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = info.value.details() or ""
        assert str(tiny_other_vocab) in details and str(tiny_target) in details
        ok = await client.generate(prompt="def add(a, b):", max_new_tokens=4, draft="ngram")
        assert ok.completions[0].token_ids


async def test_unknown_draft_model_path_is_a_precondition_failure(tiny_stack, tmp_path: Path) -> None:
    async with SpecdecClient(tiny_stack.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.generate(prompt="hi", max_new_tokens=4, draft=f"model:{tmp_path / 'missing'}")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cannot load model" in (info.value.details() or "")


async def test_verifier_rejects_out_of_order_blocks(tiny_stack, tiny_target: Path) -> None:
    ids = load(str(tiny_target)).tokenizer.encode("def add(a, b):")
    verifier_port = tiny_stack.servers[0].port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{verifier_port}") as channel:
        call = verifier_pb2_grpc.VerifierStub(channel).Session()
        await call.write(verifier_pb2.VerifierRequest(open=verifier_pb2.OpenVerifierSession(prompt_token_ids=ids)))
        opened = await call.read()
        assert opened.opened.committed_length == len(ids)
        await call.write(verifier_pb2.VerifierRequest(verify=verifier_pb2.VerifyBlock(position=len(ids) + 3)))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "does not match the committed length" in (info.value.details() or "")


async def test_verify_before_open_is_refused(tiny_stack) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tiny_stack.servers[0].port}") as channel:
        call = verifier_pb2_grpc.VerifierStub(channel).Session()
        await call.write(verifier_pb2.VerifierRequest(verify=verifier_pb2.VerifyBlock(position=0)))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_oversize_request_is_refused_and_the_server_keeps_serving(tiny_stack) -> None:
    async with SpecdecClient(tiny_stack.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.generate(prompt="x" * (9 * 1024 * 1024), max_new_tokens=4)  # the limit is 8 MiB
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (info.value.details() or "")
        ok = await client.generate(prompt="def add(a, b):", max_new_tokens=4)
        assert len(ok.completions[0].token_ids) == 4
