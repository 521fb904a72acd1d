"""Draft proposers. Each yields (token, q) pairs one at a time, so the service can stream them.

q is the draft's distribution at that position (float32 [V]) when it samples, or None when its proposal
is deterministic (greedy model drafts, n-gram lookup): the verifier then treats q as one-hot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from specdec.kvcache import CachedSequence
from specdec.modeling import LoadedModel, on_stream, side_stream
from specdec.sampling import SamplingConfig, draft_token, make_generator

Proposal = tuple[int, torch.Tensor | None]
MAX_MATCH_LENGTH = 64  # prompt lookup reports matches up to this long


class Drafter(Protocol):
    sends_probs: bool
    incremental: bool  # proposals come one by one (stream them) rather than all at once
    match_length: int  # prompt lookup: length of the matched suffix behind the last proposal (else 0)

    def propose(self, committed: Sequence[int], max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        """Up to max_tokens proposals; a model draft stops early when its top-1 probability < min_confidence."""
        ...

    def close(self) -> None: ...

    def kv_cache_bytes(self) -> int: ...


@runtime_checkable
class FeatureDrafter(Drafter, Protocol):
    """A drafter that drafts from the target's final hidden states (trained heads): they arrive with commits."""

    def observe_hidden(self, start: int, hidden: torch.Tensor) -> None:
        """hidden [N, H]: the target's final hidden states of committed positions start .. start+N-1."""
        ...


class NgramDrafter:
    """Prompt lookup: find the most recent earlier occurrence of the sequence's last n tokens
    (n = ngram_max down to 1) and propose the tokens that followed it. No model, no probabilities;
    `match_length` tells the orchestrator how long the matched suffix was."""

    sends_probs = False
    incremental = False  # the whole proposal is known at once: the service sends it as one chunk

    def __init__(self, ngram_max: int) -> None:
        self.index = NgramIndex(ngram_max)
        self.match_length = 0

    def propose(self, committed: Sequence[int], max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        self.index.sync(committed)
        self.match_length, tokens = self.index.continuation(max_tokens)
        for token in tokens:
            yield token, None

    def close(self) -> None:
        pass

    def kv_cache_bytes(self) -> int:
        return 0


class NgramIndex:
    """Where every n-gram (n = 1..ngram_max) of a token sequence ends, kept in step with the sequence as it
    grows and rolls back, so a lookup costs O(ngram_max) dictionary probes instead of a scan of the context."""

    def __init__(self, ngram_max: int) -> None:
        self.ngram_max = ngram_max
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], list[int]] = {}  # n-gram -> increasing end positions

    def sync(self, tokens: Sequence[int]) -> None:
        """Make the indexed sequence equal to `tokens` (rolling back to their longest common prefix)."""
        common = len(self.tokens)
        if len(tokens) < common or list(tokens[:common]) != self.tokens:
            common = next(
                (i for i, (a, b) in enumerate(zip(self.tokens, tokens, strict=False)) if a != b),
                min(common, len(tokens)),
            )
        self._truncate(common)
        for token in tokens[common:]:
            self._append(int(token))

    def _append(self, token: int) -> None:
        self.tokens.append(token)
        end = len(self.tokens) - 1
        for n in range(1, min(self.ngram_max, end + 1) + 1):
            self.ends.setdefault(tuple(self.tokens[end - n + 1 :]), []).append(end)

    def _truncate(self, length: int) -> None:
        while len(self.tokens) > length:
            end = len(self.tokens) - 1
            for n in range(1, min(self.ngram_max, end + 1) + 1):
                key = tuple(self.tokens[end - n + 1 :])
                ends = self.ends[key]
                ends.pop()  # the entry for `end`: positions are appended in order
                if not ends:
                    del self.ends[key]
            self.tokens.pop()

    def continuation(self, max_tokens: int) -> tuple[int, list[int]]:
        """(match length, up to max_tokens tokens that followed the most recent earlier occurrence of the last
        n tokens) for the longest n <= ngram_max that occurs earlier; the match length counts how many tokens
        that occurrence really shares with the sequence's end (>= n). (0, []) when even the last token is new."""
        length = len(self.tokens)
        if max_tokens <= 0:
            return 0, []
        for n in range(min(self.ngram_max, length - 1), 0, -1):
            ends = self.ends.get(tuple(self.tokens[length - n :]), [])
            if len(ends) >= 2:  # ends[-1] is the suffix itself; ends[-2] the most recent earlier occurrence
                follow = ends[-2] + 1
                return self._agreement(ends[-2], n), self.tokens[follow : follow + max_tokens]
        return 0, []

    def _agreement(self, end: int, n: int) -> int:
        """How far back (from n, at most MAX_MATCH_LENGTH) the text before `end` equals the sequence's end:
        a copy in progress agrees for dozens of tokens, a coincidence for one or two."""
        tokens, last = self.tokens, len(self.tokens) - 1
        while n < MAX_MATCH_LENGTH and end - n >= 0 and tokens[end - n] == tokens[last - n]:
            n += 1
        return n


_STREAMS: dict[torch.device, torch.cuda.Stream | None] = {}


def draft_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The stream model drafts run on: one per device, apart from the verifier's (None off CUDA)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _STREAMS:
        _STREAMS[device] = side_stream(device)
    return _STREAMS[device]


class ModelDrafter:
    """A causal LM sharing the target's tokenizer, with its own KV cache rolled back to the committed
    prefix before each block. Samples with the target's sampling parameters and its own generator."""

    incremental = True
    match_length = 0

    def __init__(self, lm: LoadedModel, sampling: SamplingConfig) -> None:
        self.lm = lm
        self.sampling = sampling
        self.sends_probs = not sampling.greedy
        self.kv = CachedSequence(lm.model)
        self.generator = make_generator(sampling.seed, lm.device)  # reseeded for each position
        self.stream = draft_stream(lm.device)

    def propose(self, committed: Sequence[int], max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        inputs = self.kv.pending(committed)
        for _ in range(max_tokens):
            with on_stream(self.stream):  # the stream is waited for before the token is handed out
                logits = self.kv.extend(inputs).logits[-1]  # [V] next-token logits
                position = len(self.kv.tokens)  # the position this token is drafted for
                drafted = draft_token(logits, self.sampling, self.generator, position, min_confidence)
            if drafted is None:
                return  # not confident enough to be worth verifying
            token, q = drafted
            if q is not None and q.is_cuda:  # read later on another thread's (default) stream: keep its memory
                q.record_stream(torch.cuda.current_stream(q.device))
            yield token, q
            inputs = [token]

    def close(self) -> None:
        self.kv.rollback(0)

    def kv_cache_bytes(self) -> int:
        return self.kv.nbytes()
