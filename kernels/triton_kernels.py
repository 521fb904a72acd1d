"""Triton versions of the acceptance step, one program per batch row, exactly matching `reference.py`.

Both kernels read the vocabulary in BLOCK-wide tiles and stop early: greedy verification reads the
target's logits only up to the first mismatch ((a+1)·V values instead of (K+1)·V), and rejection sampling
reads one distribution row for its final token. Argmax ties resolve to the lowest index, as torch.argmax.

On CPU these run only under the Triton interpreter (TRITON_INTERPRET=1, set before triton is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _row_argmax(row_ptr, V, BLOCK: tl.constexpr):
    """Index of the first maximum of row_ptr[0:V] (fp32 compare)."""
    best_val = -float("inf")
    best_idx = 0
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        best_val, best_idx = _running_argmax(x, start, best_val, best_idx)
    return best_idx


@triton.jit
def _greedy_verify_kernel(
    logits_ptr,  # [B, K+1, V]
    draft_ptr,  # [B, K] int64
    num_draft_ptr,  # [B] int64
    num_accepted_ptr,  # [B] int64, out
    out_ptr,  # [B, K+1] int64, out, pre-filled with -1
    K,
    V,
    stride_lb,
    stride_lk,
    stride_db,
    stride_ob,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    n = tl.load(num_draft_ptr + b)
    accepted = 0
    done = 0
    for i in range(0, K + 1):
        if done == 0:
            top = _row_argmax(logits_ptr + b * stride_lb + i * stride_lk, V, BLOCK).to(tl.int64)
            d = tl.load(draft_ptr + b * stride_db + i, mask=i < n, other=-1)
            if (i < n) & (d == top):  # accept d_i: it is the target's argmax
                tl.store(out_ptr + b * stride_ob + i, d)
                accepted += 1
            else:  # the target's own token at the first mismatch (or the bonus after n accepted)
                tl.store(out_ptr + b * stride_ob + i, top)
                done = 1
    tl.store(num_accepted_ptr + b, accepted)


@triton.jit
def _rejection_sample_kernel(
    p_ptr,  # [B, K+1, V] target probs
    q_ptr,  # [B, K, V] draft probs (unused when HAS_Q is False: one-hot q)
    draft_ptr,  # [B, K] int64
    num_draft_ptr,  # [B] int64
    uniforms_ptr,  # [B, K]
    noise_ptr,  # [B, K+1, V] Exp(1)
    num_accepted_ptr,  # [B] int64, out
    out_ptr,  # [B, K+1] int64, out, pre-filled with -1
    K,
    V,
    stride_pb,
    stride_pk,
    stride_qb,
    stride_qk,
    stride_db,
    stride_ub,
    stride_nb,
    stride_nk,
    stride_ob,
    HAS_Q: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    n = tl.load(num_draft_ptr + b)
    # 1. accept d_i with probability min(1, p/q): while u_i * q_i(d_i) < p_i(d_i); with one-hot q, while d_i
    #    wins the exponential race on p_i (probability p_i(d_i); see the reference's docstring)
    accepted = 0
    done = 0
    for i in range(0, K):
        if done == 0:
            if i < n:
                d = tl.load(draft_ptr + b * stride_db + i)
                q = 1.0
                if HAS_Q:
                    q = tl.load(q_ptr + b * stride_qb + i * stride_qk + d).to(tl.float32)
                if q >= 1.0:  # one-hot row
                    p_row_i = p_ptr + b * stride_pb + i * stride_pk
                    ok = _race_winner(p_row_i, noise_ptr + b * stride_nb + i * stride_nk, V, BLOCK) == d
                else:
                    p = tl.load(p_ptr + b * stride_pb + i * stride_pk + d).to(tl.float32)
                    u = tl.load(uniforms_ptr + b * stride_ub + i).to(tl.float32)
                    ok = u * q < p
                if ok:
                    tl.store(out_ptr + b * stride_ob + i, d)
                    accepted += 1
                else:
                    done = 1
            else:
                done = 1
    # 2. the final token at position a: from norm(max(0, p - q)) after a rejection, else the bonus from p,
    #    drawn by the exponential race argmax(dist / noise); an empty residual falls back to p.
    a = accepted
    rejected = a < n
    d_a = tl.load(draft_ptr + b * stride_db + a, mask=rejected, other=-1)
    p_row = p_ptr + b * stride_pb + a * stride_pk
    q_row = q_ptr + b * stride_qb + a * stride_qk
    noise_row = noise_ptr + b * stride_nb + a * stride_nk
    best_r = -1.0
    best_r_idx = 0
    best_p = -1.0
    best_p_idx = 0
    residual_mass = 0.0
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        valid = offs < V
        p = tl.load(p_row + offs, mask=valid, other=0.0).to(tl.float32)
        e = tl.load(noise_row + offs, mask=valid, other=1.0).to(tl.float32)
        if HAS_Q:
            # row a of q exists only after a rejection (a < n <= K); a bonus position has no q row
            q_valid = valid & ((offs * 0 + rejected.to(tl.int32)) != 0)
            q = tl.load(q_row + offs, mask=q_valid, other=0.0).to(tl.float32)
        else:
            q = tl.where(offs == d_a, 1.0, 0.0)
        r = tl.where(rejected, tl.maximum(p - q, 0.0), p)
        residual_mass += tl.sum(tl.where(valid, r, 0.0), axis=0)
        race_r = tl.where(valid, tl.math.div_rn(r, e), -1.0)
        race_p = tl.where(valid, tl.math.div_rn(p, e), -1.0)
        best_r, best_r_idx = _running_argmax(race_r, start, best_r, best_r_idx)
        best_p, best_p_idx = _running_argmax(race_p, start, best_p, best_p_idx)
    final = tl.where(residual_mass > 0.0, best_r_idx, best_p_idx).to(tl.int64)
    tl.store(out_ptr + b * stride_ob + a, final)
    tl.store(num_accepted_ptr + b, a)


@triton.jit
def _race_winner(p_row, noise_row, V, BLOCK: tl.constexpr):
    """argmax(p / noise) over one row of V (the first index on ties, as torch.argmax)."""
    best = -1.0
    best_idx = 0
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        valid = offs < V
        p = tl.load(p_row + offs, mask=valid, other=0.0).to(tl.float32)
        e = tl.load(noise_row + offs, mask=valid, other=1.0).to(tl.float32)
        race = tl.where(valid, tl.math.div_rn(p, e), -1.0)
        best, best_idx = _running_argmax(race, start, best, best_idx)
    return best_idx


@triton.jit
def _running_argmax(values, start, best, best_idx):
    """Fold one block (offsets start ..) into a running (max, argmax): the lowest index among the block's maxima,
    and strictly greater only, so an equal later maximum never wins (as torch.argmax)."""
    block_best = tl.max(values, axis=0)
    take = block_best > best
    return tl.where(take, block_best, best), tl.where(take, tl.argmax(values, axis=0) + start, best_idx)


def _outputs(b: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    num_accepted = torch.zeros(b, dtype=torch.long, device=device)  # [B]
    out = torch.full((b, k + 1), -1, dtype=torch.long, device=device)  # [B, K+1]
    return num_accepted, out


def greedy_verify(
    target_logits: torch.Tensor,  # [B, K+1, V]
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
) -> tuple[torch.Tensor, torch.Tensor]:
    b, k1, v = target_logits.shape
    logits = target_logits.contiguous()
    drafts = draft_tokens.long().contiguous()
    num = num_draft.long().contiguous()
    num_accepted, out = _outputs(b, k1 - 1, logits.device)
    _greedy_verify_kernel[(b,)](
        logits, drafts, num, num_accepted, out, k1 - 1, v,
        logits.stride(0), logits.stride(1), drafts.stride(0), out.stride(0),
        BLOCK=min(BLOCK, triton.next_power_of_2(v)),
    )  # fmt: skip
    return num_accepted, out


def rejection_sample(
    target_probs: torch.Tensor,  # [B, K+1, V]
    draft_probs: torch.Tensor | None,  # [B, K, V] or None (one-hot q)
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    uniforms: torch.Tensor,  # [B, K]
    noise: torch.Tensor,  # [B, K+1, V]
) -> tuple[torch.Tensor, torch.Tensor]:
    b, k1, v = target_probs.shape
    p = target_probs.contiguous()
    q = draft_probs.contiguous() if draft_probs is not None else p  # a placeholder pointer when one-hot
    drafts = draft_tokens.long().contiguous()
    num = num_draft.long().contiguous()
    u = uniforms.contiguous()
    e = noise.contiguous()
    num_accepted, out = _outputs(b, k1 - 1, p.device)
    _rejection_sample_kernel[(b,)](
        p, q, drafts, num, u, e, num_accepted, out, k1 - 1, v,
        p.stride(0), p.stride(1), q.stride(0), q.stride(1), drafts.stride(0), u.stride(0),
        e.stride(0), e.stride(1), out.stride(0),
        HAS_Q=draft_probs is not None,
        BLOCK=min(BLOCK, triton.next_power_of_2(v)),
    )  # fmt: skip
    return num_accepted, out
