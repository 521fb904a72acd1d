"""Draft proposers. Each yields (token, q) pairs one at a time, so the service can stream them.

q is the draft's distribution at that position (float32 [V]) when it samples, or None when its proposal
is deterministic (greedy model drafts, n-gram lookup): the verifier then treats q as one-hot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from specdec.kvcache import CachedSequence
from specdec.modeling import LoadedModel
from specdec.sampling import SamplingConfig, derive_seed, logits_to_probs, make_generator, sample_from

Proposal = tuple[int, torch.Tensor | None]


class Drafter(Protocol):
    sends_probs: bool

    def propose(self, committed: Sequence[int], max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        """Up to max_tokens proposals; a model draft stops early when its top-1 probability < min_confidence."""
        ...

    def close(self) -> None: ...


class NgramDrafter:
    """Prompt lookup: find the most recent earlier occurrence of the sequence's last n tokens
    (n = ngram_max down to 1) and propose the tokens that followed it. No model, no probabilities."""

    sends_probs = False

    def __init__(self, ngram_max: int) -> None:
        self.ngram_max = ngram_max

    def propose(self, committed: Sequence[int], max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        for token in lookup_continuation(committed, self.ngram_max, max_tokens):
            yield token, None

    def close(self) -> None:
        pass


def lookup_continuation(tokens: Sequence[int], ngram_max: int, max_tokens: int) -> list[int]:
    seq = np.asarray(tokens, dtype=np.int64)  # [L]
    length = len(seq)
    if max_tokens <= 0:
        return []
    for n in range(min(ngram_max, length - 1), 0, -1):
        pattern = seq[length - n :]  # [n]
        windows = np.lib.stride_tricks.sliding_window_view(seq[: length - 1], n)  # [L-n, n]
        starts = np.flatnonzero((windows == pattern).all(axis=1))  # earlier occurrences
        if starts.size:
            follow = int(starts[-1]) + n  # the most recent match's continuation
            return seq[follow : follow + max_tokens].tolist()
    return []


class ModelDrafter:
    """A causal LM sharing the target's tokenizer, with its own KV cache rolled back to the committed
    prefix before each block. Samples with the target's sampling parameters and its own generator."""

    def __init__(self, lm: LoadedModel, sampling: SamplingConfig) -> None:
        self.lm = lm
        self.sampling = sampling
        self.sends_probs = not sampling.greedy
        self.kv = CachedSequence(lm.model)
        self.generator = make_generator(derive_seed(sampling.seed, 0, "draft"), lm.device)

    def propose(self, committed: Sequence[int], max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        inputs = self.kv.pending(committed)
        for _ in range(max_tokens):
            logits = self.kv.extend(inputs).logits[-1]  # [V] next-token logits
            if min_confidence > 0 and float(torch.softmax(logits.float(), -1).max()) < min_confidence:
                return  # not confident enough to be worth verifying
            if self.sampling.greedy:
                token, q = int(logits.argmax()), None
            else:
                q = logits_to_probs(logits, self.sampling)  # [V]
                token = sample_from(q, self.generator)
            yield token, q
            inputs = [token]

    def close(self) -> None:
        self.kv.rollback(0)
