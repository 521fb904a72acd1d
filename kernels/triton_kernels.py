"""Triton versions of the acceptance step, exactly matching `reference.py`.

The kernels read the vocabulary in BLOCK-wide tiles and stop early: greedy verification reads the
target's logits only up to the first mismatch ((a+1)·V values instead of (K+1)·V), and rejection sampling
reads one distribution row for its final token. Inside a row every tile is folded into per-lane running
maxima (elementwise compares, no reduction in the loop, so the loads stream); one reduction per row at the
end picks the lowest index among the maxima, as torch.argmax does on ties.

Rejection sampling with draft probabilities splits the final row over SPLIT programs per batch row (a grid of
B × SPLIT), so that a small batch still uses every multiprocessor: each program reduces its slice of the row
to a partial (race maxima, their indices, residual mass), and the last program of the row to finish (an
atomic counter) combines the partials. One-hot drafts (no q) keep one program per row: their acceptance test
reads whole rows in sequence.

On CPU these run only under the Triton interpreter (TRITON_INTERPRET=1, set before triton is imported).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK = 2048  # vocabulary tile per loop iteration (greedy verification)
REJECTION_BLOCK = 1024  # rejection sampling: with 8 warps and auto_split, among the fastest in the H200 sweep
NUM_WARPS = 8
INT32_MAX = tl.constexpr(2**31 - 1)  # a jit function reads only constexpr globals


@triton.jit
def _fold(values, offs, acc, acc_idx):
    """Fold one tile into per-lane running maxima; strictly greater only, so each lane keeps its earliest index."""
    take = values > acc
    return tl.where(take, values, acc), tl.where(take, offs, acc_idx)


@triton.jit
def _reduce(acc, acc_idx):
    """The row's maximum and the lowest index holding it, from per-lane running maxima."""
    best = tl.max(acc, axis=0)
    return best, tl.min(tl.where(acc == best, acc_idx, INT32_MAX), axis=0)


@triton.jit
def _row_argmax(row_ptr, V, BLOCK: tl.constexpr):
    """Index of the first maximum of row_ptr[0:V] (fp32 compare); 0 for a row of -inf, as torch.argmax."""
    lanes = tl.arange(0, BLOCK)
    acc = tl.full([BLOCK], -float("inf"), tl.float32)
    acc_idx = lanes
    for start in range(0, V, BLOCK):
        offs = start + lanes
        x = tl.load(row_ptr + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        acc, acc_idx = _fold(x, offs, acc, acc_idx)
    _, idx = _reduce(acc, acc_idx)
    return idx


@triton.jit
def _race_winner(p_row, noise_row, V, BLOCK: tl.constexpr):
    """argmax(p / noise) over one row of V (the first index on ties, as torch.argmax)."""
    lanes = tl.arange(0, BLOCK)
    acc = tl.full([BLOCK], -1.0, tl.float32)
    acc_idx = lanes
    for start in range(0, V, BLOCK):
        offs = start + lanes
        valid = offs < V
        p = tl.load(p_row + offs, mask=valid, other=0.0).to(tl.float32)
        e = tl.load(noise_row + offs, mask=valid, other=1.0).to(tl.float32)
        acc, acc_idx = _fold(tl.where(valid, tl.math.div_rn(p, e), -1.0), offs, acc, acc_idx)
    _, idx = _reduce(acc, acc_idx)
    return idx


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
    out_ptr,  # [B, K+1] int64, out (written whole)
    part_val_ptr,  # [B, SPLIT] fp32 scratch: each slice's race maximum (SPLIT > 1)
    part_idx_ptr,  # [B, SPLIT] int32 scratch: its index
    part_mass_ptr,  # [B, SPLIT] fp32 scratch: each slice's residual mass
    arrivals_ptr,  # [B] int32, zeroed: how many of the row's programs have written their partial
    K,
    V,
    CHUNK,  # vocabulary slice per program (a multiple of BLOCK)
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
    SPLIT: tl.constexpr,  # programs per batch row
    SPLIT_POW2: tl.constexpr,
    K_POW2: tl.constexpr,  # next power of two >= K + 1
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    s = tl.program_id(1)
    n = tl.load(num_draft_ptr + b)
    # 1. accept d_i with probability min(1, p/q): while u_i * q_i(d_i) < p_i(d_i); with one-hot q, while d_i
    #    wins the exponential race on p_i (probability p_i(d_i); see the reference's docstring). Every program
    #    of the row computes this; slice 0 writes the accepted tokens.
    ks = tl.arange(0, K_POW2)  # draft positions (and the final/bonus position K)
    in_block = ks < n
    d_vec = tl.load(draft_ptr + b * stride_db + ks, mask=in_block, other=0)  # [K_POW2]
    if HAS_Q:
        # every test at once (gathers of p_i(d_i), q_i(d_i), u_i): no chain of K dependent loads
        q_vec = tl.load(q_ptr + b * stride_qb + ks * stride_qk + d_vec, mask=in_block, other=0.0).to(tl.float32)
        p_vec = tl.load(p_ptr + b * stride_pb + ks * stride_pk + d_vec, mask=in_block, other=0.0).to(tl.float32)
        u_vec = tl.load(uniforms_ptr + b * stride_ub + ks, mask=in_block, other=1.0).to(tl.float32)
        one_hot_vec = q_vec >= 1.0
        plain_reject = in_block & (q_vec < 1.0) & (u_vec * q_vec >= p_vec)
        accepted = tl.min(tl.where(plain_reject, ks, n.to(tl.int32)), axis=0).to(tl.int32)  # first one, else n
        # a one-hot entry (q_i(d_i) = 1) before it is tested by its race, in order (rare with sampled q)
        if tl.sum(tl.where(one_hot_vec & (ks < accepted), 1, 0), axis=0) > 0:
            stop = 0
            for i in range(0, K):
                is_one_hot = tl.sum(tl.where((ks == i) & one_hot_vec, 1, 0), axis=0) > 0
                if (stop == 0) & (i < accepted) & is_one_hot:
                    d = tl.load(draft_ptr + b * stride_db + i)
                    p_row_i = p_ptr + b * stride_pb + i * stride_pk
                    if _race_winner(p_row_i, noise_ptr + b * stride_nb + i * stride_nk, V, BLOCK) != d:
                        accepted = i
                        stop = 1
    else:
        accepted = 0
        done = 0
        for i in range(0, K):
            if (done == 0) & (i < n):
                d = tl.load(draft_ptr + b * stride_db + i)
                p_row_i = p_ptr + b * stride_pb + i * stride_pk
                if _race_winner(p_row_i, noise_ptr + b * stride_nb + i * stride_nk, V, BLOCK) == d:
                    accepted += 1
                else:
                    done = 1
    if s == 0:  # the accepted tokens, and -1 after position a (the final token's program writes position a)
        tl.store(out_ptr + b * stride_ob + ks, tl.where(ks < accepted, d_vec, -1), mask=(ks <= K) & (ks != accepted))
    # 2. the final token at position a: from norm(max(0, p - q)) after a rejection, else the bonus from p,
    #    drawn by the exponential race argmax(dist / noise); an empty residual falls back to p. This program
    #    reads its slice [lo, hi) of row a.
    a = accepted
    rejected = a < n
    d_a = tl.load(draft_ptr + b * stride_db + a, mask=rejected, other=-1)
    p_row = p_ptr + b * stride_pb + a * stride_pk
    q_row = q_ptr + b * stride_qb + a * stride_qk
    noise_row = noise_ptr + b * stride_nb + a * stride_nk
    lo = s * CHUNK
    hi = tl.minimum(lo + CHUNK, V)
    lanes = tl.arange(0, BLOCK)
    acc = tl.full([BLOCK], -1.0, tl.float32)
    acc_idx = lo + lanes
    mass = tl.zeros([BLOCK], tl.float32)
    for start in range(lo, hi, BLOCK):
        offs = start + lanes
        valid = offs < hi
        p = tl.load(p_row + offs, mask=valid, other=0.0).to(tl.float32)
        e = tl.load(noise_row + offs, mask=valid, other=1.0).to(tl.float32)
        if HAS_Q:
            # row a of q exists only after a rejection (a < n <= K); a bonus position has no q row
            q_valid = valid & ((offs * 0 + rejected.to(tl.int32)) != 0)  # (the interpreter wants a tensor mask)
            q = tl.load(q_row + offs, mask=q_valid, other=0.0).to(tl.float32)
        else:
            q = tl.where(offs == d_a, 1.0, 0.0)
        r = tl.where(rejected, tl.maximum(p - q, 0.0), p)  # the residual (or p itself for a bonus token)
        mass += tl.where(valid, r, 0.0)
        acc, acc_idx = _fold(tl.where(valid, tl.math.div_rn(r, e), -1.0), offs, acc, acc_idx)
    best, best_idx = _reduce(acc, acc_idx)
    residual_mass = tl.sum(mass, axis=0)
    if SPLIT == 1:
        final = best_idx
        if residual_mass <= 0.0:  # p == q: an empty residual (a rejection had probability 0); race on p
            final = _race_winner(p_row, noise_row, V, BLOCK)
        tl.store(out_ptr + b * stride_ob + a, final.to(tl.int64))
        tl.store(num_accepted_ptr + b, a)
    else:
        part = b * SPLIT + s
        tl.store(part_val_ptr + part, best)
        tl.store(part_idx_ptr + part, best_idx)
        tl.store(part_mass_ptr + part, residual_mass)
        tl.debug_barrier()  # every thread's stores precede the release below
        arrived = tl.atomic_add(arrivals_ptr + b, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:  # the row's last program: combine the partials (lower slice wins ties)
            tl.debug_barrier()
            slices = tl.arange(0, SPLIT_POW2)
            base = b * SPLIT + slices
            mine = slices < SPLIT
            vals = tl.load(part_val_ptr + base, mask=mine, other=-2.0, volatile=True)
            idx = tl.load(part_idx_ptr + base, mask=mine, other=INT32_MAX, volatile=True)
            total = tl.sum(tl.load(part_mass_ptr + base, mask=mine, other=0.0, volatile=True), axis=0)
            _, final = _reduce(vals, idx)
            if total <= 0.0:  # empty residual: race on p over the whole row (rare: p == q)
                final = _race_winner(p_row, noise_row, V, BLOCK)
            tl.store(out_ptr + b * stride_ob + a, final.to(tl.int64))
            tl.store(num_accepted_ptr + b, a)


@triton.jit
def _tree_greedy_verify_kernel(
    logits_ptr,  # [B, N+1, V] row 0: after the last committed token; row 1+i: after node i
    tokens_ptr,  # [B, N] int64
    parents_ptr,  # [B, N] int64, -1: a child of the last committed token
    num_draft_ptr,  # [B] int64
    num_accepted_ptr,  # [B] int64, out
    nodes_ptr,  # [B, N] int64, out, pre-filled with -1
    out_ptr,  # [B, N+1] int64, out, pre-filled with -1
    N,
    V,
    stride_lb,
    stride_lk,
    stride_tb,
    stride_pb,
    stride_nb,
    stride_ob,
    N1_POW2: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per tree. Nodes are visited in order (parents first); a row's argmax is read only when an
    accepted node (or the root) has a child to check against it, and kept in registers for its siblings."""
    b = tl.program_id(0)
    n = tl.load(num_draft_ptr + b)
    rows = tl.arange(0, N1_POW2)  # logits row r = after node r-1 (r = 0: the root)
    argmax = tl.full([N1_POW2], -1, tl.int64)  # per row, -1 until read
    accepted = rows == 0  # per row: its node is accepted (the root always is)
    depth = tl.zeros([N1_POW2], tl.int64)  # per row: its node's depth
    best = tl.full([], 0, tl.int64)  # row of the deepest accepted node (the lowest index among equals), 0 = root
    best_depth = tl.full([], 0, tl.int64)
    for i in range(0, N):
        if i < n:
            parent_row = tl.load(parents_ptr + b * stride_pb + i) + 1
            on_row = rows == parent_row
            if tl.sum(tl.where(on_row, accepted, 0)) > 0:
                top = tl.sum(tl.where(on_row, argmax, 0))
                if top < 0:  # not read yet
                    top = _row_argmax(logits_ptr + b * stride_lb + parent_row * stride_lk, V, BLOCK).to(tl.int64)
                    argmax = tl.where(on_row, top, argmax)
                token = tl.load(tokens_ptr + b * stride_tb + i)
                if token == top:
                    d = tl.sum(tl.where(on_row, depth, 0)) + 1
                    accepted = accepted | (rows == i + 1)
                    depth = tl.where(rows == i + 1, d, depth)
                    if d > best_depth:
                        best, best_depth = tl.zeros([], tl.int64) + i + 1, d
    final = tl.sum(tl.where(rows == best, argmax, 0))
    if final < 0:  # the path's last node had no child to check: its row is read now
        final = _row_argmax(logits_ptr + b * stride_lb + best * stride_lk, V, BLOCK).to(tl.int64)
    tl.store(out_ptr + b * stride_ob + best_depth, final)
    tl.store(num_accepted_ptr + b, best_depth)
    row = best
    for slot in range(0, N):  # walk from the path's end to the root, writing each node at its depth
        if slot < best_depth:
            node = row - 1
            tl.store(nodes_ptr + b * stride_nb + best_depth - 1 - slot, node)
            tl.store(out_ptr + b * stride_ob + best_depth - 1 - slot, tl.load(tokens_ptr + b * stride_tb + node))
            row = tl.load(parents_ptr + b * stride_pb + node) + 1


def _outputs(b: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    num_accepted = torch.empty(b, dtype=torch.long, device=device)  # [B] every row is written
    out = torch.full((b, k + 1), -1, dtype=torch.long, device=device)  # [B, K+1]
    return num_accepted, out


def _block(v: int, block: int | None) -> int:
    return min(block or BLOCK, triton.next_power_of_2(v))


def auto_split(b: int, v: int, block: int, device: torch.device) -> int:
    """Programs per batch row for rejection sampling with q: about four per multiprocessor in all (so loads from
    several programs are in flight on each), at most one per tile. The interpreter (CPU) uses 3 so tests exercise
    the split path."""
    if device.type != "cuda":
        return max(1, min(3, triton.cdiv(v, block)))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(4 * sms, b), triton.cdiv(v, block)))


def greedy_verify(
    target_logits: torch.Tensor,  # [B, K+1, V]
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    block: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, k1, v = target_logits.shape
    logits = target_logits.contiguous()
    drafts = draft_tokens.long().contiguous()
    num = num_draft.long().contiguous()
    num_accepted, out = _outputs(b, k1 - 1, logits.device)
    _greedy_verify_kernel[(b,)](
        logits, drafts, num, num_accepted, out, k1 - 1, v,
        logits.stride(0), logits.stride(1), drafts.stride(0), out.stride(0),
        BLOCK=_block(v, block), num_warps=num_warps or NUM_WARPS,
    )  # fmt: skip
    return num_accepted, out


def rejection_sample(
    target_probs: torch.Tensor,  # [B, K+1, V]
    draft_probs: torch.Tensor | None,  # [B, K, V] or None (one-hot q)
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    uniforms: torch.Tensor,  # [B, K]
    noise: torch.Tensor,  # [B, K+1, V]
    split: int | None = None,  # programs per row (with q); None: auto_split, or SPECDEC_KERNEL_SPLIT
    block: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, k1, v = target_probs.shape
    device = target_probs.device
    p = target_probs.contiguous()
    q = draft_probs.contiguous() if draft_probs is not None else p  # a placeholder pointer when one-hot
    drafts = draft_tokens.long().contiguous()
    num = num_draft.long().contiguous()
    u = uniforms.contiguous()
    e = noise.contiguous()
    tile = _block(v, block or REJECTION_BLOCK)
    if draft_probs is None:
        split = 1  # one-hot acceptance reads whole rows in sequence: one program per row
    elif split is None:
        split = int(os.environ.get("SPECDEC_KERNEL_SPLIT", "0")) or auto_split(b, v, tile, device)
    chunk = triton.cdiv(triton.cdiv(v, split), tile) * tile  # [lo, lo + chunk) per program, whole tiles
    split = triton.cdiv(v, chunk)  # no empty slice
    num_accepted = torch.empty(b, dtype=torch.long, device=device)  # [B] written by the kernel
    out = torch.empty(b, k1, dtype=torch.long, device=device)  # [B, K+1] written by the kernel
    part_val = torch.empty(b, split, dtype=torch.float32, device=device)  # [B, SPLIT]
    part_idx = torch.empty(b, split, dtype=torch.int32, device=device)  # [B, SPLIT]
    part_mass = torch.empty(b, split, dtype=torch.float32, device=device)  # [B, SPLIT]
    arrivals = torch.zeros(b if split > 1 else 1, dtype=torch.int32, device=device)  # [B]
    _rejection_sample_kernel[(b, split)](
        p, q, drafts, num, u, e, num_accepted, out, part_val, part_idx, part_mass, arrivals, k1 - 1, v, chunk,
        p.stride(0), p.stride(1), q.stride(0), q.stride(1), drafts.stride(0), u.stride(0),
        e.stride(0), e.stride(1), out.stride(0),
        HAS_Q=draft_probs is not None, SPLIT=split, SPLIT_POW2=triton.next_power_of_2(split),
        K_POW2=triton.next_power_of_2(k1),
        BLOCK=tile, num_warps=num_warps or NUM_WARPS,
    )  # fmt: skip
    return num_accepted, out


def tree_greedy_verify(
    target_logits: torch.Tensor,  # [B, N+1, V]
    draft_tokens: torch.Tensor,  # [B, N]
    parents: torch.Tensor,  # [B, N]
    num_draft: torch.Tensor,  # [B]
    block: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n1, v = target_logits.shape
    device = target_logits.device
    logits = target_logits.contiguous()
    tokens = draft_tokens.long().contiguous()
    tree = parents.long().contiguous()
    num = num_draft.long().contiguous()
    num_accepted = torch.empty(b, dtype=torch.long, device=device)  # [B] every row is written
    nodes = torch.full((b, n1 - 1), -1, dtype=torch.long, device=device)  # [B, N]
    out = torch.full((b, n1), -1, dtype=torch.long, device=device)  # [B, N+1]
    _tree_greedy_verify_kernel[(b,)](
        logits, tokens, tree, num, num_accepted, nodes, out, n1 - 1, v,
        logits.stride(0), logits.stride(1), tokens.stride(0), tree.stride(0), nodes.stride(0), out.stride(0),
        N1_POW2=triton.next_power_of_2(n1), BLOCK=_block(v, block), num_warps=num_warps or NUM_WARPS,
    )  # fmt: skip
    return num_accepted, nodes, out
