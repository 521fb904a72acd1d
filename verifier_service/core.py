"""The verifier's core, free of gRPC: sessions over the target model, one forward pass per block.

Invariant between verdicts: the session's KV cache covers committed positions only, and at least the last
committed token is uncached, so a verify pass feeds [uncached committed tail, d_1 .. d_K] and reads the
K+1 next-token distributions for positions n .. n+K.

Token trees (lossless policies only: exact, rejection): the K draft tokens form a tree below the last committed
token (each with a parent index); the pass feeds them in tree order with an ancestor mask, a tree kernel picks the
accepted path (greedy: the target's argmax; sampling: recursive rejection sampling, which needs each node's q),
and `compact` moves the path's cache entries to positions n .. before the rest is dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch

from specdec import kernels
from specdec.batched import ExtendJob, extend_many, supports_batching
from specdec.errors import FailedPrecondition, InvalidArgument, OutOfRange
from specdec.kvcache import CachedSequence, ForwardOutput
from specdec.limits import MAX_BLOCK_TOKENS
from specdec.modeling import LoadedModel, on_stream, side_stream
from specdec.policies import LOSSY_POLICIES, resolve_policy, resolve_policy_params
from specdec.sampling import (
    SamplingConfig,
    draw_acceptance_randoms,
    draw_tree_randoms,
    logits_to_probs,
    make_generator,
)
from specdec.static_cache import Capture, GraphOptions, GraphRunner, KVSequence, StaticSequence, cuda_capture

if TYPE_CHECKING:
    from specdec.verifier_service.batcher import VerifyRequest

log = logging.getLogger(__name__)
ACCEPTED, REJECTED, SKIPPED = "accepted", "rejected", "skipped"


@dataclass
class SessionOptions:
    prompt_token_ids: list[int]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    policy: str = ""
    policy_params: dict[str, float] = field(default_factory=dict)  # lossy policies; empty: defaults
    return_logprobs: bool = False
    return_hidden_states: bool = False


@dataclass
class VerifyOutcome:
    num_accepted: int
    token_ids: list[int]  # accepted draft tokens + recovered/bonus token
    outcomes: list[str]  # one per draft token: accepted / rejected / skipped
    bonus: bool
    committed_length: int
    forward_ms: float
    accept_ms: float
    logprobs: list[float]
    hidden_start: int = 0
    hidden: torch.Tensor | None = None  # [positions, H] for committed positions hidden_start ..
    accepted_nodes: list[int] = field(default_factory=list)  # tree blocks: the accepted path's node indices


@dataclass
class PendingBlock:
    """A checked block waiting for its forward pass (alone, or batched with other sessions')."""

    session: VerifierSession
    position: int
    draft_tokens: list[int]
    draft_probs: torch.Tensor | None
    num_pending: int  # uncached committed tokens fed before the drafts
    job: ExtendJob
    parents: list[int] | None = None  # a token tree: each draft token's parent (-1: the last committed token)


class VerifierSession:
    """One sequence being generated: its committed tokens, KV cache and random generator.

    `kv` is a `StaticSequence` (a slot of the core's static KV pool) when the core gave it one, else a
    `CachedSequence`; a static session that would outgrow its slot moves to a `CachedSequence` for good
    (`_make_room`)."""

    def __init__(self, lm: LoadedModel, options: SessionOptions) -> None:
        prompt = options.prompt_token_ids
        if not prompt:
            raise InvalidArgument("prompt_token_ids must contain at least one token")
        _check_token_ids(prompt, lm.vocab_size, "prompt_token_ids")
        if len(prompt) >= lm.max_context:
            raise OutOfRange(f"prompt has {len(prompt)} tokens; the target's context is {lm.max_context}")
        self.lm = lm
        self.options = options
        self.policy = resolve_policy(options.policy, options.sampling)
        self.policy_params = resolve_policy_params(options.policy_params, self.policy, options.sampling)
        self.committed: list[int] = list(prompt)
        self.kv: KVSequence = CachedSequence(lm.model)  # or a static slot, given by VerifierCore
        self.generator = make_generator(options.sampling.seed, lm.device)  # reseeded for each position
        self.prefill_ms = 0.0
        self.closed = False  # set by VerifierCore.close_session: nothing may refill its cache
        self.unsent_hidden: torch.Tensor | None = None  # [P-1, H] the prompt's rows, sent with the first verdict

    @property
    def committed_length(self) -> int:
        return len(self.committed)

    def prefill(self) -> float:
        """Cache the prompt except its last token; returns milliseconds."""
        start = time.perf_counter()
        self._make_room(len(self.committed) - 1)
        pending = self.kv.pending(self.committed)
        if len(pending) > 1:
            want_hidden = self.options.return_hidden_states
            out = self.kv.extend(pending[:-1], want_hidden=want_hidden)
            if out.hidden is not None:  # a head drafts from every committed position's feature, the prompt's too
                self.unsent_hidden = out.hidden.float().cpu()
        return (time.perf_counter() - start) * 1e3

    def verify(
        self,
        position: int,
        draft_tokens: list[int],
        draft_probs: torch.Tensor | None,
        parents: list[int] | None = None,
    ) -> VerifyOutcome:
        """Verify draft_tokens (for positions position ..) in one forward pass and commit the verdict.

        draft_probs: q as [K, V] float32, or None for one-hot q (deterministic drafts). parents: a token tree
        (see the module docstring); None: a chain.
        """
        block = self.begin_verify(position, draft_tokens, draft_probs, parents)
        start = time.perf_counter()
        out = extend_many(self.lm.model, [block.job])[0]  # the job's own forward (a tree's too)
        return self.finish_verify(block, out, (time.perf_counter() - start) * 1e3)

    def begin_verify(
        self,
        position: int,
        draft_tokens: list[int],
        draft_probs: torch.Tensor | None,
        parents: list[int] | None = None,
    ) -> PendingBlock:
        """Check a block and say what to run through the model: [uncached committed tail, d_1 .. d_K]."""
        if self.closed:
            raise FailedPrecondition("the session is closed")
        self._check_block(position, draft_tokens, draft_probs)
        if parents is not None:
            self._check_tree(draft_tokens, parents, draft_probs)
        self._make_room(len(self.committed) + len(draft_tokens))  # the block's last input is at committed + K - 1
        pending = self.kv.pending(self.committed)  # uncached committed tail, >= 1 token
        want_hidden = self.options.return_hidden_states
        # ExtendJob is typed for CachedSequence; a StaticSequence has the same interface (its `cache` takes the
        # ragged batched forward's updates)
        fed_parents = None
        if parents is not None:  # the pending tail is a chain; the tree hangs below its last token
            p = len(pending)
            fed_parents = [*range(-1, p - 1), *(p + parent if parent >= 0 else p - 1 for parent in parents)]
        job = ExtendJob(
            cast(Any, self.kv), pending + draft_tokens, len(draft_tokens) + 1, want_hidden, parents=fed_parents
        )
        return PendingBlock(self, position, draft_tokens, draft_probs, len(pending), job, parents)

    def _check_tree(self, tokens: list[int], parents: list[int], probs: torch.Tensor | None) -> None:
        if len(parents) != len(tokens):
            raise InvalidArgument(f"draft_parents has {len(parents)} entries for {len(tokens)} draft tokens")
        bad = [i for i, parent in enumerate(parents) if not -1 <= parent < i]
        if bad:
            raise InvalidArgument(
                f"draft_parents[{bad[0]}] is {parents[bad[0]]}; a parent must be -1 or an earlier draft token"
            )
        if self.policy in LOSSY_POLICIES:
            raise FailedPrecondition(f"token trees are verified losslessly only (exact or rejection); this session "
                                     f"uses {self.policy!r}")  # fmt: skip
        if not self.options.sampling.greedy:
            self._check_sampled_tree(tokens, parents, probs)
        if not supports_batching(self.lm.model):
            raise FailedPrecondition(f"token trees need a Llama-family target (llama, mistral, qwen2); the target "
                                     f"is {self.lm.name}")  # fmt: skip

    @staticmethod
    def _check_sampled_tree(tokens: list[int], parents: list[int], probs: torch.Tensor | None) -> None:
        """What recursive rejection sampling assumes of a sampled tree: siblings drawn from one q without
        replacement, so none repeats another (it would be accepted too often; q > 0 is checked for every block)."""
        if probs is None:
            raise InvalidArgument("a sampled token tree needs draft_probs (the distribution each node was drawn from)")
        first_child: dict[int, int] = {}
        seen: set[tuple[int, int]] = set()
        for i, (token, parent) in enumerate(zip(tokens, parents, strict=True)):
            if (parent, token) in seen:
                raise InvalidArgument(f"draft token {i} repeats a sibling's token {token}: siblings are drawn "
                                      f"without replacement")  # fmt: skip
            seen.add((parent, token))
            sibling = first_child.setdefault(parent, i)
            if sibling != i and not torch.equal(probs[i], probs[sibling]):
                raise InvalidArgument(f"draft_probs[{i}] differs from its first sibling's: siblings share one q")

    def _make_room(self, length: int) -> None:
        """Before a forward that makes the cache cover `length` tokens: a static slot too short for them is given
        back and the session goes on with a `CachedSequence` (its next forward re-feeds the committed tokens)."""
        if isinstance(self.kv, StaticSequence) and not self.kv.fits(length):
            self.release_slot()

    def release_slot(self) -> None:
        """Give a static slot back to the pool; the session keeps a (fresh) dynamic cache."""
        if isinstance(self.kv, StaticSequence):
            self.kv.release()
            self.kv = CachedSequence(self.lm.model)

    def finish_verify(
        self, block: PendingBlock, out: ForwardOutput, forward_ms: float, accepted: tuple[int, int] | None = None
    ) -> VerifyOutcome:
        """Accept (unless `accepted` was computed for a whole batch already), commit and roll back."""
        position, draft_tokens, k = block.position, block.draft_tokens, len(block.draft_tokens)
        block_logits = out.logits  # [K+1, V] row 0: after the last committed token; row 1+i: after draft i
        accept_start = time.perf_counter()
        if block.parents is not None:
            path, final_token = self._accept_tree(block_logits, draft_tokens, block.parents, block.draft_probs)
            num_accepted = len(path)
        else:
            num_accepted, final_token = accepted or self._accept(block_logits, draft_tokens, block.draft_probs)
            path = list(range(num_accepted))
        committed_now = [*(draft_tokens[i] for i in path), final_token]
        accept_ms = (time.perf_counter() - accept_start) * 1e3

        first_uncached = len(self.kv.tokens) - block.num_pending - k  # position of pending[0]
        self.committed.extend(committed_now)
        if block.parents is not None:  # the path's entries move to positions position ..; the rest is dropped
            self.kv.compact(position, [position + i for i in path])
        else:
            self.kv.rollback(position + num_accepted)  # rejected positions never survive a verdict
        chain = block.parents is None
        # the logits rows the committed tokens were drawn from: the root's, then each accepted node's
        logprobs = self._logprobs(block_logits, slice(0, num_accepted + 1) if chain else [0, *(1 + i for i in path)],
                                  committed_now)  # fmt: skip
        hidden, hidden_start = None, first_uncached
        if out.hidden is not None:  # rows for the committed inputs: pending + accepted drafts
            p = block.num_pending
            rows = slice(0, p + num_accepted) if chain else [*range(p), *(p + i for i in path)]
            hidden = out.hidden[rows].float().cpu()
            if self.unsent_hidden is not None and len(self.unsent_hidden) == first_uncached:
                hidden, hidden_start = torch.cat([self.unsent_hidden, hidden]), 0  # the prompt's rows come first
            self.unsent_hidden = None
        outcomes, bonus = tree_outcomes(list(range(-1, k - 1)) if chain else block.parents or [], path)
        return VerifyOutcome(
            num_accepted=num_accepted,
            token_ids=committed_now,
            outcomes=outcomes,
            bonus=bonus,
            committed_length=len(self.committed),
            forward_ms=forward_ms,
            accept_ms=accept_ms,
            logprobs=logprobs,
            hidden_start=hidden_start,
            hidden=hidden,
            accepted_nodes=[] if chain else path,
        )

    @property
    def greedy_exact(self) -> bool:
        """Acceptance is the target's argmax: sessions like this share one batched greedy_verify call (chains)."""
        return self.policy == "exact" and self.options.sampling.greedy

    def _accept(
        self, block_logits: torch.Tensor, draft_tokens: list[int], draft_probs: torch.Tensor | None
    ) -> tuple[int, int]:
        """Run the policy through the kernels API with B = 1. Returns (num_accepted, final token)."""
        k = len(draft_tokens)
        device = block_logits.device
        tokens = torch.tensor([draft_tokens], dtype=torch.long, device=device).reshape(1, k)  # [1, K]
        num_draft = torch.tensor([k], device=device)  # [1]
        if self.policy == "exact":
            accepted, output = kernels.greedy_verify(block_logits[None], tokens, num_draft)
        elif self.policy in LOSSY_POLICIES:  # LOSSY: p at temperature 0 is the raw softmax
            sampling = self.options.sampling
            p = torch.softmax(block_logits.float(), -1) if sampling.greedy else logits_to_probs(block_logits, sampling)
            noise = None if sampling.greedy else self._randoms(k, p.shape[-1])[1]
            accepted, output = kernels.lossy_verify(
                p[None], tokens, num_draft, self.policy, self.policy_params, None if noise is None else noise[None]
            )
        else:
            p = logits_to_probs(block_logits, self.options.sampling)  # [K+1, V]
            q = None if draft_probs is None else draft_probs.to(device)[None]  # [1, K, V]
            uniforms, noise = self._randoms(k, p.shape[-1])
            accepted, output = kernels.rejection_sample(p[None], q, tokens, num_draft, uniforms[None], noise[None])
        a = int(accepted[0])
        return a, int(output[0, a])

    def _accept_tree(
        self, block_logits: torch.Tensor, draft_tokens: list[int], parents: list[int], draft_probs: torch.Tensor | None
    ) -> tuple[list[int], int]:
        """A tree kernel with B = 1: greedy, or recursive rejection sampling when the session samples. Returns (the
        accepted path's node indices, final token)."""
        device = block_logits.device
        k = len(draft_tokens)
        tokens = torch.tensor([draft_tokens], dtype=torch.long, device=device).reshape(1, k)  # [1, K]
        tree = torch.tensor([parents], dtype=torch.long, device=device).reshape(1, k)  # [1, K]
        num_draft = torch.tensor([k], device=device)  # [1]
        sampling = self.options.sampling
        if sampling.greedy:
            accepted, nodes, output = kernels.tree_greedy_verify(block_logits[None], tokens, tree, num_draft)
        else:
            assert draft_probs is not None  # _check_tree
            p = logits_to_probs(block_logits, sampling)  # [K+1, V]
            uniforms, noise = draw_tree_randoms(
                self.generator, sampling.seed, self.committed_length, k, p.shape[-1], device
            )  # [K], [K+1, V]
            accepted, nodes, output = kernels.tree_rejection_sample(
                p[None], draft_probs.to(device)[None], tokens, tree, num_draft, uniforms[None], noise[None]
            )
        a = int(accepted[0])
        return [int(i) for i in nodes[0, :a]], int(output[0, a])

    def _randoms(self, k: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uniforms[K] and noise[K+1, V] for the block starting at the committed length."""
        seed = self.options.sampling.seed
        return draw_acceptance_randoms(self.generator, seed, self.committed_length, k, vocab_size, self.lm.device)

    def _logprobs(self, logits: torch.Tensor, rows: slice | list[int], tokens: list[int]) -> list[float]:
        """log p of each committed token under the logits `rows` it was drawn from (indexed only when asked for:
        a list of rows copies them)."""
        if not self.options.return_logprobs:
            return []
        logp = torch.log_softmax(logits[rows].float(), dim=-1)  # [a+1, V]
        index = torch.tensor(tokens, device=logp.device)[:, None]
        return logp.gather(1, index).squeeze(1).tolist()

    def _check_block(self, position: int, tokens: list[int], probs: torch.Tensor | None) -> None:
        check_block_size(len(tokens))
        if position != self.committed_length:
            raise FailedPrecondition(
                f"block position {position} does not match the committed length {self.committed_length}"
            )
        _check_token_ids(tokens, self.lm.vocab_size, "draft_token_ids")
        if position + len(tokens) + 1 > self.lm.max_context:
            raise OutOfRange(f"block would reach position {position + len(tokens)}; context is {self.lm.max_context}")
        if probs is None:
            return
        if self.options.sampling.greedy:
            raise InvalidArgument("draft_probs are only used when sampling (temperature > 0)")
        if probs.shape != (len(tokens), self.lm.vocab_size):
            raise InvalidArgument(
                f"draft_probs must have one row of {self.lm.vocab_size} per draft token, got {tuple(probs.shape)}"
            )
        if tokens:
            q_of_draft = probs[torch.arange(len(tokens)), torch.tensor(tokens)]
            if bool((q_of_draft <= 0).any()):
                raise InvalidArgument("draft_probs give probability 0 to a drafted token")


def tree_outcomes(parents: Sequence[int], path: Sequence[int]) -> tuple[list[str], bool]:
    """Per draft token of a tree (a chain: parents -1, 0, 1, ...): accepted on the path, rejected when a child of
    the path's end (or of the root when nothing was accepted), else skipped; and whether the final token is a bonus
    (nothing was rejected)."""
    end = path[-1] if path else -1
    on_path = set(path)
    outcomes = [ACCEPTED if i in on_path else REJECTED if parent == end else SKIPPED for i, parent in
                enumerate(parents)]  # fmt: skip
    return outcomes, REJECTED not in outcomes


def check_block_size(num_tokens: int) -> None:
    if num_tokens > MAX_BLOCK_TOKENS:
        raise OutOfRange(f"draft_token_ids has {num_tokens} tokens; a block holds at most {MAX_BLOCK_TOKENS}")


def _check_token_ids(ids: list[int], vocab_size: int, field_name: str) -> None:
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidArgument(f"{field_name} has ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")


class VerifierCore:
    """The served target and its live sessions.

    `graphs` (`--static-kv`, `--cuda-graphs`, `--graph-slots`, `--graph-max-len`): up to `slots` sessions keep
    their KV cache in a static pool (`specdec.static_cache`), whose forward per block size is a captured CUDA
    graph on CUDA; the others, and sessions that outgrow their slot, use a `CachedSequence`. `graph_capture` is
    a test hook: graphs through this capture function (e.g. `static_cache.eager_capture` on CPU), whatever the
    device.

    On CUDA every model forward runs on the core's own stream, so a draft model in the same process (the
    embedded stack) can overlap with it; each public method synchronises that stream before returning, so what
    it hands back (host values, CPU tensors) is complete."""

    def __init__(
        self, lm: LoadedModel, graphs: GraphOptions | None = None, graph_capture: Capture | None = None
    ) -> None:
        self.lm = lm
        self.sessions: set[VerifierSession] = set()
        self.stream = side_stream(lm.device)
        self.graphs = self._graph_runner(graphs or GraphOptions(), graph_capture)

    def _graph_runner(self, options: GraphOptions, capture: Capture | None) -> GraphRunner | None:
        """The static KV pool (`--static-kv`) and whether its forwards are captured (`--cuda-graphs`)."""
        for name, value in (("cuda_graphs", options.mode), ("static_kv", options.static)):
            if value not in ("auto", "on", "off"):
                raise InvalidArgument(f"{name} must be auto, on or off, got {value!r}")
        supported = supports_batching(self.lm.model)
        on_cuda = self.lm.device.type == "cuda" or capture is not None
        if options.mode == "on":
            if options.static == "off":
                raise InvalidArgument("--cuda-graphs on needs the static KV cache (--static-kv auto or on)")
            if not (supported and on_cuda):
                why = "a CUDA device" if supported else "a Llama-family model (llama, mistral, qwen2)"
                raise FailedPrecondition(f"--cuda-graphs on needs {why}; the target is {self.lm.name} on "
                                         f"{self.lm.device}")  # fmt: skip
        if options.static == "on" and not supported:
            raise FailedPrecondition(f"--static-kv on needs a Llama-family model (llama, mistral, qwen2); the "
                                     f"target is {self.lm.name}")  # fmt: skip
        if options.static == "off" or not supported:
            return None
        if options.slots < 1 or options.max_len < 2:
            raise InvalidArgument(f"graph slots must be >= 1 and max len >= 2, got {options.slots}, {options.max_len}")
        max_len = min(options.max_len, self.lm.max_context)
        graphs = options.mode != "off" and on_cuda
        with on_stream(self.stream):
            if graphs and capture is None:
                capture = cuda_capture(torch.cuda.graph_pool_handle())
            runner = GraphRunner(self.lm.model, options.slots, max_len, capture if graphs else None)
        log.info("static KV cache: %d slots of %d positions; CUDA graphs %s", options.slots, max_len,
                 "on" if graphs else "off")  # fmt: skip
        return runner

    @property
    def live_sessions(self) -> int:
        return len(self.sessions)

    def kv_cache_bytes(self) -> int:
        """Bytes held by the open sessions' KV caches (read from another thread at scrape time: a copy of
        the set is taken first)."""
        return sum(session.kv.nbytes() for session in list(self.sessions))

    def open_session(self, options: SessionOptions) -> VerifierSession:
        with on_stream(self.stream):
            session = self._new_session(options)
            try:
                session.prefill_ms = session.prefill()
            except BaseException:
                session.release_slot()
                raise
            self.sessions.add(session)
            return session

    def warm_up(self) -> None:
        """One prefill and one verify pass, so the first real request does not pay for lazy initialisation
        (allocator growth, kernel selection, compilation on accelerators); with graphs, on a static slot too
        (this captures one graph, so a capture problem shows at startup)."""
        eos = self.lm.eos_token_ids[0] if self.lm.eos_token_ids else 0
        with on_stream(self.stream):
            for static in (False, True) if self.graphs is not None else (False,):
                session = self._new_session(SessionOptions(prompt_token_ids=[eos] * 4), static)
                try:
                    session.prefill()
                    session.verify(session.committed_length, [eos, eos], None)
                finally:
                    session.kv.rollback(0)
                    session.release_slot()

    def _new_session(self, options: SessionOptions, static: bool = True) -> VerifierSession:
        """A session on a static slot when `static` and one is free, else on a dynamic cache."""
        session = VerifierSession(self.lm, options)  # checks the options first: no slot taken if they fail
        slot = self.graphs.acquire() if static and self.graphs is not None else None  # None: all slots taken
        if slot is not None:
            session.kv = slot
        return session

    def close_session(self, session: VerifierSession) -> None:
        with on_stream(self.stream):
            session.closed = True
            session.kv.rollback(0)
            session.release_slot()
            self.sessions.discard(session)

    def verify_batch(self, requests: Sequence[VerifyRequest]) -> list[VerifyOutcome | Exception]:
        """Verify the blocks of several sessions in one batched forward pass (`specdec.batched`).

        Returns one outcome per request, or the exception that request alone raised (a bad block fails only
        its own caller). Greedy exact-policy sessions are accepted by one batched `greedy_verify` call."""
        with on_stream(self.stream):
            return self._verify_batch(requests)

    def _verify_batch(self, requests: Sequence[VerifyRequest]) -> list[VerifyOutcome | Exception]:
        results: list[VerifyOutcome | Exception] = [FailedPrecondition("not verified")] * len(requests)
        blocks: list[tuple[int, PendingBlock]] = []
        for i, request in enumerate(requests):
            try:
                blocks.append((i, request.session.begin_verify(request.position, request.draft_tokens,
                                                               request.draft_probs, request.parents)))  # fmt: skip
            except Exception as exc:
                results[i] = exc
        start = time.perf_counter()
        try:
            outs = self._extend_all([block.job for _, block in blocks])
        except Exception as exc:
            if len(blocks) > 1:
                return self._one_by_one(requests)  # so that only the block at fault fails
            i, block = blocks[0]
            block.session.kv.reset()  # a half-run forward leaves the cache undefined
            results[i] = exc
            return results
        forward_ms = (time.perf_counter() - start) * 1e3
        accepted = batched_greedy_accept([block for _, block in blocks], outs)
        for (i, block), out, verdict in zip(blocks, outs, accepted, strict=True):
            try:
                results[i] = block.session.finish_verify(block, out, forward_ms, verdict)
            except Exception as exc:
                results[i] = exc
        return results

    def _extend_all(self, jobs: Sequence[ExtendJob]) -> list[ForwardOutput]:
        """Every job's forward. With CUDA graphs, sessions on a static slot run one by one (each a graph replay, one
        launch; batching slots into one graph is not done yet) and the others as one ragged batch; without graphs,
        static and dynamic sessions alike go into the ragged batch (`extend_many`)."""
        graphed = self.graphs is not None and self.graphs.capture is not None
        # (tree jobs always go into the ragged batch: only it lays trees out)
        alone = {i for i, job in enumerate(jobs) if graphed and isinstance(job.seq, StaticSequence) and
                 job.parents is None}  # fmt: skip
        batched = [i for i in range(len(jobs)) if i not in alone]
        outs = dict(zip(batched, extend_many(self.lm.model, [jobs[i] for i in batched]), strict=True))
        for i in alone:
            outs[i] = jobs[i].seq.extend(jobs[i].token_ids, jobs[i].keep_logits, jobs[i].want_hidden)
        return [outs[i] for i in range(len(jobs))]

    def _one_by_one(self, requests: Sequence[VerifyRequest]) -> list[VerifyOutcome | Exception]:
        """After a failed batch: caches rebuilt from the committed tokens, every request alone."""
        for request in requests:
            request.session.kv.reset()
        results: list[VerifyOutcome | Exception] = []
        for request in requests:
            try:
                results.append(request.session.verify(request.position, request.draft_tokens, request.draft_probs,
                                                      request.parents))  # fmt: skip
            except Exception as exc:
                request.session.kv.reset()
                results.append(exc)
        return results


def batched_greedy_accept(
    blocks: Sequence[PendingBlock], outs: Sequence[ForwardOutput]
) -> list[tuple[int, int] | None]:
    """(num_accepted, final token) for every greedy exact-policy block from one `greedy_verify` call over the
    batch (ragged K padded); None for the others, which accept on their own."""
    greedy = [i for i, block in enumerate(blocks) if block.session.greedy_exact and block.parents is None]
    verdicts: list[tuple[int, int] | None] = [None] * len(blocks)
    if len(greedy) < 2:
        return verdicts  # a lone block accepts on its own, through the same kernel with B = 1
    k_max = max(len(blocks[i].draft_tokens) for i in greedy)
    first = outs[greedy[0]].logits
    logits = first.new_zeros(len(greedy), k_max + 1, first.shape[-1])  # [B, K_max+1, V]
    tokens = torch.zeros(len(greedy), k_max, dtype=torch.long, device=first.device)  # [B, K_max]
    for row, i in enumerate(greedy):
        k = len(blocks[i].draft_tokens)
        logits[row, : k + 1] = outs[i].logits
        tokens[row, :k] = torch.tensor(blocks[i].draft_tokens, dtype=torch.long)
    num_draft = torch.tensor([len(blocks[i].draft_tokens) for i in greedy], device=first.device)  # [B]
    accepted, output = kernels.greedy_verify(logits, tokens, num_draft)  # [B], [B, K_max+1]
    for row, i in enumerate(greedy):
        a = int(accepted[row])
        verdicts[i] = (a, int(output[row, a]))
    return verdicts
