"""Medusa: M heads on the target's last feature, head k predicting the token k+2 positions after it.

Each head is a residual block (Linear H->H, SiLU, + input) followed by the shared reduced LM head (the draft
vocabulary's rows, initialised from the target's embedding). With committed length n the newest true feature is
f_{n-2} (the target's own token t_{n-1} came from it), so head k drafts the token at position n+k. Heads do not
see each other's drafts: q_k does not depend on earlier drafted tokens, and a token drawn from q_k is exactly a
draw from the q sent for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from specdec.draft_service.heads.common import FeatureBuffer
from specdec.sampling import SamplingConfig, draft_token, make_generator

Proposal = tuple[int, torch.Tensor | None]


class ResBlock(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)  # starts as the identity: head k begins as the target's own LM head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class MedusaHead(nn.Module):
    vocab_ids: torch.Tensor  # [N] the draft vocabulary as full-vocabulary ids (a buffer)

    def __init__(self, hidden_size: int, num_heads: int, draft_vocab_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.blocks = nn.ModuleList(ResBlock(hidden_size) for _ in range(num_heads))
        self.lm_head = nn.Linear(hidden_size, draft_vocab_size, bias=False)
        self.register_buffer("vocab_ids", torch.zeros(draft_vocab_size, dtype=torch.long))  # [N] full-vocab ids

    @property
    def num_heads(self) -> int:
        return len(self.blocks)

    def forward(self, features: torch.Tensor, heads: int | None = None) -> list[torch.Tensor]:
        """features [..., H] -> reduced logits [..., N] of heads 0 .. heads-1."""
        return [self.lm_head(block(features)) for block in list(self.blocks)[: heads or self.num_heads]]


class MedusaDrafter:
    """Drafts up to M tokens from the newest true feature; the heads run lazily, one per drafted token."""

    incremental = True
    match_length = 0

    def __init__(self, head: MedusaHead, vocab_size: int, sampling: SamplingConfig) -> None:
        self.head = head
        self.vocab_size = vocab_size
        self.sampling = sampling
        self.sends_probs = not sampling.greedy
        self.features = FeatureBuffer(head.hidden_size)
        self.generator = make_generator(sampling.seed, torch.device("cpu"))

    def observe_hidden(self, start: int, hidden: torch.Tensor) -> None:
        self.features.add(start, hidden)

    @torch.inference_mode()
    def propose(self, committed: Sequence[int], max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        n = len(committed)
        if len(self.features) < n - 1 or n < 2:
            return  # no feature for position n-2 yet (the first block of a session)
        feature = self.features.rows[n - 2]  # [H]
        for k in range(min(max_tokens, self.head.num_heads)):
            reduced = self.head.lm_head(self.head.blocks[k](feature))  # [N]
            drafted = draft_token(
                reduced, self.sampling, self.generator, n + k, min_confidence, self.head.vocab_ids, self.vocab_size
            )
            if drafted is None:
                return
            yield drafted

    def close(self) -> None:
        self.features.truncate(0)

    def kv_cache_bytes(self) -> int:
        return self.features.nbytes()
