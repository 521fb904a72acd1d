"""Malformed requests against the verifier's and the draft service's own APIs, table-driven: each gets its
precise status and a message naming the offending field, and a good session on the same server still works
afterwards. (The orchestrator's table is in test_errors.py.)"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from specdec.orchestrator.embedded import EmbeddedStack
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc, verifier_pb2, verifier_pb2_grpc
from tests.helpers import load

INVALID = grpc.StatusCode.INVALID_ARGUMENT
RANGE = grpc.StatusCode.OUT_OF_RANGE
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND
VOCAB = 320  # the tiny models' vocabulary (tests/helpers.py)
CONTEXT = 512  # their max_position_embeddings
PROMPT = [5, 6, 7, 8, 5, 6, 7]


@dataclass(frozen=True)
class Case:
    name: str
    messages: list[Any]  # written in order; the error must come before the stream ends
    code: grpc.StatusCode
    field: str  # must appear in the status details


def dense(values: list[float]) -> common_pb2.TokenDistribution:
    return common_pb2.TokenDistribution(dense_f32=struct.pack(f"<{len(values)}f", *values))


def one_hot(token: int, vocab: int = VOCAB) -> common_pb2.TokenDistribution:
    return dense([1.0 if i == token else 0.0 for i in range(vocab)])


def sparse(ids: list[int], probs: list[float]) -> common_pb2.TokenDistribution:
    return common_pb2.TokenDistribution(sparse=common_pb2.SparseDistribution(token_ids=ids, probs=probs))


# --- verifier --------------------------------------------------------------------------------------------


def v_open(prompt: list[int] | None = None, **fields: Any) -> verifier_pb2.VerifierRequest:
    sampling = fields.pop("sampling", None)
    policy_params = fields.pop("policy_params", None)
    msg = verifier_pb2.OpenVerifierSession(prompt_token_ids=PROMPT if prompt is None else prompt, **fields)
    if sampling is not None:
        msg.sampling.CopyFrom(common_pb2.SamplingParams(**sampling))
    if policy_params is not None:
        msg.policy_params.CopyFrom(common_pb2.PolicyParams(**policy_params))
    return verifier_pb2.VerifierRequest(open=msg)


def v_verify(position: int = len(PROMPT), tokens: list[int] | None = None, probs: list[Any] | None = None):
    block = verifier_pb2.VerifyBlock(position=position, step=1, draft_token_ids=tokens or [5, 6])
    block.draft_probs.extend(probs or [])
    return verifier_pb2.VerifierRequest(verify=block)


SAMPLING = {"temperature": 0.8, "seed": 1}
VERIFIER_CASES = [
    Case("no kind set", [verifier_pb2.VerifierRequest()], INVALID, "`open` or `verify`"),
    Case("verify before open", [v_verify()], PRECONDITION, "`open`"),
    Case("open twice", [v_open(), v_open()], PRECONDITION, "already open"),
    Case("empty prompt", [v_open([])], INVALID, "prompt_token_ids"),
    Case("prompt id outside vocabulary", [v_open([1, VOCAB])], INVALID, "prompt_token_ids"),
    Case("prompt id far outside vocabulary", [v_open([2**31])], INVALID, "prompt_token_ids"),
    Case("prompt longer than context", [v_open([5] * CONTEXT)], RANGE, "prompt"),
    Case("negative temperature", [v_open(sampling={"temperature": -0.5})], INVALID, "temperature"),
    Case("NaN temperature", [v_open(sampling={"temperature": float("nan")})], INVALID, "temperature"),
    Case("infinite temperature", [v_open(sampling={"temperature": float("inf")})], INVALID, "temperature"),
    Case("top_p above 1", [v_open(sampling={"temperature": 1.0, "top_p": 1.5})], INVALID, "top_p"),
    Case("negative top_p", [v_open(sampling={"temperature": 1.0, "top_p": -0.1})], INVALID, "top_p"),
    Case("unknown policy", [v_open(policy="magic")], INVALID, "policy"),
    Case("exact policy when sampling", [v_open(policy="exact", sampling=SAMPLING)], INVALID, "policy"),
    Case(
        "typical epsilon above 1",
        [v_open(policy="typical", policy_params={"typical_epsilon": 2.0})],
        INVALID,
        "typical_epsilon",
    ),
    Case(
        "typical negative delta",
        [v_open(policy="typical", policy_params={"typical_delta": -1.0})],
        INVALID,
        "typical_delta",
    ),
    Case(
        "threshold above 1",
        [v_open(policy="threshold", policy_params={"accept_threshold": 1.5})],
        INVALID,
        "accept_threshold",
    ),
    Case("block ahead of committed", [v_open(), v_verify(position=len(PROMPT) + 2)], PRECONDITION, "position"),
    Case("block behind committed", [v_open(), v_verify(position=1)], PRECONDITION, "position"),
    Case("draft id outside vocabulary", [v_open(), v_verify(tokens=[5, VOCAB + 1])], INVALID, "draft_token_ids"),
    Case("block past the context", [v_open([5] * (CONTEXT - 2)), v_verify(CONTEXT - 2, [5, 6, 7])], RANGE, "context"),
    Case("block too long", [v_open(), v_verify(tokens=[5] * 100)], RANGE, "draft_token_ids"),
    Case("draft_probs when greedy", [v_open(), v_verify(probs=[one_hot(5), one_hot(6)])], INVALID, "draft_probs"),
    Case(
        "draft_probs count mismatch",
        [v_open(sampling=SAMPLING), v_verify(probs=[one_hot(5)])],
        INVALID,
        "draft_probs",
    ),
    Case(
        "dense row of the wrong length",
        [v_open(sampling=SAMPLING), v_verify(probs=[one_hot(5, 10), one_hot(6, 10)])],
        INVALID,
        "draft_probs",
    ),
    Case(
        "negative probability",
        [v_open(sampling=SAMPLING), v_verify(tokens=[5], probs=[dense([-0.5, 1.5] + [0.0] * (VOCAB - 2))])],
        INVALID,
        "draft_probs",
    ),
    Case(
        "NaN probability",
        [v_open(sampling=SAMPLING), v_verify(tokens=[5], probs=[dense([float("nan")] * VOCAB)])],
        INVALID,
        "draft_probs",
    ),
    Case(
        "row not summing to 1",
        [v_open(sampling=SAMPLING), v_verify(tokens=[5], probs=[dense([0.5] + [0.0] * (VOCAB - 1))])],
        INVALID,
        "draft_probs",
    ),
    Case(
        "drafted token with q = 0",
        [v_open(sampling=SAMPLING), v_verify(tokens=[5], probs=[one_hot(6)])],
        INVALID,
        "draft_probs",
    ),
    Case(
        "sparse lengths differ",
        [v_open(sampling=SAMPLING), v_verify(tokens=[5], probs=[sparse([5, 6], [1.0])])],
        INVALID,
        "draft_probs",
    ),
    Case(
        "sparse id outside vocabulary",
        [v_open(sampling=SAMPLING), v_verify(tokens=[5], probs=[sparse([5, VOCAB], [0.5, 0.5])])],
        INVALID,
        "draft_probs",
    ),
    Case(
        "sparse duplicate ids",
        [v_open(sampling=SAMPLING), v_verify(tokens=[5], probs=[sparse([5, 5], [0.5, 0.5])])],
        INVALID,
        "draft_probs",
    ),
    Case(
        "distribution without encoding",
        [v_open(sampling=SAMPLING), v_verify(tokens=[5], probs=[common_pb2.TokenDistribution()])],
        INVALID,
        "draft_probs",
    ),
]


# --- draft -----------------------------------------------------------------------------------------------


def d_open(prompt: list[int] | None = None, **fields: Any) -> draft_pb2.DraftRequest:
    sampling = fields.pop("sampling", None)
    fields.setdefault("draft", "ngram")
    fields.setdefault("target_vocab_size", VOCAB)
    msg = draft_pb2.OpenDraftSession(prompt_token_ids=PROMPT if prompt is None else prompt, **fields)
    if sampling is not None:
        msg.sampling.CopyFrom(common_pb2.SamplingParams(**sampling))
    return draft_pb2.DraftRequest(open=msg)


def d_propose(position: int = len(PROMPT), max_tokens: int = 3, min_confidence: float = 0.0):
    msg = draft_pb2.Propose(position=position, step=1, max_tokens=max_tokens, min_confidence=min_confidence)
    return draft_pb2.DraftRequest(propose=msg)


def d_commit(position: int = len(PROMPT), tokens: list[int] | None = None) -> draft_pb2.DraftRequest:
    commit = draft_pb2.Commit(position=position, token_ids=[5] if tokens is None else tokens)
    return draft_pb2.DraftRequest(commit=commit)


def draft_cases(tiny_target: Path, tiny_other_vocab: Path, missing: Path) -> list[Case]:
    model = f"model:{tiny_target}"
    return [
        Case("no kind set", [draft_pb2.DraftRequest()], INVALID, "`open`, `propose` or `commit`"),
        Case("propose before open", [d_propose()], PRECONDITION, "`open`"),
        Case("commit before open", [d_commit(), d_propose()], PRECONDITION, "`open`"),
        Case("open twice", [d_open(), d_open()], PRECONDITION, "already open"),
        Case("empty prompt", [d_open([])], INVALID, "prompt_token_ids"),
        Case("prompt id outside vocabulary", [d_open([1, VOCAB])], INVALID, "prompt_token_ids"),
        Case("unknown draft kind", [d_open(draft="medusa-ish")], INVALID, "draft"),
        Case("empty draft name", [d_open(draft="")], INVALID, "draft"),
        Case("draft none", [d_open(draft="none")], INVALID, "draft"),
        Case("ngram size zero", [d_open(draft="ngram:0")], INVALID, "draft"),
        Case("ngram size not a number", [d_open(draft="ngram:x")], INVALID, "draft"),
        Case("model path missing", [d_open(draft=f"model:{missing}")], PRECONDITION, "cannot load model"),
        Case(
            "model with another vocabulary",
            [d_open(draft=f"model:{tiny_other_vocab}", target_vocab_fingerprint="not-this-one")],
            PRECONDITION,
            "vocabulary",
        ),
        Case("negative temperature", [d_open(sampling={"temperature": -1.0})], INVALID, "temperature"),
        Case("NaN temperature", [d_open(sampling={"temperature": float("nan")})], INVALID, "temperature"),
        Case("top_p above 1", [d_open(sampling={"temperature": 1.0, "top_p": 2.0})], INVALID, "top_p"),
        Case("unknown probs encoding", [d_open(draft=model, probs_encoding=7)], INVALID, "probs_encoding"),
        Case("propose ahead", [d_open(), d_propose(position=len(PROMPT) + 1)], PRECONDITION, "position"),
        Case("propose behind", [d_open(), d_propose(position=2)], PRECONDITION, "position"),
        Case("propose zero tokens", [d_open(), d_propose(max_tokens=0)], RANGE, "max_tokens"),
        Case("propose too many tokens", [d_open(), d_propose(max_tokens=10_000)], RANGE, "max_tokens"),
        Case("min_confidence above 1", [d_open(), d_propose(min_confidence=1.5)], RANGE, "min_confidence"),
        Case("negative min_confidence", [d_open(), d_propose(min_confidence=-0.5)], RANGE, "min_confidence"),
        Case("NaN min_confidence", [d_open(), d_propose(min_confidence=float("nan"))], RANGE, "min_confidence"),
        Case(
            "commit past committed",
            [d_open(), d_commit(position=len(PROMPT) + 3), d_propose()],
            PRECONDITION,
            "commit position",
        ),
        Case("commit id outside vocabulary", [d_open(), d_commit(tokens=[VOCAB]), d_propose()], INVALID, "token_ids"),
        Case("commit with no tokens", [d_open(), d_commit(tokens=[]), d_propose()], INVALID, "token_ids"),
        Case(
            "commit past a model draft's context",
            [d_open(draft=model), d_commit(tokens=[5] * CONTEXT), d_propose(len(PROMPT) + CONTEXT)],
            RANGE,
            "context",
        ),
        Case("prompt past a model draft's context", [d_open([5] * (CONTEXT + 1), draft=model)], RANGE, "context"),
        Case("model draft, other vocabulary size", [d_open(draft=model, target_vocab_size=10)], PRECONDITION, "vocab"),
    ]


# --- the runner ------------------------------------------------------------------------------------------


@pytest.fixture
async def stack(tiny_target: Path) -> AsyncIterator[EmbeddedStack]:
    async with EmbeddedStack(target_model=load(str(tiny_target)), device="cpu") as running:
        yield running


async def expect_failure(open_call: Callable[[], Any], case: Case) -> None:
    call = open_call()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        for message in case.messages:
            await call.write(message)
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    assert info.value.code() == case.code, info.value.details()
    assert case.field in (info.value.details() or ""), info.value.details()


async def refuse_all(open_call: Callable[[], Any], cases: list[Case], good_session: Callable[[], Any]) -> None:
    """Every case fails as expected, and after each a good session on the same server still works."""
    failures = []
    for case in cases:
        try:
            await expect_failure(open_call, case)
        except (AssertionError, pytest.fail.Exception) as exc:
            failures.append(f"{case.name}: {exc}")
        await good_session()
    assert not failures, "\n".join(failures)


async def test_verifier_refuses(stack: EmbeddedStack) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.servers[0].port}") as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)

        async def good_session() -> None:
            call = stub.Session()
            await call.write(v_open())
            assert (await call.read()).opened.committed_length == len(PROMPT)
            await call.write(v_verify())
            assert (await call.read()).verdict.committed_length > len(PROMPT)
            await call.done_writing()

        await refuse_all(stub.Session, VERIFIER_CASES, good_session)
    assert len(VERIFIER_CASES) >= 30


async def test_draft_service_refuses(
    stack: EmbeddedStack, tiny_target: Path, tiny_other_vocab: Path, tmp_path: Path
) -> None:
    cases = draft_cases(tiny_target, tiny_other_vocab, tmp_path / "missing")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.servers[1].port}") as channel:
        stub = draft_pb2_grpc.DraftStub(channel)

        async def good_session() -> None:
            call = stub.Session()
            await call.write(d_open())
            assert (await call.read()).opened.draft == "ngram"
            await call.write(d_propose())
            assert (await call.read()).chunk.last
            await call.done_writing()

        await refuse_all(stub.Session, cases, good_session)
    assert len(cases) >= 30
