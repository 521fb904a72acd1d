"""The building blocks of the heads: RMSNorm, rotary embeddings and one Llama decoder layer whose attention
takes explicit keys, values and mask, so one layer serves incremental drafting (a KV cache rolled back by
position) and training-time test (keys from several unrolled steps, a custom mask)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LayerShape:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rotary(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, head_dim] for positions[T] (Llama's layout: the two halves share frequencies)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # [d/2]
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, d]
    return emb.cos(), emb.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class DecoderLayer(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(.)), with grouped-query attention."""

    def __init__(self, shape: LayerShape) -> None:
        super().__init__()
        h, d = shape.hidden_size, shape.head_dim
        self.shape = shape
        self.q_proj = nn.Linear(h, shape.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, shape.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, shape.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(shape.num_heads * d, h, bias=False)
        self.gate_proj = nn.Linear(h, shape.intermediate_size, bias=False)
        self.up_proj = nn.Linear(h, shape.intermediate_size, bias=False)
        self.down_proj = nn.Linear(shape.intermediate_size, h, bias=False)
        self.input_norm = RMSNorm(h, shape.rms_eps)
        self.post_attention_norm = RMSNorm(h, shape.rms_eps)

    def qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, H] -> q [B, nh, T, d], k and v [B, nkv, T, d], rotary applied to q and k."""
        b, t, _ = x.shape
        s, d = self.shape, self.shape.head_dim
        y = self.input_norm(x)
        q = self.q_proj(y).view(b, t, s.num_heads, d).transpose(1, 2)
        k = self.k_proj(y).view(b, t, s.num_kv_heads, d).transpose(1, 2)
        v = self.v_proj(y).view(b, t, s.num_kv_heads, d).transpose(1, 2)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def finish(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of q over k, v (mask [T, Tk] or [B, 1, T, Tk], True = attend), then the MLP: [B, T, H]."""
        # grouped-query attention without copying the keys per query head (k, v [B, nkv, Tk, d]): the same sums as
        # repeat_interleave, half the time of a draft step's attention over a few hundred cached pairs here
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # [B, nh, T, d]
        b, _, t, _ = attn.shape
        h = x + self.o_proj(attn.transpose(1, 2).reshape(b, t, -1))
        y = self.post_attention_norm(h)
        return h + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


@dataclass
class LayerCache:
    """Keys and values [1, nkv, L, d] of positions 0 .. L-1; rolled back by slicing."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else int(self.k.shape[2])

    def rollback(self, length: int) -> None:
        if self.k is not None and self.v is not None and self.length > length:
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def nbytes(self) -> int:
        if self.k is None or self.v is None:
            return 0
        return self.k.numel() * self.k.element_size() * 2
