"""Acceptance kernels used by the verifier for every speculative step, batched over B sessions.

Contracts (shapes; see `reference.py` for the exact rules):
- `greedy_verify(target_logits[B, K+1, V], draft_tokens[B, K], num_draft[B])
  -> (num_accepted[B], output_tokens[B, K+1])`: accept draft tokens while they equal the target's argmax;
  each output row is the accepted tokens, then the target's argmax at the first mismatch (or the bonus
  argmax), then -1 padding.
- `rejection_sample(target_probs[B, K+1, V], draft_probs[B, K, V] | None, draft_tokens[B, K], num_draft[B],
  uniforms[B, K], noise[B, K+1, V]) -> (num_accepted[B], output_tokens[B, K+1])`: Leviathan et al.'s rule;
  `draft_probs=None` means one-hot q (deterministic drafts); recovered and bonus tokens are drawn by the
  exponential race argmax(dist / noise) with noise ~ Exp(1), so the random inputs come from each row's own
  generator and kernel and reference agree exactly.

Backends: each function takes `backend="auto"|"torch"|"triton"`; the environment variable
`SPECDEC_KERNELS=torch|triton` overrides `auto`. `auto` runs Triton when the tensors are on a CUDA device and
Triton works, else the torch reference; if a Triton kernel fails under `auto`, that is logged once and torch
is used from then on. An explicit `triton` (argument or environment) raises instead of falling back. On CPU,
Triton runs only through its interpreter (`TRITON_INTERPRET=1`), which tests use.
`last_backend()` tells which backend ran the calling thread's latest call.

- `tree_greedy_verify(target_logits[B, N+1, V], draft_tokens[B, N], parents[B, N], num_draft[B])
  -> (num_accepted[B], accepted_nodes[B, N], output_tokens[B, N+1])`: a token tree (parents precede children,
  -1 = a child of the last committed token); the accepted path is the deepest chain of nodes each equal to the
  target's argmax after its parent. The Triton kernel (one program per tree) reads a logits row only when an
  accepted node has a child to check against it: (path length + 1) rows at most, as greedy_verify.

- `tree_rejection_sample(target_probs[B, N+1, V], draft_probs[B, N, V], draft_tokens[B, N], parents[B, N],
  num_draft[B], uniforms[B, N], noise[B, N+1, V]) -> (num_accepted[B], accepted_nodes[B, N], output_tokens[B, N+1])`:
  a sampled tree (each node's children drawn from q without replacement, in index order), verified by recursive
  rejection sampling: lossless. Torch code only.

The LOSSY policies (`lossy_verify`: typical, topk-agree, threshold) run as torch code only: their rules
are a few elementwise ops on the same gathered p(d_i) values, and the step that costs (reading the final
row) is the same as greedy's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from specdec.kernels import reference
from specdec.policies import LOSSY_POLICIES

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "triton")
_state = threading.local()
_triton_failed: str | None = None  # set once when `auto` saw Triton fail; auto then stays on torch


class KernelUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here."""


def _triton_module(device: torch.device) -> tuple[ModuleType | None, str]:
    """The Triton kernels module if Triton can run on `device`, else (None, why not)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return None, f"Triton needs a CUDA device or TRITON_INTERPRET=1 (tensors are on {device.type})"
    try:
        from specdec.kernels import triton_kernels
    except Exception as exc:  # ImportError, or a Triton without a usable driver
        return None, f"Triton is not usable here: {type(exc).__name__}: {exc}"
    return triton_kernels, ""


def resolve_backend(backend: str = "auto", device: torch.device | None = None) -> str:
    """The backend that a call with these arguments would run: "torch" or "triton"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        override = os.environ.get("SPECDEC_KERNELS", "auto") or "auto"
        if override not in BACKENDS:
            raise ValueError(f"SPECDEC_KERNELS must be one of {BACKENDS}, got {override!r}")
        backend = override
    device = device or torch.device("cpu")
    if backend == "torch":
        return "torch"
    module, why = _triton_module(device)
    if backend == "triton":
        if module is None:
            raise KernelUnavailable(why)
        return "triton"
    return "triton" if module is not None and device.type == "cuda" and _triton_failed is None else "torch"


def last_backend() -> str:
    """The backend that ran this thread's latest kernel call ("" before any)."""
    return str(getattr(_state, "backend", ""))


def _dispatch(name: str, backend: str, device: torch.device, args: tuple[Any, ...]) -> Any:
    global _triton_failed
    chosen = resolve_backend(backend, device)
    if chosen == "triton":
        module, _ = _triton_module(device)
        assert module is not None
        fn: Callable[..., Any] = getattr(module, name)
        explicit = backend == "triton" or os.environ.get("SPECDEC_KERNELS") == "triton"
        try:
            result = fn(*args)
            _state.backend = "triton"
            return result
        except Exception as exc:
            if explicit:
                raise
            _triton_failed = f"{type(exc).__name__}: {exc}"
            log.warning("Triton %s failed (%s); using the torch kernels from now on", name, _triton_failed)
    _state.backend = "torch"
    return getattr(reference, name)(*args)


def greedy_verify(
    target_logits: torch.Tensor,  # [B, K+1, V]
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact-match verification. Returns num_accepted[B], output_tokens[B, K+1]."""
    return _dispatch("greedy_verify", backend, target_logits.device, (target_logits, draft_tokens, num_draft))


def rejection_sample(
    target_probs: torch.Tensor,  # [B, K+1, V]
    draft_probs: torch.Tensor | None,  # [B, K, V] or None (one-hot q)
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    uniforms: torch.Tensor,  # [B, K]
    noise: torch.Tensor,  # [B, K+1, V]
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lossless rejection sampling. Returns num_accepted[B], output_tokens[B, K+1]."""
    args = (target_probs, draft_probs, draft_tokens, num_draft, uniforms, noise)
    return _dispatch("rejection_sample", backend, target_probs.device, args)


def tree_greedy_verify(
    target_logits: torch.Tensor,  # [B, N+1, V]
    draft_tokens: torch.Tensor,  # [B, N]
    parents: torch.Tensor,  # [B, N] parent node per node, -1 for the root's children
    num_draft: torch.Tensor,  # [B]
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact-match verification of a token tree. Returns num_accepted[B], accepted_nodes[B, N],
    output_tokens[B, N+1]."""
    args = (target_logits, draft_tokens, parents, num_draft)
    return _dispatch("tree_greedy_verify", backend, target_logits.device, args)  # type: ignore[no-any-return]


def tree_rejection_sample(
    target_probs: torch.Tensor,  # [B, N+1, V]
    draft_probs: torch.Tensor,  # [B, N, V]
    draft_tokens: torch.Tensor,  # [B, N]
    parents: torch.Tensor,  # [B, N]
    num_draft: torch.Tensor,  # [B]
    uniforms: torch.Tensor,  # [B, N]
    noise: torch.Tensor,  # [B, N+1, V]
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recursive rejection sampling of a sampled token tree. Returns num_accepted[B], accepted_nodes[B, N],
    output_tokens[B, N+1]. Torch code only."""
    if backend == "triton" or os.environ.get("SPECDEC_KERNELS") == "triton":
        raise KernelUnavailable("sampled token trees are verified by torch code only")
    _state.backend = "torch"
    return reference.tree_rejection_sample(target_probs, draft_probs, draft_tokens, parents, num_draft, uniforms, noise)


def lossy_verify(
    target_probs: torch.Tensor,  # [B, K+1, V] p (at temperature 0: softmax of the raw logits)
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    policy: str,
    params: dict[str, float],  # typical_epsilon, typical_delta, agree_top_m, accept_threshold
    noise: torch.Tensor | None = None,  # [B, K+1, V] Exp(1) when sampling; None: greedy final tokens
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A LOSSY policy's verdict. Returns num_accepted[B], output_tokens[B, K+1] (same layout as above)."""
    if backend == "triton" or os.environ.get("SPECDEC_KERNELS") == "triton":
        raise KernelUnavailable("the lossy policies run as torch code only")
    if policy == "typical":
        accept = reference.typical_accept(
            target_probs, draft_tokens, params["typical_epsilon"], params["typical_delta"]
        )
    elif policy == "topk-agree":
        accept = reference.top_m_accept(target_probs, draft_tokens, int(params["agree_top_m"]))
    elif policy == "threshold":
        accept = reference.threshold_accept(target_probs, draft_tokens, params["accept_threshold"])
    else:
        raise ValueError(f"unknown lossy policy {policy!r}; expected one of {LOSSY_POLICIES}")
    _state.backend = "torch"
    return reference.commit_accepted(target_probs, draft_tokens, num_draft, accept, noise)


__all__ = [
    "LOSSY_POLICIES",
    "KernelUnavailable",
    "greedy_verify",
    "last_backend",
    "lossy_verify",
    "rejection_sample",
    "resolve_backend",
    "tree_greedy_verify",
    "tree_rejection_sample",
]
