"""The speculative loop for one completion: propose -> verify -> commit, until EOS, a stop string or the
token limit. Positions are the shared language: block at n = draft tokens for n .., verdict = committed
tokens from n on; both services roll back to the committed prefix on their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from specdec.draftspec import DraftSpec
from specdec.orchestrator.cost_model import CostPriors
from specdec.orchestrator.failover import GuardedDraft
from specdec.orchestrator.k_control import KController, StepObservation, make_controller
from specdec.orchestrator.streams import DraftBlock, VerifierStream
from specdec.orchestrator.telemetry import record_step, step_started
from specdec.orchestrator.text import OutputText
from specdec.sampling import SamplingConfig
from specdec.v1 import common_pb2, draft_pb2, verifier_pb2
from specdec.wire import policy_params_to_pb, sampling_to_pb


def _add_counts(counts: list[int], positions: int) -> None:
    """counts[i] += 1 for i < positions, growing the list as needed."""
    _pad(counts, positions)
    for i in range(positions):
        counts[i] += 1


def _pad(counts: list[int], length: int) -> None:
    counts.extend([0] * (length - len(counts)))


def _add_elementwise(counts: list[int], other: list[int]) -> None:
    _pad(counts, len(other))
    for i, n in enumerate(other):
        counts[i] += n


@dataclass
class LoopStats:
    steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    committed_tokens: int = 0  # sum over verdicts of accepted + 1 (before any truncation)
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    network_ms: float = 0.0
    prefill_ms: float = 0.0

    k_history: list[int] = field(default_factory=list)  # draft tokens verified at each step (the K used)
    draft_calls: int = 0  # steps that called the draft service
    drafted_per_position: list[int] = field(default_factory=list)  # [i]: steps that verified a draft at i
    accepted_per_position: list[int] = field(default_factory=list)  # [i]: steps that accepted the draft at i
    deliveries: list[float] = field(default_factory=list)  # perf_counter() of each step that emitted tokens
    draft_failure: str = ""  # why the draft failed over to target-only decoding, if it did

    def record(self, step: StepObservation, committed: int) -> None:
        self.steps += 1
        self.draft_tokens += step.drafted
        self.accepted_tokens += step.accepted
        self.draft_calls += step.k > 0
        _add_counts(self.drafted_per_position, step.drafted)
        _add_counts(self.accepted_per_position, step.accepted)
        _pad(self.accepted_per_position, len(self.drafted_per_position))
        self.committed_tokens += committed
        self.draft_ms += step.draft_ms
        self.verify_ms += step.verify_ms
        self.network_ms += step.draft_network_ms + step.verify_network_ms
        self.k_history.append(step.drafted)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens committed per step, the corrected/bonus token included."""
        return self.committed_tokens / self.steps if self.steps else 0.0

    @property
    def first_token_at(self) -> float | None:
        """perf_counter() of the first token delivered (of any completion, once merged)."""
        return self.deliveries[0] if self.deliveries else None

    @property
    def acceptance_per_position(self) -> list[float]:
        """[i]: the share of steps verifying a draft at position i that accepted it."""
        return [
            a / d if d else 0.0 for a, d in zip(self.accepted_per_position, self.drafted_per_position, strict=False)
        ]

    def k_histogram(self) -> list[int]:
        """[K]: steps that verified K draft tokens."""
        counts = [0] * (max(self.k_history, default=0) + 1)
        for k in self.k_history:
            counts[k] += 1
        return counts

    def merge(self, other: LoopStats) -> None:
        for name in ("steps", "draft_tokens", "accepted_tokens", "committed_tokens", "draft_calls"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("draft_ms", "verify_ms", "network_ms", "prefill_ms"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.k_history.extend(other.k_history)
        _add_elementwise(self.drafted_per_position, other.drafted_per_position)
        _add_elementwise(self.accepted_per_position, other.accepted_per_position)
        self.deliveries = sorted(self.deliveries + other.deliveries)
        self.draft_failure = self.draft_failure or other.draft_failure


@dataclass
class SampleSpec:
    """Everything one completion needs; built and validated by the orchestrator core."""

    index: int
    prompt_token_ids: list[int]
    sampling: SamplingConfig
    policy: str
    draft: DraftSpec
    k: int
    max_new_tokens: int
    stop: list[str]
    eos_token_ids: frozenset[int]
    max_context: int
    return_logprobs: bool
    policy_params: dict[str, float] = field(default_factory=dict)
    k_controller: str = "fixed"
    k_max: int = 8
    draft_min_confidence: float = 0.0  # sent with each propose (the "confidence" controller)
    probs_encoding: common_pb2.ProbsEncoding = common_pb2.PROBS_ENCODING_UNSPECIFIED
    target_name: str = ""
    target_fingerprint: str = ""
    target_vocab_size: int = 0
    cost_priors: CostPriors | None = None  # what earlier sessions taught the `cost` controller


@dataclass
class SampleResult:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float]
    stats: LoopStats = field(default_factory=LoopStats)


@dataclass
class Delta:
    index: int
    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str = ""


OnDelta = Callable[[Delta], Awaitable[None]]


def block_size(spec: SampleSpec, wanted: int, generated: int, committed_length: int) -> int:
    """The controller's K for this step, capped so that accepted + 1 never passes max_new_tokens or the context."""
    if spec.draft.kind == "none":
        return 0
    return max(0, min(wanted, spec.max_new_tokens - generated - 1, spec.max_context - committed_length - 1))


def finish_check(
    spec: SampleSpec, new_tokens: list[int], generated_before: int, committed_length: int
) -> tuple[list[int], str]:
    """Cut a step's committed tokens at EOS, max_new_tokens or the model's context.

    Returns (kept tokens, finish reason or ''). committed_length counts prompt + output after this step."""
    kept: list[int] = []
    for token in new_tokens:
        kept.append(token)
        if token in spec.eos_token_ids:
            return kept, "stop"
        if generated_before + len(kept) >= spec.max_new_tokens:
            return kept, "length"
    if committed_length >= spec.max_context:  # no room for another token
        return kept, "length"
    return kept, ""


async def open_sessions(spec: SampleSpec, verifier: VerifierStream, draft: GuardedDraft) -> float:
    """Open the verifier session (prefill) and the draft session concurrently; returns the prefill time."""
    sampling = sampling_to_pb(spec.sampling)
    opening: list[Coroutine[Any, Any, Any]] = [
        verifier.open(
            verifier_pb2.OpenVerifierSession(
                prompt_token_ids=spec.prompt_token_ids,
                sampling=sampling,
                policy=spec.policy,
                policy_params=policy_params_to_pb(spec.policy_params),
                return_logprobs=spec.return_logprobs,
                session_id=str(spec.index),
            )
        )
    ]
    if draft.stream is not None:
        opening.append(
            draft.open(
                draft_pb2.OpenDraftSession(
                    prompt_token_ids=spec.prompt_token_ids,
                    draft=spec.draft.name,
                    sampling=sampling,
                    target_name=spec.target_name,
                    target_vocab_fingerprint=spec.target_fingerprint,
                    target_vocab_size=spec.target_vocab_size,
                    probs_encoding=spec.probs_encoding,
                    session_id=str(spec.index),
                )
            )
        )
    opened = await asyncio.gather(*opening)
    return float(opened[0].prefill_ms)


@dataclass
class UnsentCommit:
    """Committed tokens the draft service has not been told about: they go with the next draft call, so a
    step without one (K = 0) costs the draft service nothing. Commits are contiguous, so they merge."""

    position: int = 0
    tokens: list[int] = field(default_factory=list)

    def add(self, position: int, tokens: list[int]) -> None:
        if not self.tokens:
            self.position = position
        self.tokens.extend(tokens)

    def take(self) -> tuple[int, list[int]] | None:
        """(position, tokens) to send with the next draft call, or None; they count as sent from now on."""
        if not self.tokens:
            return None
        pending, self.tokens = (self.position, self.tokens), []
        return pending


async def speculative_step(
    spec: SampleSpec, position: int, step: int, k: int, verifier: VerifierStream, draft: GuardedDraft,
    stats: LoopStats, controller: KController, unsent: UnsentCommit,
) -> tuple[verifier_pb2.Verdict, StepObservation]:  # fmt: skip
    """Propose up to k tokens from committed length `position`, let the controller trim the proposal,
    verify the rest in one pass, record the timings. A draft that fails over leaves an empty block."""
    started_ns = step_started()
    block = verified = DraftBlock()
    draft_network_ms = 0.0
    if draft.stream is not None and k > 0:
        proposal = await draft.propose(unsent.take(), position, step, k, spec.draft_min_confidence)
        if proposal is not None:
            block = proposal
            draft_network_ms = max(0.0, block.round_trip_ms - block.draft_ms)
            verified = block.truncated(controller.trim(block.tokens, block.match_length, position))
    proposed = len(block.tokens)
    timed = await verifier.verify(position, step, verified.tokens, verified.probs)
    verdict = timed.verdict
    compute_ms = verdict.forward_ms + verdict.accept_ms
    observation = StepObservation(
        k=k if draft.stream is not None else 0,
        proposed=proposed,
        drafted=len(verified.tokens),
        accepted=verdict.num_accepted,
        draft_ms=block.draft_ms,
        verify_ms=compute_ms,
        draft_network_ms=draft_network_ms,
        verify_network_ms=max(0.0, timed.round_trip_ms - compute_ms),
        match_length=block.match_length,
        position=position,
        committed=tuple(verdict.token_ids),
    )
    stats.record(observation, len(verdict.token_ids))
    record_step(spec, step, observation, len(verdict.token_ids), started_ns)
    return verdict, observation


async def run_sample(
    spec: SampleSpec,
    verifier: VerifierStream,
    draft: GuardedDraft,
    tokenizer: Any,
    on_delta: OnDelta | None = None,
) -> SampleResult:
    """Generate one completion: steps until EOS, a stop string or max_new_tokens."""
    stats = LoopStats()
    stats.prefill_ms = await open_sessions(spec, verifier, draft)
    text = OutputText(tokenizer, spec.stop)
    position = len(spec.prompt_token_ids)  # committed length
    logprobs: list[float] = []
    controller = make_controller(
        spec.k_controller, spec.k, spec.k_max, spec.cost_priors, free_draft=not spec.draft.uses_model
    )
    unsent = UnsentCommit()
    finish = ""
    while not finish:
        k = block_size(spec, controller.next_k(), len(text.tokens), position)
        verdict, observation = await speculative_step(
            spec, position, stats.steps, k, verifier, draft, stats, controller, unsent
        )
        controller.observe(observation)
        committed = list(verdict.token_ids)  # accepted drafts + the target's token, positions position ..

        before = len(text.tokens)
        kept, finish = finish_check(spec, committed, before, position + len(committed))
        delta_text = text.add(kept)
        if text.stopped:
            finish = "stop"
        elif finish:
            delta_text += text.flush()
        kept = text.tokens[before:]  # a stop string may have trimmed the step's tokens
        step_logprobs = list(verdict.logprobs)[: len(kept)]
        logprobs.extend(step_logprobs)
        if kept:
            stats.deliveries.append(time.perf_counter())
        if on_delta is not None and (kept or finish):
            await on_delta(Delta(spec.index, kept, delta_text, step_logprobs, finish))
        if draft.stream is not None:
            unsent.add(position, committed)
        position += len(committed)
    stats.draft_failure = draft.failure

    return SampleResult(spec.index, text.tokens, text.emitted, finish, logprobs, stats)
