"""Turning logits into distributions and drawing random numbers, shared by draft and verifier.

Both sides must apply exactly the same transformation (temperature, then top-k, then top-p) so that
q and p are the distributions the rejection rule assumes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from specdec.errors import InvalidArgument

# Below MIN_TEMPERATURE, logits / temperature overflows float32 and every probability becomes NaN.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 1e4


@dataclass(frozen=True)
class SamplingConfig:
    """Validated sampling parameters. temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @staticmethod
    def from_wire(temperature: float, top_k: int, top_p: float, seed: int) -> SamplingConfig:
        """Apply proto3 defaults (0 = default) and check ranges."""
        if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):  # NaN fails too
            raise InvalidArgument(
                f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {temperature}"
            )
        if top_p == 0.0:
            top_p = 1.0
        if not 0.0 < top_p <= 1.0:
            raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0, got {top_k}")
        return SamplingConfig(float(temperature), int(top_k), float(top_p), int(seed))


def logits_to_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """logits[..., V] -> probs[..., V] (float32) after temperature, top-k and top-p; for sampling only."""
    x = logits.float() / cfg.temperature  # [..., V]
    if 0 < cfg.top_k < x.shape[-1]:
        kth = torch.topk(x, cfg.top_k, dim=-1).values[..., -1:]  # [..., 1]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)  # [..., V]
        sorted_p = torch.softmax(sorted_x, dim=-1)
        mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # [..., V] mass of strictly better tokens
        drop_sorted = mass_before >= cfg.top_p  # keeps the smallest prefix reaching top_p (>= 1 token)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return torch.softmax(x, dim=-1)


def derive_seed(seed: int, sample_index: int, stream: str) -> int:
    """A 63-bit seed for one (request seed, sample, consumer) triple; independent streams per consumer."""
    digest = hashlib.blake2b(f"{seed}:{sample_index}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def reseed_for_position(gen: torch.Generator, seed: int, position: int, stream: str) -> torch.Generator:
    """Reseed `gen` for one sequence position: the draws for position n depend on (seed, n, stream) only, never
    on how the positions were grouped into blocks, so a seeded completion does not depend on K."""
    gen.manual_seed(derive_seed(seed, position, stream))
    return gen


def draw_acceptance_randoms(
    gen: torch.Generator, seed: int, position: int, k: int, vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random inputs of one rejection-sampling step for positions position .. position+K, each row drawn
    from the generator reseeded for its position.

    Returns uniforms[K] ~ U[0, 1) for the accept tests and noise[K+1, V] ~ Exp(1) for the exponential race
    that samples recovered and bonus tokens (argmax(prob / noise) is a sample from prob).
    """
    return _draw_randoms(gen, seed, [(position + i, "accept") for i in range(k + 1)], vocab_size, device)


def draw_tree_randoms(
    gen: torch.Generator, seed: int, position: int, nodes: int, vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random inputs of one sampled tree's verification at committed length `position`: uniforms[N] (one per
    node) and noise[N+1, V] (one row per logits row). A tree's nodes are not positions, so the draws are keyed by
    (position, node): each step starts at a new committed length, and no draw that decided one step's outcome is
    used again by a later step (keys by position + i would be: a later block starts inside this one)."""
    return _draw_randoms(gen, seed, [(position, f"tree-accept-{i}") for i in range(nodes + 1)], vocab_size, device)


def _draw_randoms(
    gen: torch.Generator, seed: int, keys: list[tuple[int, str]], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i of noise (and uniform i, for all rows but the last) from the generator reseeded for keys[i]."""
    n = len(keys) - 1
    uniforms = torch.empty(n, device=device)  # [K]
    noise = torch.empty(n + 1, vocab_size, device=device)  # [K+1, V]
    for i, (position, stream) in enumerate(keys):
        reseed_for_position(gen, seed, position, stream)
        noise[i].exponential_(generator=gen)
        if i < n:
            uniforms[i : i + 1].uniform_(generator=gen)
    return uniforms, noise.clamp_min_(torch.finfo(noise.dtype).tiny)


def sample_from(probs: torch.Tensor, gen: torch.Generator) -> int:
    """One token from probs[V]."""
    return int(torch.multinomial(probs, 1, generator=gen).item())


def draft_token(
    logits: torch.Tensor,  # [V], or [N] over a reduced draft vocabulary when vocab_ids is given
    sampling: SamplingConfig,
    generator: torch.Generator,
    position: int,
    min_confidence: float = 0.0,
    vocab_ids: torch.Tensor | None = None,  # [N] full-vocabulary ids of a reduced vocabulary
    vocab_size: int = 0,  # V, with vocab_ids
) -> tuple[int, torch.Tensor | None] | None:
    """What every model-based draft does per token: the token drafted for `position` and its q ([V], None when
    greedy), or None when the draft's top-1 probability is below min_confidence. Greedy: the argmax; sampling: a
    draw from q = the target's sampling transformation of the draft's logits (zero outside a reduced vocabulary),
    from the draft generator reseeded for the position, so q is exactly the distribution the token came from."""
    if min_confidence > 0 and float(torch.softmax(logits.float(), -1).max()) < min_confidence:
        return None
    if sampling.greedy:
        top = int(logits.argmax())
        return (top if vocab_ids is None else int(vocab_ids[top])), None
    if vocab_ids is not None:  # -inf outside the draft vocabulary: q = 0 there
        full = torch.full((vocab_size,), float("-inf"), dtype=torch.float32, device=logits.device)
        full[vocab_ids] = logits.float()
        logits = full
    q = logits_to_probs(logits, sampling)  # [V]
    return sample_from(q, reseed_for_position(generator, sampling.seed, position, "draft")), q
