"""What both heads' drafters share: the target's features by position. (A drafted token and its q over the full
vocabulary come from `specdec.sampling.draft_token`, as for model drafts.)"""

from __future__ import annotations

import torch

from specdec.errors import InvalidArgument


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
