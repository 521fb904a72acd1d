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
from specdec.orchestrator.streams import DraftBlock, SentPropose, VerifierStream
from specdec.orchestrator.telemetry import record_step, step_started
from specdec.orchestrator.text import OutputText
from specdec.sampling import SamplingConfig
from specdec.v1 import common_pb2, draft_pb2, verifier_pb2
from specdec.wire import merge_hidden, policy_params_to_pb, resolve_shared, sampling_to_pb


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
    draft_calls: int = 0  # proposals asked of the draft service (draft-ahead ones included)
    drafted_per_position: list[int] = field(default_factory=list)  # [i]: steps that verified a draft at i
    accepted_per_position: list[int] = field(default_factory=list)  # [i]: steps that accepted the draft at i
    deliveries: list[float] = field(default_factory=list)  # perf_counter() of each step that emitted tokens
    draft_failure: str = ""  # why the draft failed over to target-only decoding, if it did
    draft_ahead_hits: int = 0  # steps whose block was drafted while the previous one was verified
    draft_ahead_misses: int = 0  # blocks drafted ahead and thrown away (the guess was wrong)

    def record(self, step: StepObservation, committed: int) -> None:
        self.steps += 1
        self.draft_tokens += step.drafted
        self.accepted_tokens += step.accepted
        _add_counts(self.drafted_per_position, step.depth or step.drafted)  # a tree drafts `depth` positions
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
        for name in ("steps", "draft_tokens", "accepted_tokens", "committed_tokens", "draft_calls",
                     "draft_ahead_hits", "draft_ahead_misses"):  # fmt: skip
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
    target_weights_fingerprint: str = ""
    target_hidden_size: int = 0
    cost_priors: CostPriors | None = None  # what earlier sessions taught the `cost` controller
    draft_ahead: bool = False  # draft the next block while this one is verified (see `speculative_step`)
    tree_nodes: int = 0  # ask for token trees of up to this many tokens, k deep (lossless policies only); 0: chains


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
                return_hidden_states=spec.draft.needs_hidden_states,
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
                    target_weights_fingerprint=spec.target_weights_fingerprint,
                    target_hidden_size=spec.target_hidden_size,
                )
            )
        )
    opened = await asyncio.gather(*opening)
    return float(opened[0].prefill_ms)


@dataclass
class UnsentCommit:
    """Committed tokens the draft service has not been told about: they go with the next draft call, so a
    step without one (K = 0) costs the draft service nothing. Commits are contiguous, so they merge, and so do
    the verdicts' hidden states that go with them (trained heads draft from those)."""

    position: int = 0
    tokens: list[int] = field(default_factory=list)
    hidden: common_pb2.HiddenStates | None = None

    def add(self, position: int, tokens: list[int], hidden: common_pb2.HiddenStates | None = None) -> None:
        if not self.tokens:
            self.position = position
        self.tokens.extend(tokens)
        if hidden is not None:
            self.hidden = hidden if self.hidden is None else merge_hidden(self.hidden, hidden)

    def take(self) -> draft_pb2.Commit | None:
        """The commit to send with the next draft call, or None; it counts as sent from now on."""
        if not self.tokens:
            return None
        commit = draft_pb2.Commit(position=self.position, token_ids=self.tokens, hidden_states=self.hidden)
        self.tokens, self.hidden = [], None
        return commit


@dataclass
class Ahead:
    """A block drafted while the previous one was verified: usable when that block was accepted whole and the
    draft's guess of the target's next token (the block's first token) was the token the target chose."""

    position: int  # where the next step starts if the guess holds
    block: DraftBlock  # the drafted tokens after the guess


MIN_AHEAD_HIT_RATE = 0.3  # below it, draft-ahead costs the draft service more than it hides
AHEAD_PROBE_EVERY = 16  # steps between retries while draft-ahead is paused


@dataclass
class AheadPolicy:
    """When to draft ahead. A wrong guess costs the draft service a block nobody uses (it serves a session's
    messages in order, so the next proposal waits behind it); so after a few tries the loop keeps asking only
    while at least MIN_AHEAD_HIT_RATE of recent guesses held, and retries now and then."""

    enabled: bool
    hits: float = 0.0  # decayed counts of recent guesses that held / failed
    misses: float = 0.0
    paused_steps: int = 0

    def should_ask(self) -> bool:
        if not self.enabled:
            return False
        tries = self.hits + self.misses
        if tries < 4 or self.hits >= MIN_AHEAD_HIT_RATE * tries:
            return True
        self.paused_steps += 1
        if self.paused_steps < AHEAD_PROBE_EVERY:
            return False
        self.paused_steps = 0
        return True

    def record(self, hit: bool) -> None:
        self.hits, self.misses = 0.9 * self.hits + hit, 0.9 * self.misses + (not hit)


async def speculative_step(
    spec: SampleSpec, position: int, step: int, k: int, verifier: VerifierStream, draft: GuardedDraft,
    stats: LoopStats, controller: KController, unsent: UnsentCommit, ahead: Ahead | None = None,
    ahead_k: int = 0,
) -> tuple[verifier_pb2.Verdict, StepObservation, tuple[SentPropose, int] | None]:  # fmt: skip
    """Propose up to k tokens from committed length `position` (or take the block drafted ahead), let the
    controller trim the proposal, verify the rest in one pass, record the timings. A draft that fails over
    leaves an empty block.

    Draft-ahead (`ahead_k` > 0): the block is sent to the verifier and, before its verdict is awaited, the draft
    is asked for the block after it, assuming it is accepted whole: [its guess of the target's token, up to
    ahead_k more]. Returned with the number of tokens it assumed, for `collect_ahead` once the verdict is in."""
    started_ns = step_started()
    block = verified = DraftBlock()
    draft_network_ms = 0.0
    if draft.stream is not None and k > 0:
        proposal = ahead.block if ahead is not None else None
        if proposal is None:
            stats.draft_calls += 1
            proposal = await draft.propose(unsent.take(), position, step, k, spec.draft_min_confidence, spec.tree_nodes)
        if proposal is not None:
            # a tree (at most tree_nodes tokens, k deep) or a chain, as the controller trims it
            tree = bool(proposal.parents)
            block = proposal.truncated(spec.tree_nodes if tree else k)
            draft_network_ms = max(0.0, block.round_trip_ms - block.draft_ms)
            if tree and block.probs:  # a sampled tree: trimming it by its nodes' own draws would bias it
                verified = block
            elif tree:
                verified = block.subtree(controller.trim_tree(
                    block.tokens, block.parents, block.path_logprobs, position, block.round_trip_ms))  # fmt: skip
            else:
                verified = block.truncated(controller.trim(block.tokens, block.match_length, position))
    proposed = len(block.tokens)
    sent_at = await verifier.send_verify(position, step, verified.tokens, verified.probs, verified.parents)
    asked = None
    if ahead_k > 0 and draft.stream is not None and k > 0:  # drafting while the target verifies
        sent = await draft.propose_ahead(
            unsent.take(), position, step + 1, ahead_k + 1, spec.draft_min_confidence, verified.tokens
        )
        asked = (sent, len(verified.tokens)) if sent is not None else None
        stats.draft_calls += sent is not None
    timed = await verifier.read_verdict(position, sent_at)
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
        depth=tree_depth(verified.parents),
    )
    stats.record(observation, len(verdict.token_ids))
    record_step(spec, step, observation, len(verdict.token_ids), started_ns)
    return verdict, observation, asked


def tree_depth(parents: list[int]) -> int:
    """The depth of a token tree (the longest path), 0 for a chain (no parents)."""
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return max(depths, default=0)


async def collect_ahead(
    draft: GuardedDraft, asked: tuple[SentPropose, int], verdict: verifier_pb2.Verdict, stats: LoopStats,
    policy: AheadPolicy,
) -> Ahead | None:  # fmt: skip
    """The block drafted ahead, if the verdict confirms what it assumed; else it is dropped unread."""
    sent, assumed = asked
    if verdict.num_accepted < assumed:
        draft.drop(sent)  # skipped (with no wait) when the next block is read
        stats.draft_ahead_misses += 1
        policy.record(hit=False)
        return None
    waited = time.perf_counter()
    block = await draft.collect(sent)
    if block is None:  # the draft failed over meanwhile
        return None
    hit = bool(block.tokens) and block.tokens[0] == verdict.token_ids[-1]
    policy.record(hit)
    if not hit:
        stats.draft_ahead_misses += 1
        return None
    stats.draft_ahead_hits += 1
    # The draft's time and round trip overlapped the verify pass; what is left is the wait for its last chunk.
    rest = DraftBlock(
        block.tokens[1:], resolve_shared(block.probs)[1:], 0.0, (time.perf_counter() - waited) * 1e3, block.match_length
    )
    return Ahead(verdict.position + len(verdict.token_ids), rest)


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
        spec.k_controller,
        spec.k,
        spec.k_max,
        spec.cost_priors,
        free_draft=not spec.draft.uses_model,
        trees=spec.tree_nodes > 0,
    )
    unsent = UnsentCommit()
    finish = ""
    ahead: Ahead | None = None
    # Trained heads draft from the target's hidden states, which arrive only with the verdict: no guessing ahead.
    ahead_policy = AheadPolicy(spec.draft_ahead and not spec.draft.needs_hidden_states)
    while not finish:
        generated = len(text.tokens)
        k = block_size(spec, controller.next_k(), generated, position)
        ahead_k = 0
        if k > 0 and ahead_policy.should_ask():  # the next block, if this one is accepted whole (k + 1 tokens)
            ahead_k = block_size(spec, k, generated + k + 1, position + k + 1)
        verdict, observation, asked = await speculative_step(
            spec, position, stats.steps, k, verifier, draft, stats, controller, unsent, ahead, ahead_k
        )
        ahead = None
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
        if asked is not None:
            if finish:
                draft.drop(asked[0])  # the request is done: never wait for a block nobody will use
            else:
                ahead = await collect_ahead(draft, asked, verdict, stats, ahead_policy)
        if draft.stream is not None:
            unsent.add(position, committed, verdict.hidden_states if verdict.HasField("hidden_states") else None)
        position += len(committed)
    stats.draft_failure = draft.failure

    return SampleResult(spec.index, text.tokens, text.emitted, finish, logprobs, stats)
