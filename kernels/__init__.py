"""Acceptance kernels used by the verifier for every speculative step.

Each function takes `backend="auto"|"torch"|"triton"`. Only the pure-torch reference exists so far (the
Triton versions come with the kernels issue); `auto` and the `SPECDEC_KERNELS` environment variable
resolve to it, and an explicit `triton` raises rather than silently falling back.
"""

from __future__ import annotations

import os

import torch

from specdec.kernels import reference

BACKENDS = ("auto", "torch", "triton")


class KernelUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here."""


def resolve_backend(backend: str = "auto") -> str:
    """The backend that will actually run for this request."""
    if backend == "auto":
        backend = os.environ.get("SPECDEC_KERNELS", "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")
    if backend == "triton":
        raise KernelUnavailable("the Triton kernels are not built yet; use backend='torch'")
    return "torch"


def greedy_verify(
    target_logits: torch.Tensor,  # [B, K+1, V]
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """See `reference.greedy_verify`. Returns num_accepted[B], output_tokens[B, K+1]."""
    resolve_backend(backend)
    return reference.greedy_verify(target_logits, draft_tokens, num_draft)


def rejection_sample(
    target_probs: torch.Tensor,  # [B, K+1, V]
    draft_probs: torch.Tensor | None,  # [B, K, V] or None (one-hot q)
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    uniforms: torch.Tensor,  # [B, K]
    noise: torch.Tensor,  # [B, K+1, V]
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """See `reference.rejection_sample`. Returns num_accepted[B], output_tokens[B, K+1]."""
    resolve_backend(backend)
    return reference.rejection_sample(target_probs, draft_probs, draft_tokens, num_draft, uniforms, noise)


__all__ = ["KernelUnavailable", "greedy_verify", "rejection_sample", "resolve_backend"]
