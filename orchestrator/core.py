"""The orchestrator's core: validates a request, runs one speculative loop per sample, totals the stats.

It is the hub: one stream per session to the verifier and one to the draft service, over one channel per
peer. It needs no model weights: the target's tokenizer comes from the verifier.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import trace
from transformers import AutoTokenizer

from specdec import service
from specdec.draftspec import DraftSpec, parse_draft
from specdec.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from specdec.limits import (
    DEFAULT_DRAFT_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_QUEUED_REQUESTS,
    MAX_BLOCK_TOKENS,
)
from specdec.modeling import canonical_name, chat_prompt_ids, is_default_model
from specdec.orchestrator.admission import Admission
from specdec.orchestrator.cost_model import CostPriors
from specdec.orchestrator.failover import GuardedDraft
from specdec.orchestrator.k_control import make_controller
from specdec.orchestrator.loop import Delta, LoopStats, OnDelta, SampleResult, SampleSpec, run_sample
from specdec.orchestrator.metrics import OrchestratorMetrics
from specdec.orchestrator.streams import DraftStream, VerifierStream
from specdec.orchestrator.telemetry import describe_request, describe_result, request_span, session_span
from specdec.policies import LOSSY_POLICIES, policy_params_for, resolve_policy, resolve_policy_params
from specdec.sampling import SamplingConfig, derive_seed
from specdec.usage import UsageTracker
from specdec.v1 import common_pb2, draft_pb2_grpc, orchestrator_pb2, verifier_pb2, verifier_pb2_grpc

USAGE_TIMEOUT_S = 5.0  # GetUsage is a cheap read; a service slower than this is left out of the answer
MAX_COST_PRIORS = 256  # (draft, policy, sampling) combinations whose cost-model priors are kept


@dataclass
class Limits:
    """Server-side defaults and limits; proto3 zero values in a request fall back to these."""

    default_draft: str = "ngram"
    default_k: int = 4
    default_k_max: int = 8
    default_k_controller: str = "cost"
    default_draft_ahead: bool = True  # draft the next block while one is verified (GenerateRequest.draft_ahead)
    k_max: int = 32
    default_max_new_tokens: int = 128
    max_new_tokens: int = 4096
    max_num_samples: int = 64
    samples_in_flight: int = 8  # concurrent sessions per request
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS  # generating at once; more wait in the queue
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS  # waiting for a slot; beyond it, RESOURCE_EXHAUSTED
    draft_timeout_s: float = DEFAULT_DRAFT_TIMEOUT_S  # a slower propose fails the draft over to target-only
    draft_open_timeout_s: float = 300.0  # opening a model draft may load its weights first
    max_request_bytes: int = 8 * 1024 * 1024  # a larger GenerateRequest is refused with RESOURCE_EXHAUSTED
    max_stop_strings: int = 16
    max_stop_chars: int = 256  # per stop string


@dataclass
class TargetInfo:
    name: str
    vocab_size: int
    fingerprint: str
    eos_token_ids: frozenset[int]
    max_context: int
    tokenizer: Any
    weights_fingerprint: str = ""  # trained heads are checked against it
    hidden_size: int = 0


@dataclass
class GenerationRequest:
    """A validated request in domain terms."""

    prompt: str = ""
    prompt_token_ids: list[int] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    max_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    seed: int | None = None
    num_samples: int = 0
    stop: list[str] = field(default_factory=list)
    return_logprobs: bool = False
    draft: str = ""
    k: int | None = None
    policy: str = ""
    policy_params: dict[str, float] = field(default_factory=dict)  # lossy policies; empty: defaults
    k_controller: str = ""
    k_max: int | None = None
    draft_min_confidence: float = 0.0
    model: str = ""
    probs_encoding: common_pb2.ProbsEncoding = common_pb2.PROBS_ENCODING_UNSPECIFIED
    draft_ahead: bool | None = None  # None: the server's default (on)
    tree_nodes: int = 0  # token trees of up to this many tokens per step (lossless policies only); 0: chains
    deadline: float | None = None  # time.monotonic() by which the client wants the answer (gRPC deadline)
    trace_parent: Any = None  # the caller's OpenTelemetry context (from gRPC metadata or HTTP headers), if any


@dataclass
class GenerationResult:
    prompt_token_ids: list[int]
    samples: list[SampleResult]
    stats: LoopStats
    wall_ms: float
    model: str
    draft: str
    k: int
    policy: str
    seed: int
    k_controller: str
    started_at: float  # perf_counter() at the request's start

    @property
    def generated_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / (self.wall_ms / 1e3) if self.wall_ms > 0 else 0.0

    @property
    def time_to_first_token_ms(self) -> float:
        first = self.stats.first_token_at
        return 0.0 if first is None else (first - self.started_at) * 1e3


def stats_to_pb(result: GenerationResult) -> orchestrator_pb2.GenerationStats:
    """The request's GenerationStats, one definition for the gRPC and the HTTP API."""
    s = result.stats
    return orchestrator_pb2.GenerationStats(
        steps=s.steps,
        draft_tokens=s.draft_tokens,
        accepted_tokens=s.accepted_tokens,
        acceptance_rate=s.acceptance_rate,
        mean_accepted_length=s.mean_accepted_length,
        generated_tokens=result.generated_tokens,
        tokens_per_second=result.tokens_per_second,
        wall_ms=result.wall_ms,
        draft_ms=s.draft_ms,
        verify_ms=s.verify_ms,
        network_ms=s.network_ms,
        prefill_ms=s.prefill_ms,
        time_to_first_token_ms=result.time_to_first_token_ms,
        draft_calls=s.draft_calls,
        drafted_per_position=s.drafted_per_position,
        accepted_per_position=s.accepted_per_position,
        acceptance_per_position=s.acceptance_per_position,
        k_histogram=s.k_histogram(),
        mean_k=s.draft_tokens / s.steps if s.steps else 0.0,
        draft_failure=s.draft_failure,
        draft_ahead_hits=s.draft_ahead_hits,
        draft_ahead_misses=s.draft_ahead_misses,
    )


class OrchestratorCore:
    def __init__(
        self,
        verifier_address: str,
        draft_address: str | None,
        limits: Limits | None = None,
        security: service.Security | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.verifier_address = verifier_address
        self.draft_address = draft_address
        self._verifier_channel = service.channel(verifier_address, security)
        self._verifier = verifier_pb2_grpc.VerifierStub(self._verifier_channel)
        self._draft_channel = service.channel(draft_address, security) if draft_address else None
        self._draft = draft_pb2_grpc.DraftStub(self._draft_channel) if self._draft_channel else None
        self._target: TargetInfo | None = None
        self._target_lock = asyncio.Lock()
        self._cost_priors: dict[tuple[object, ...], CostPriors] = {}  # per draft, policy and sampling
        self.metrics = OrchestratorMetrics()
        self.live_requests = 0  # generating or queued; the Prometheus gauge and GetUsage read it
        self.metrics.live_requests.set_function(lambda: self.live_requests)
        self.admission = Admission(self.limits.max_concurrent_requests, self.limits.max_queued_requests)
        self.usage_tracker = UsageTracker("orchestrator", lambda: 0, lambda: self.live_requests)
        if draft_address is None:  # without a draft service the only possible default is target-only
            self.limits.default_draft = "none"
        parse_draft(self.limits.default_draft)

    async def close(self) -> None:
        await self._verifier_channel.close()
        if self._draft_channel is not None:
            await self._draft_channel.close()

    async def target(self) -> TargetInfo:
        """The verifier's model facts and tokenizer, fetched once."""
        async with self._target_lock:
            if self._target is None:
                info = await self._verifier.GetModelInfo(verifier_pb2.GetModelInfoRequest(include_tokenizer=True))
                self._target = TargetInfo(
                    name=info.name,
                    vocab_size=info.vocab_size,
                    fingerprint=info.vocab_fingerprint,
                    eos_token_ids=frozenset(info.eos_token_ids),
                    max_context=info.max_context,
                    tokenizer=_tokenizer_from_files(dict(info.tokenizer_files)),
                    weights_fingerprint=info.weights_fingerprint,
                    hidden_size=info.hidden_size,
                )
            return self._target

    async def usage(self, reset_peaks: bool) -> orchestrator_pb2.DeploymentUsage:
        """This process's usage, then the verifier's and the draft service's (each reads before it resets, and
        this one resets last: services sharing a process would otherwise read each other's reset peak)."""
        services = [self.usage_tracker.snapshot()]
        request = common_pb2.GetUsageRequest(reset_peaks=reset_peaks)
        stubs: list[Any] = [self._verifier, self._draft] if self._draft is not None else [self._verifier]
        for stub in stubs:
            try:
                services.append(await stub.GetUsage(request, timeout=USAGE_TIMEOUT_S))
            except grpc.aio.AioRpcError:
                continue  # a service that does not answer is left out, as the API says
        if reset_peaks:
            self.usage_tracker.reset_peaks()
        return orchestrator_pb2.DeploymentUsage(services=services)

    async def check(self, request: GenerationRequest) -> None:
        """Validate a request without generating (lets streaming endpoints fail before they start)."""
        self._plan(request, await self.target())

    async def generate(self, request: GenerationRequest, on_delta: OnDelta | None = None) -> GenerationResult:
        self.live_requests += 1
        try:
            with request_span(request) as span:
                async with self.admission:
                    result = await self._generate(request, on_delta, span)
                describe_result(span, result)
        except BaseException as exc:
            self.metrics.record_error(exc)
            raise
        finally:
            self.live_requests -= 1
        self.metrics.record(result.samples, result.draft, result.policy, result.started_at)
        return result

    async def _generate(
        self, request: GenerationRequest, on_delta: OnDelta | None, span: trace.Span
    ) -> GenerationResult:
        start = time.perf_counter()
        target = await self.target()
        specs, seed = self._plan(request, target)
        describe_request(span, request, specs, target.name)
        limiter = asyncio.Semaphore(self.limits.samples_in_flight)

        async def one(spec: SampleSpec) -> SampleResult:
            async with limiter:
                return await self._run_one(spec, target, on_delta, request.deadline)

        tasks = [asyncio.ensure_future(one(s)) for s in specs]
        try:
            samples = await asyncio.gather(*tasks)
        except BaseException:  # one sample failed or the request was cancelled: stop its siblings too
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        stats = LoopStats()
        for sample in samples:
            stats.merge(sample.stats)
        first = specs[0]
        return GenerationResult(
            prompt_token_ids=first.prompt_token_ids,
            samples=list(samples),
            stats=stats,
            wall_ms=(time.perf_counter() - start) * 1e3,
            model=target.name,
            draft=first.draft.name,
            k=first.k,
            policy=first.policy,
            seed=seed,
            k_controller=first.k_controller,
            started_at=start,
        )

    async def generate_stream(self, request: GenerationRequest) -> AsyncGenerator[Delta | GenerationResult, None]:
        """Deltas as tokens are committed, then the whole result. Closing the iterator early (a client that
        went away) cancels the generation, whose session streams then free the KV caches on every service.
        Consume it inside `contextlib.aclosing` so that happens at once."""
        deltas: asyncio.Queue[Delta] = asyncio.Queue()
        task = asyncio.ensure_future(self.generate(request, deltas.put))
        try:
            while not (task.done() and deltas.empty()):
                getter = asyncio.ensure_future(deltas.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            yield task.result()
        finally:
            task.cancel()

    async def _run_one(
        self, spec: SampleSpec, target: TargetInfo, on_delta: OnDelta | None, deadline: float | None
    ) -> SampleResult:
        """One completion over its own session streams. The client's remaining time goes downstream as the
        streams' deadline; a failure or cancellation cancels both streams at once (the services free their
        sessions when a stream ends), a normal end half-closes them."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        draft_stub = self._draft if spec.draft.kind != "none" else None
        with (
            session_span("Verifier", spec.index) as verifier_md,
            session_span("Draft", spec.index, draft_stub is not None) as draft_md,
        ):
            verifier = VerifierStream(self._verifier, timeout, verifier_md)
            stream = DraftStream(draft_stub, timeout, draft_md) if draft_stub is not None else None
            draft = GuardedDraft(stream, self.limits.draft_open_timeout_s, self.limits.draft_timeout_s)
            try:
                result = await run_sample(spec, verifier, draft, target.tokenizer, on_delta)
            except BaseException:
                verifier.cancel()
                draft.cancel()
                raise
            await asyncio.gather(verifier.close(), draft.close())
        return result

    def _plan(self, request: GenerationRequest, target: TargetInfo) -> tuple[list[SampleSpec], int]:
        """Validate the request against the target and limits; one SampleSpec per completion."""
        limits = self.limits
        if (
            request.model
            and canonical_name(request.model) != target.name
            and not (is_default_model(request.model) and is_default_model(target.name))
        ):
            raise NotFound(f"model {request.model!r} is not served here; this server runs {target.name!r}")
        prompt_ids = self._prompt_ids(request, target)
        max_new = request.max_new_tokens or limits.default_max_new_tokens
        if not 0 < max_new <= limits.max_new_tokens:
            raise OutOfRange(f"max_new_tokens must be in [1, {limits.max_new_tokens}], got {max_new}")
        if len(prompt_ids) >= target.max_context:
            raise OutOfRange(f"prompt has {len(prompt_ids)} tokens; the target's context is {target.max_context}")
        self._check_stop(request.stop)
        num_samples = request.num_samples or 1
        if not 0 < num_samples <= limits.max_num_samples:
            raise OutOfRange(f"num_samples must be in [1, {limits.max_num_samples}], got {num_samples}")
        draft = parse_draft(request.draft or limits.default_draft)
        if draft.kind != "none" and self._draft is None:
            raise FailedPrecondition(f"draft {draft.name!r} needs a draft service; none is configured")
        k = limits.default_k if request.k is None else request.k
        if not 0 <= k <= limits.k_max:
            raise OutOfRange(f"k must be in [0, {limits.k_max}], got {k}")
        k_max = limits.default_k_max if request.k_max is None else request.k_max
        if not 1 <= k_max <= limits.k_max:
            raise OutOfRange(f"k_max must be in [1, {limits.k_max}], got {k_max}")
        base = SamplingConfig.from_wire(request.temperature, request.top_k, request.top_p, 0)
        policy = resolve_policy(request.policy, base)
        controller = request.k_controller or self._default_controller(draft, base, request.seed, policy)
        make_controller(controller, k, k_max)  # validates the name
        if controller != "fixed" and k > k_max:
            raise OutOfRange(f"k (the starting K) must be <= k_max ({k_max}), got {k}")
        min_confidence = request.draft_min_confidence or (0.5 if controller == "confidence" else 0.0)
        if not 0.0 <= min_confidence <= 1.0:
            raise OutOfRange(f"draft_min_confidence must be in [0, 1], got {min_confidence}")
        if not 0 <= request.tree_nodes <= MAX_BLOCK_TOKENS:
            raise OutOfRange(f"tree_nodes must be in [0, {MAX_BLOCK_TOKENS}], got {request.tree_nodes}")
        if request.tree_nodes and policy in LOSSY_POLICIES:
            raise InvalidArgument(
                f"tree_nodes needs a lossless policy (exact or rejection: token trees are verified losslessly); "
                f"got {policy!r}"
            )
        if draft.kind == "none":
            k = 0
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        policy_params = policy_params_for(policy, resolve_policy_params(request.policy_params, policy, base))
        specs = [
            SampleSpec(
                index=i,
                prompt_token_ids=prompt_ids,
                sampling=SamplingConfig(base.temperature, base.top_k, base.top_p, derive_seed(seed, i, "sample")),
                policy=policy,
                policy_params=policy_params,
                k_controller=controller,
                k_max=k_max,
                draft_min_confidence=min_confidence,
                draft=draft,
                k=k,
                max_new_tokens=max_new,
                stop=list(request.stop),
                eos_token_ids=target.eos_token_ids,
                max_context=target.max_context,
                return_logprobs=request.return_logprobs,
                probs_encoding=request.probs_encoding,
                target_name=target.name,
                target_fingerprint=target.fingerprint,
                target_vocab_size=target.vocab_size,
                target_weights_fingerprint=target.weights_fingerprint,
                target_hidden_size=target.hidden_size,
                cost_priors=self._priors_for((draft.name, policy, base)),
                draft_ahead=limits.default_draft_ahead if request.draft_ahead is None else request.draft_ahead,
                tree_nodes=request.tree_nodes,
            )
            for i in range(num_samples)
        ]
        return specs, seed

    def _priors_for(self, key: tuple[object, ...]) -> CostPriors:
        """The `cost` controller's shared priors for one (draft, policy, sampling); the least recently
        created go first when there are too many."""
        if key not in self._cost_priors and len(self._cost_priors) >= MAX_COST_PRIORS:
            del self._cost_priors[next(iter(self._cost_priors))]
        return self._cost_priors.setdefault(key, CostPriors())

    def _default_controller(self, draft: DraftSpec, sampling: SamplingConfig, seed: int | None, policy: str) -> str:
        """The server's default, except where it would make a reproducible completion vary with measured
        times (`cost` places blocks by them): with a LOSSY policy what is committed depends on what was
        verified, and with a sampling model draft (it sends q) on where blocks start. (Lossless prompt lookup
        is verified position by position against the target's own draw: its output never depends on K.)"""
        if policy in LOSSY_POLICIES or (seed is not None and draft.uses_model and not sampling.greedy):
            return "fixed"
        return self.limits.default_k_controller

    def _check_stop(self, stop: list[str]) -> None:
        limits = self.limits
        if len(stop) > limits.max_stop_strings:
            raise InvalidArgument(f"stop has {len(stop)} strings; at most {limits.max_stop_strings} are allowed")
        for i, text in enumerate(stop):
            if not 0 < len(text) <= limits.max_stop_chars:
                raise InvalidArgument(f"stop[{i}] must have 1 to {limits.max_stop_chars} characters, got {len(text)}")

    @staticmethod
    def _prompt_ids(request: GenerationRequest, target: TargetInfo) -> list[int]:
        given = [bool(request.prompt), bool(request.prompt_token_ids), bool(request.messages)]
        if sum(given) != 1:
            raise InvalidArgument("set exactly one of prompt, prompt_token_ids and messages")
        tokenizer = target.tokenizer
        if request.prompt_token_ids:
            bad = [t for t in request.prompt_token_ids if not 0 <= t < target.vocab_size]
            if bad:
                raise InvalidArgument(
                    f"prompt_token_ids has ids outside the vocabulary [0, {target.vocab_size}): {bad[:5]}"
                )
            return list(request.prompt_token_ids)
        if request.messages:
            for i, m in enumerate(request.messages):
                if m["role"] not in ("system", "user", "assistant"):
                    raise InvalidArgument(f"messages[{i}].role must be system, user or assistant")
            if not tokenizer.chat_template:
                raise FailedPrecondition(f"target {target.name} has no chat template; send a prompt instead")
            return chat_prompt_ids(tokenizer, request.messages)
        ids = list(tokenizer.encode(request.prompt))
        if not ids:
            raise InvalidArgument("prompt tokenizes to no tokens")
        return ids


def _tokenizer_from_files(files: dict[str, bytes]) -> Any:
    if not files:
        raise FailedPrecondition("the verifier sent no tokenizer files")
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / Path(name).name).write_bytes(data)
        return AutoTokenizer.from_pretrained(tmp)
