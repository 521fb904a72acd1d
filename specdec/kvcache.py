"""A model's KV cache over one token sequence, with rollback by position. Shared by draft and verifier.

The cache holds keys/values for `tokens` (positions 0 .. len(tokens)-1). Rollback keeps the longest common
prefix of what is cached and what is committed, so rejected positions never survive a verdict.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@functools.cache
def cache_keyword(model_class: type[Any]) -> str:
    """The name a model's forward takes its KV cache under: `cache` in recent transformers 5 releases,
    `past_key_values` in earlier ones (a name the model does not know would be swallowed by **kwargs and the
    cache silently ignored)."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # [keep_logits, V] next-token logits after the last input tokens
    hidden: torch.Tensor | None  # [T, H] final hidden states, when asked for


@dataclass
class CachedSequence:
    """One session's KV cache and the tokens it covers."""

    model: Any
    cache: DynamicCache = field(default_factory=DynamicCache)
    tokens: list[int] = field(default_factory=list)

    def rollback(self, length: int) -> None:
        """Drop cached positions >= length."""
        excess = len(self.tokens) - length
        if excess > 0:
            self.cache.crop(-excess)
            del self.tokens[length:]

    def reset(self) -> None:
        """Forget everything (a fresh cache): the next forward re-feeds the whole committed sequence."""
        self.cache = DynamicCache()
        self.tokens.clear()

    def compact(self, start: int, sources: Sequence[int]) -> None:
        """Keep cached positions < start, then the entries at positions `sources` (a tree's accepted path, fed in
        tree order) moved to start, start+1, ...; drop the rest."""
        for layer in self.cache.layers:
            if not getattr(layer, "is_initialized", True):
                continue
            for name in ("keys", "values"):
                rows = getattr(layer, name)  # [1, Hkv, L, d]
                index = torch.tensor(list(sources), dtype=torch.long, device=rows.device)  # [A]
                setattr(layer, name, torch.cat([rows[:, :, :start], rows.index_select(2, index)], dim=2))
        self.tokens[start:] = [self.tokens[i] for i in sources]

    def pending(self, committed: Sequence[int]) -> list[int]:
        """Roll back to the part of the cache that agrees with `committed` (keeping at least the last
        committed token uncached, so its next-token logits can be computed) and return the uncached tail."""
        keep = min(common_prefix_length(self.tokens, committed), len(committed) - 1)
        self.rollback(keep)
        return list(committed[keep:])

    def extend(self, token_ids: Sequence[int], keep_logits: int = 1, want_hidden: bool = False) -> ForwardOutput:
        """Run token_ids through the model in one forward pass, appending them to the cache.

        Only the last `keep_logits` positions go through the LM head: a prefill needs none of them, and the
        head over a long prompt would cost more than the rest of the pass."""
        device = self.model.device
        input_ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)  # [1, T]
        out = self.model(
            input_ids=input_ids,
            **{cache_keyword(type(self.model)): self.cache},  # type: ignore[arg-type]  # classes hash
            use_cache=True,
            output_hidden_states=want_hidden,
            logits_to_keep=max(1, keep_logits),
        )
        self.tokens.extend(int(t) for t in token_ids)
        hidden = out.hidden_states[-1][0] if want_hidden else None  # [T, H]
        return ForwardOutput(logits=out.logits[0], hidden=hidden)  # logits [keep_logits, V]

    def nbytes(self) -> int:
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total
