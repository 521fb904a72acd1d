"""One forward pass for several sessions at once (continuous batching over ragged sequences).

Each session keeps its own KV cache (`CachedSequence`) and feeds its own number of new tokens. The new tokens of
all sessions are laid end to end as one sequence of N tokens, so every weight matrix (QKV, output projection, MLP,
LM head) is read once per step for all sessions; only attention is computed per session, against that session's
own cache, with a causal mask offset by its cached length. No padding and no cache copies: the per-session cache
grows exactly as it would in a single-session forward.

Supported: decoder-only models of the Llama family (llama, mistral without sliding window, qwen2, smollm: RMSNorm,
rotary embeddings, grouped-query attention, gated MLP). `supports_batching(model)` says whether a model qualifies;
`extend_many` falls back to one forward per session otherwise, so callers never need two code paths.

Token trees (`ExtendJob.parents`): a session's new tokens may form a tree instead of a chain (tree verification):
each token sits at position cached + depth and attends to the cached prefix and its own ancestors only. The cache
stores them in feeding order; after the verdict the caller moves the accepted path into place (`compact`).

Numerics: the shared matrix products have more rows than a single session's, which can change float rounding in
the last bits; greedy identity therefore holds up to near-ties, as for any batch size change.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from specdec.kvcache import CachedSequence, ForwardOutput

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})


@dataclass
class ExtendJob:
    """Run `token_ids` through `seq`'s model and append them to its cache (what `CachedSequence.extend` does)."""

    seq: CachedSequence
    token_ids: list[int]
    keep_logits: int = 1
    want_hidden: bool = False
    parents: Sequence[int] | None = None  # a tree: each token's parent index in token_ids (-1: none); None: chain


@dataclass(frozen=True)
class TreeLayout:
    """Where the tokens of a tree sit and what each may see (`tree_layout`)."""

    depths: list[int]  # [T] each token's distance from the first fed token (its position offset)
    ancestors: torch.Tensor  # [T, T] bool: [i, j] = token j is token i or one of its ancestors


def tree_layout(parents: Sequence[int], device: torch.device | None = None) -> TreeLayout:
    """Depths and the ancestor-or-self matrix of a tree given parent indices (each < its own index, or -1)."""
    t = len(parents)
    rows = [[False] * t for _ in range(t)]
    depths = [0] * t
    for i, parent in enumerate(parents):
        if not -1 <= parent < i:
            raise ValueError(f"tree token {i} has parent {parent}; a parent must come before its child (or be -1)")
        if parent >= 0:
            rows[i] = list(rows[parent])
            depths[i] = depths[parent] + 1
        rows[i][i] = True
    return TreeLayout(depths, torch.tensor(rows, dtype=torch.bool, device=device).reshape(t, t))


def supports_batching(model: Any) -> bool:
    """Whether `extend_many` can run `model` as one ragged batch (else it runs one forward per session)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", "") not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False  # a sliding window changes the mask: leave it to the model's own forward
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) in ("dynamic", "longrope"):
        return False  # these rescale by the longest position in the batch: one session's length would move another's
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return bool(layers) and all(hasattr(inner, name) for name in ("embed_tokens", "rotary_emb", "norm"))


def extend_many(model: Any, jobs: Sequence[ExtendJob]) -> list[ForwardOutput]:
    """Every job's forward output, from one batched pass when the model supports it (and there are >= 2, or a
    job is a tree: only this forward lays trees out)."""
    trees = any(job.parents is not None for job in jobs)
    if trees and not supports_batching(model):
        raise ValueError("token trees need a Llama-family model (specdec.batched.supports_batching)")
    if len(jobs) == 1 and trees and _shared_pool(jobs) is not None:
        # one tree on a static slot: the slot's own forward is leaner than the ragged one (no padding, scatter or
        # per-forward plan; on the default model here 2-4 ms less per verify of 2-6 tree tokens, even at 8-12)
        job = jobs[0]
        return [job.seq.extend(job.token_ids, job.keep_logits, job.want_hidden, parents=job.parents)]  # type: ignore[call-arg]
    if (len(jobs) < 2 and not trees) or not supports_batching(model):
        return [job.seq.extend(job.token_ids, job.keep_logits, job.want_hidden) for job in jobs]
    return _ragged_forward(model, jobs)


def _ragged_forward(model: Any, jobs: Sequence[ExtendJob]) -> list[ForwardOutput]:
    inner = model.model
    device = model.device
    lengths = [len(job.token_ids) for job in jobs]  # T_i new tokens per session
    offsets = [len(job.seq.tokens) for job in jobs]  # L_i cached tokens per session
    starts = _offsets_of(lengths)  # where each session's tokens start in the ragged sequence
    ids = torch.tensor([[t for job in jobs for t in job.token_ids]], dtype=torch.long, device=device)  # [1, N]
    trees = [None if job.parents is None else tree_layout(job.parents, device) for job in jobs]
    steps = [range(length) if tree is None else tree.depths for length, tree in zip(lengths, trees, strict=True)]
    positions = torch.tensor(
        [[offset + j for offset, depths in zip(offsets, steps, strict=True) for j in depths]], device=device
    )  # [1, N] each token's position in its own sequence (a tree token's: cached length + depth)
    pool = _shared_pool(jobs)
    attend: Attend
    if pool is not None:  # every session on a slot of one static pool: one padded attention call for all
        slots = [job.seq.slot for job in jobs]  # type: ignore[attr-defined]  # StaticSequences, as _shared_pool saw
        plan = pool.plan_ragged(slots, offsets, lengths, [None if t is None else t.ancestors for t in trees])
        attend = functools.partial(pool.attend_ragged, plan=plan)
    else:
        masks = [
            _causal_mask(length, offset, device) if tree is None else _tree_mask(tree.ancestors, offset)
            for length, offset, tree in zip(lengths, offsets, trees, strict=True)
        ]
        attend = functools.partial(_attend_each, jobs=jobs, starts=starts, masks=masks)

    hidden = inner.embed_tokens(ids)  # [1, N, H]
    cos, sin = inner.rotary_emb(hidden, position_ids=positions)  # [1, N, head_dim] each
    for layer_idx, layer in enumerate(inner.layers[: model.config.num_hidden_layers]):
        hidden = hidden + _attention(layer.self_attn, layer.input_layernorm(hidden), cos, sin, attend, layer_idx)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    hidden = inner.norm(hidden)  # [1, N, H] final hidden states (what output_hidden_states[-1] holds)

    # One LM head call over every session's kept rows: the head is the largest matrix, read once per step
    keeps = [min(max(1, job.keep_logits), length) for job, length in zip(jobs, lengths, strict=True)]
    rows = [i for s, t, keep in zip(starts, lengths, keeps, strict=True) for i in range(s + t - keep, s + t)]
    logits = model.lm_head(hidden[0, rows])  # [sum keep, V] (rows: the kept positions in the ragged sequence)
    outputs = []
    for job, start, length, first, keep in zip(jobs, starts, lengths, _offsets_of(keeps), keeps, strict=True):
        job.seq.tokens.extend(int(t) for t in job.token_ids)
        outputs.append(
            ForwardOutput(
                logits=logits[first : first + keep],  # [keep, V]
                hidden=hidden[0, start : start + length] if job.want_hidden else None,  # [T, H]
            )
        )
    return outputs


def _offsets_of(counts: Sequence[int]) -> list[int]:
    """Where each of consecutive runs of these lengths starts."""
    return [sum(counts[:i]) for i in range(len(counts))]


# attend(attn, q [1, Hq, N, d], k [1, Hkv, N, d], v [1, Hkv, N, d], layer_idx) -> merged [1, N, Hq * d]
Attend = Callable[..., torch.Tensor]


def _attention(
    attn: Any,
    x: torch.Tensor,  # [1, N, H] normalised hidden states of every session's new tokens
    cos: torch.Tensor,  # [1, N, head_dim]
    sin: torch.Tensor,
    attend: Attend,
    layer_idx: int,
) -> torch.Tensor:  # [1, N, H]
    n = x.shape[1]
    head_dim = attn.head_dim
    q = attn.q_proj(x).view(1, n, -1, head_dim).transpose(1, 2)  # [1, Hq, N, d]
    k = attn.k_proj(x).view(1, n, -1, head_dim).transpose(1, 2)  # [1, Hkv, N, d]
    v = attn.v_proj(x).view(1, n, -1, head_dim).transpose(1, 2)  # [1, Hkv, N, d]
    q, k = _rotary(attn)(q, k, cos, sin)
    return attn.o_proj(attend(attn, q, k, v, layer_idx=layer_idx))  # type: ignore[no-any-return]


def _attend_each(
    attn: Any,
    q: torch.Tensor,  # [1, Hq, N, d]
    k: torch.Tensor,  # [1, Hkv, N, d]
    v: torch.Tensor,  # [1, Hkv, N, d]
    layer_idx: int,
    jobs: Sequence[ExtendJob],
    starts: Sequence[int],
    masks: Sequence[torch.Tensor | None],
) -> torch.Tensor:  # [1, N, Hq * d]
    """Attention session by session, each against its own cache (`DynamicCache.update`'s contract)."""
    outs = []
    for job, start, mask in zip(jobs, starts, masks, strict=True):
        end = start + len(job.token_ids)
        # Append this session's keys/values to its own cache; attend over everything it has cached.
        keys, values = job.seq.cache.update(k[:, :, start:end], v[:, :, start:end], layer_idx)  # [1, Hkv, L+T, d]
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, start:end], keys, values, attn_mask=mask, scale=attn.scaling, enable_gqa=True
            )
        )  # [1, Hq, T, d]
    return torch.cat(outs, dim=2).transpose(1, 2).reshape(1, q.shape[2], -1)


def _shared_pool(jobs: Sequence[ExtendJob]) -> Any:
    """The static KV pool (`specdec.static_cache.GraphRunner`) holding every job's cache, if there is one."""
    pools = {id(getattr(job.seq, "runner", None)) for job in jobs}
    pool = getattr(jobs[0].seq, "runner", None)
    return pool if len(pools) == 1 and hasattr(pool, "plan_ragged") else None


def _causal_mask(length: int, offset: int, device: torch.device) -> torch.Tensor | None:
    """[T, L+T] bool: new token j sees the L cached positions and new tokens 0..j. None for one new token."""
    if length == 1:
        return None  # a single query may attend to every cached key
    cached = torch.ones(length, offset, dtype=torch.bool, device=device)
    new = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return torch.cat([cached, new], dim=1)


def _tree_mask(ancestors: torch.Tensor, offset: int) -> torch.Tensor:
    """[T, L+T] bool: tree token i sees the L cached positions, itself and its ancestors."""
    cached = torch.ones(ancestors.shape[0], offset, dtype=torch.bool, device=ancestors.device)
    return torch.cat([cached, ancestors], dim=1)


def _rotary(attn: Any) -> Any:
    """The model family's own `apply_rotary_pos_emb`, from the module that defines its attention class."""
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb
