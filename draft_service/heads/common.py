"""What both heads' drafters share: the target's features by position, and turning reduced-vocabulary logits
into a drafted token and its q over the full vocabulary."""

from __future__ import annotations

import torch

from specdec.errors import InvalidArgument
from specdec.sampling import SamplingConfig, logits_to_probs, reseed_for_position, sample_from


class FeatureBuffer:
    """The target's final hidden states of the committed positions 0 .. len-1, as the verifier sent them.

    A block starting at `start` replaces everything from `start` on: a feature depends only on the tokens up to
    its position, and blocks start at the first position the verifier had not fed before."""

    def __init__(self, hidden_size: int) -> None:
        self.hidden_size = hidden_size
        self.rows = torch.empty(0, hidden_size)  # [L, H]

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def add(self, start: int, hidden: torch.Tensor) -> None:
        """hidden [N, H] for positions start .. start+N-1."""
        if hidden.ndim != 2 or hidden.shape[1] != self.hidden_size:
            raise InvalidArgument(
                f"hidden_states must have rows of {self.hidden_size} values (the head's hidden size); "
                f"got shape {tuple(hidden.shape)}"
            )
        if start > len(self):
            raise InvalidArgument(
                f"hidden_states start at position {start}, but the draft has features only for positions < {len(self)}"
            )
        self.rows = torch.cat([self.rows[:start], hidden.float()])

    def truncate(self, length: int) -> None:
        self.rows = self.rows[:length]

    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()


def full_vocab_logits(reduced: torch.Tensor, vocab_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """reduced [N] logits over the draft vocabulary -> [V] with -inf for every other token (q = 0 there)."""
    full = torch.full((vocab_size,), float("-inf"), dtype=torch.float32)
    full[vocab_ids] = reduced.float()
    return full


def draft_token(
    reduced: torch.Tensor,
    vocab_ids: torch.Tensor,
    vocab_size: int,
    sampling: SamplingConfig,
    generator: torch.Generator,
    position: int,
    min_confidence: float,
) -> tuple[int, torch.Tensor | None] | None:
    """The token drafted for `position` from reduced logits [N] and its q ([V], None when greedy), or None when the
    head's top-1 probability is below min_confidence. Greedy: the argmax; sampling: a draw from q, where q is the
    target's sampling transformation applied to the head's logits over the full vocabulary (zero outside the
    draft vocabulary), so q is exactly the distribution the token was drawn from."""
    if min_confidence > 0 and float(torch.softmax(reduced.float(), -1).max()) < min_confidence:
        return None
    if sampling.greedy:
        return int(vocab_ids[int(reduced.argmax())]), None
    q = logits_to_probs(full_vocab_logits(reduced, vocab_ids, vocab_size), sampling)  # [V]
    token = sample_from(q, reseed_for_position(generator, sampling.seed, position, "draft"))
    return token, q
