"""Pure-torch reference implementations of the acceptance step. Batched over B sessions.

Terms (as in vLLM's rejection sampler):
- accepted tokens: the leading draft tokens the rule keeps;
- recovered token: at the first rejected position, a token drawn from the target's corrected distribution
  (greedy: the target's argmax; sampling: norm(max(0, p - q)));
- bonus token: when all num_draft draft tokens are accepted, one more token drawn from the target's
  distribution at the next position (free: the verify forward pass computed it anyway).
Every output row is [accepted..., recovered-or-bonus, -1 padding...] of length K+1.
"""

from __future__ import annotations

import torch

PAD = -1


def _accepted_prefix_length(accept: torch.Tensor, num_draft: torch.Tensor) -> torch.Tensor:
    """accept[B, K] bool -> number of leading True values among the first num_draft[b], as [B] long."""
    k = accept.shape[1]
    valid = torch.arange(k, device=accept.device)[None, :] < num_draft[:, None]  # [B, K]
    return torch.cumprod((accept & valid).long(), dim=1).sum(dim=1)  # [B]


def _assemble(draft_tokens: torch.Tensor, num_accepted: torch.Tensor, final_token: torch.Tensor) -> torch.Tensor:
    """Rows of accepted draft tokens, then final_token[b] at index num_accepted[b], then PAD. [B, K+1]."""
    b, k = draft_tokens.shape
    out = torch.full((b, k + 1), PAD, dtype=torch.long, device=draft_tokens.device)  # [B, K+1]
    keep = torch.arange(k, device=draft_tokens.device)[None, :] < num_accepted[:, None]  # [B, K]
    out[:, :k] = torch.where(keep, draft_tokens.long(), PAD)
    out[torch.arange(b, device=out.device), num_accepted] = final_token
    return out


def greedy_verify(
    target_logits: torch.Tensor,  # [B, K+1, V]
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B] draft tokens actually proposed per row (<= K)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact-match verification: accept d_i while it equals the target's argmax at its position.

    Returns num_accepted[B] and output_tokens[B, K+1] (accepted, then the target's argmax, then PAD).
    """
    k = draft_tokens.shape[1]
    target_argmax = target_logits.argmax(dim=-1)  # [B, K+1]; first index on ties, as HF greedy
    accept = draft_tokens.long() == target_argmax[:, :k]  # [B, K]
    num_accepted = _accepted_prefix_length(accept, num_draft)  # [B]
    final = target_argmax.gather(1, num_accepted[:, None]).squeeze(1)  # [B]
    return num_accepted, _assemble(draft_tokens, num_accepted, final)


def rejection_sample(
    target_probs: torch.Tensor,  # [B, K+1, V] p, after temperature/top-k/top-p
    draft_probs: torch.Tensor | None,  # [B, K, V] q; None means one-hot on each draft token
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    uniforms: torch.Tensor,  # [B, K] U[0, 1)
    noise: torch.Tensor,  # [B, K+1, V] Exp(1)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leviathan et al. Algorithm 1, lossless: the committed tokens are distributed exactly as p.

    Rule: accept d_i with probability min(1, p_i(d_i) / q_i(d_i)), i.e. when u_i * q_i(d_i) < p_i(d_i).
    At the first rejection a, draw from norm(max(0, p_a - q_a)); if all are accepted, draw the bonus
    token from p_K. Draws use the exponential race argmax(dist / noise), so no host sync is needed.

    One-hot q (prompt lookup, greedy drafts, any row with q_i(d_i) = 1) is the same rule with the accept
    test coupled to the race:
    d_i is accepted when it wins the race argmax(p_i / noise_i), which happens with probability
    p_i(d_i) = min(1, p/q); after a rejection the race's winner is a draw from p_i without d_i, which is
    norm(max(0, p_i - q_i)). So every committed token is the winner of its position's race on p: with noise
    drawn per position from the seed, a seeded completion is the target's own sample, whatever was drafted.
    """
    b, k = draft_tokens.shape
    rows = torch.arange(b, device=target_probs.device)  # [B]
    safe_tokens = draft_tokens.long().clamp_min(0)  # [B, K] PAD beyond num_draft -> any valid id
    wins_race = (target_probs[:, :k] / noise[:, :k]).argmax(dim=2) == safe_tokens  # [B, K]
    if draft_probs is None:  # one-hot q
        accept = wins_race
    else:
        p_of_draft = target_probs[:, :k].gather(2, safe_tokens[..., None]).squeeze(2)  # [B, K]
        q_of_draft = draft_probs.gather(2, safe_tokens[..., None]).squeeze(2)  # [B, K]
        accept = torch.where(q_of_draft >= 1.0, wins_race, uniforms * q_of_draft < p_of_draft)  # [B, K]
    num_accepted = _accepted_prefix_length(accept, num_draft)  # [B]

    p_at = target_probs[rows, num_accepted]  # [B, V] target distribution at the final position
    rejected = num_accepted < num_draft  # [B] False: bonus token
    if k > 0:
        at_draft = num_accepted.clamp_max(k - 1)  # [B]
        if draft_probs is None:
            q_at = torch.zeros_like(p_at).scatter_(1, safe_tokens[rows, at_draft][:, None], 1.0)  # [B, V]
        else:
            q_at = draft_probs[rows, at_draft]  # [B, V]
        residual = (p_at - q_at).clamp_min(0.0)  # [B, V]
        # p == q makes the residual empty, but then a rejection has probability 0; fall back to p.
        empty = residual.sum(dim=1, keepdim=True) <= 0  # [B, 1]
        residual = torch.where(empty, p_at, residual)
        dist = torch.where(rejected[:, None], residual, p_at)  # [B, V]
    else:
        dist = p_at
    final = (dist / noise[rows, num_accepted]).argmax(dim=1)  # [B] exponential race
    return num_accepted, _assemble(draft_tokens, num_accepted, final)


def tree_rejection_sample(
    target_probs: torch.Tensor,  # [B, N+1, V] p after temperature/top-k/top-p; row 0: the root's, row 1+i: node i's
    draft_probs: torch.Tensor,  # [B, N, V] q of node i: the distribution it and its siblings were drawn from
    draft_tokens: torch.Tensor,  # [B, N] children of a node in the order they were drawn
    parents: torch.Tensor,  # [B, N] each node's parent node, or -1 for a child of the last committed token
    num_draft: torch.Tensor,  # [B]
    uniforms: torch.Tensor,  # [B, N] U[0, 1), one per node
    noise: torch.Tensor,  # [B, N+1, V] Exp(1), one row per logits row
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recursive rejection sampling down a token tree (SpecInfer; Jeon et al. 2024), lossless: the committed tokens
    are distributed exactly as the target's own samples, provided each node's children were drawn from q WITHOUT
    replacement, in their index order, and how many children a node has was settled before they were drawn.

    At an accepted node (the root first), with target distribution p and children c_1 .. c_m drawn from q:
        q_j = q without c_1 .. c_{j-1}, renormalised (what c_j was drawn from)
        accept c_j when u_j * q_j(c_j) < p(c_j)      (probability min(1, p/q_j)): go down to c_j
        else p <- norm(max(0, p - q_j))              (the target given that c_j was not its token)
    When no child is accepted the recovered token is drawn from that p (the residual); at a leaf the bonus token
    from the leaf's p. Draws are exponential races argmax(dist / noise) on the node's noise row. A chain (one
    child per node) is exactly `rejection_sample` (for q < 1; it couples a one-hot q's test to the race).

    Returns num_accepted[B], accepted_nodes[B, N] (the path's node indices, then PAD) and output_tokens[B, N+1]
    (the path's tokens, the final token, then PAD), as `tree_greedy_verify`."""
    b, n = draft_tokens.shape
    device = draft_tokens.device
    num_accepted = torch.zeros(b, dtype=torch.long, device=device)
    nodes = torch.full((b, n), PAD, dtype=torch.long, device=device)
    out = torch.full((b, n + 1), PAD, dtype=torch.long, device=device)
    for row in range(b):
        size = int(num_draft[row])
        tree = parents[row, :size].tolist()
        tokens = draft_tokens[row, :size].tolist()
        node, path = -1, list[int]()
        while True:
            p = target_probs[row, node + 1].float()  # [V]
            drawn = torch.zeros_like(p, dtype=torch.bool)  # [V] siblings tried so far
            child = None
            for c in (i for i in range(size) if tree[i] == node):
                q = torch.where(drawn, 0.0, draft_probs[row, c].float())  # [V] q_j
                q = q / q.sum().clamp_min(torch.finfo(q.dtype).tiny)
                token = tokens[c]
                if float(uniforms[row, c]) * float(q[token]) < float(p[token]):
                    child = c
                    break
                residual = (p - q).clamp_min(0.0)  # [V]
                mass = residual.sum()
                p = residual / mass if mass > 0 else p  # an empty residual means p == q_j: a rejection had p 0
                drawn[token] = True
            if child is None:
                out[row, len(path)] = (p / noise[row, node + 1]).argmax()
                break
            path.append(child)
            node = child
        num_accepted[row] = len(path)
        nodes[row, : len(path)] = torch.tensor(path, dtype=torch.long)
        out[row, : len(path)] = torch.tensor([tokens[i] for i in path], dtype=torch.long)
    return num_accepted, nodes, out


# --- LOSSY policies: they accept more than the target would produce; output may differ from the target's ---


def _prob_of_drafts(target_probs: torch.Tensor, draft_tokens: torch.Tensor) -> torch.Tensor:
    """p_i(d_i) as [B, K]."""
    k = draft_tokens.shape[1]
    return target_probs[:, :k].gather(2, draft_tokens.long().clamp_min(0)[..., None]).squeeze(2)


def typical_accept(
    target_probs: torch.Tensor, draft_tokens: torch.Tensor, epsilon: float, delta: float
) -> torch.Tensor:
    """Medusa's typical acceptance: p(x) > min(epsilon, delta * exp(-H(p))). Returns accept[B, K]."""
    k = draft_tokens.shape[1]
    entropy = torch.special.entr(target_probs[:, :k]).sum(dim=2)  # [B, K], 0 log 0 = 0
    bar = torch.clamp(delta * torch.exp(-entropy), max=epsilon)  # [B, K]
    return _prob_of_drafts(target_probs, draft_tokens) > bar


def top_m_accept(target_probs: torch.Tensor, draft_tokens: torch.Tensor, m: int) -> torch.Tensor:
    """Accept x if it is among the target's top-m tokens (ties with the m-th included; never p(x) = 0)."""
    k = draft_tokens.shape[1]
    m = min(m, target_probs.shape[2])
    mth = torch.topk(target_probs[:, :k], m, dim=2).values[..., -1]  # [B, K]
    p = _prob_of_drafts(target_probs, draft_tokens)
    return (p >= mth) & (p > 0)


def threshold_accept(target_probs: torch.Tensor, draft_tokens: torch.Tensor, threshold: float) -> torch.Tensor:
    """Accept x if p(x) >= threshold."""
    return _prob_of_drafts(target_probs, draft_tokens) >= threshold


def commit_accepted(
    target_probs: torch.Tensor,  # [B, K+1, V]
    draft_tokens: torch.Tensor,  # [B, K]
    num_draft: torch.Tensor,  # [B]
    accept: torch.Tensor,  # [B, K] the policy's per-position verdicts
    noise: torch.Tensor | None,  # [B, K+1, V] Exp(1) when sampling; None: greedy
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the accepted prefix, then the target's own token at the first non-accepted position (or the
    bonus position): its argmax when greedy, a sample from p (exponential race) when sampling."""
    b = draft_tokens.shape[0]
    num_accepted = _accepted_prefix_length(accept, num_draft)  # [B]
    p_at = target_probs[torch.arange(b, device=target_probs.device), num_accepted]  # [B, V]
    if noise is not None:
        p_at = p_at / noise[torch.arange(b, device=noise.device), num_accepted]
    return num_accepted, _assemble(draft_tokens, num_accepted, p_at.argmax(dim=1))


def tree_greedy_verify(
    target_logits: torch.Tensor,  # [B, N+1, V] row 0: after the last committed token; row 1+i: after node i
    draft_tokens: torch.Tensor,  # [B, N] the tree's nodes
    parents: torch.Tensor,  # [B, N] each node's parent node, or -1 for a child of the last committed token
    num_draft: torch.Tensor,  # [B] nodes actually proposed per row (<= N)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact-match verification of a token tree (parents precede their children).

    A node is accepted when its token equals the target's argmax after its parent and its parent is accepted
    (the last committed token always is). The accepted path ends at the deepest accepted node (the lowest index
    among equally deep ones); its tokens, then the target's argmax after it (recovered or bonus token), are the
    output. A chain (parents -1, 0, 1, ...) gives exactly `greedy_verify`'s verdict.

    Returns num_accepted[B] (the path's length), accepted_nodes[B, N] (the path's node indices, root side first,
    then PAD) and output_tokens[B, N+1] (the path's tokens, the final token, then PAD)."""
    b, n = draft_tokens.shape
    device = draft_tokens.device
    target_argmax = target_logits.argmax(dim=-1)  # [B, N+1]; first index on ties, as HF greedy
    if n == 0:  # no tree: the target's own token
        none = torch.zeros(b, dtype=torch.long, device=device)
        return none, torch.full((b, 0), PAD, dtype=torch.long, device=device), target_argmax[:, :1]
    valid = torch.arange(n, device=device)[None, :] < num_draft[:, None]  # [B, N]
    parent_rows = (parents.long() + 1).clamp(min=0) * valid  # [B, N] the logits row each node is checked against
    match = (draft_tokens.long() == target_argmax.gather(1, parent_rows)) & valid  # [B, N]
    root = torch.ones(b, 1, dtype=torch.bool, device=device)
    accepted = match
    depth = torch.ones(b, n, dtype=torch.long, device=device)  # [B, N] 1 for the root's children
    for _ in range(n):  # parents precede children: n rounds reach every depth
        accepted = match & torch.cat([root, accepted], dim=1).gather(1, parent_rows)
        depth = torch.cat([torch.zeros_like(depth[:, :1]), depth], dim=1).gather(1, parent_rows) + 1
    # deepest accepted node, lowest index first among equals; -1 (the root) when none is accepted
    rank = torch.where(accepted, depth * (n + 1) - torch.arange(n, device=device), -1)  # [B, N]
    best = rank.argmax(dim=1)  # [B]
    any_accepted = accepted.any(dim=1)  # [B]
    end = torch.where(any_accepted, best, -1)  # [B] node index, -1 = root
    num_accepted = torch.where(any_accepted, depth.gather(1, best[:, None]).squeeze(1), 0)  # [B]
    nodes = torch.full((b, n), PAD, dtype=torch.long, device=device)  # [B, N]
    tokens = torch.full((b, n + 1), PAD, dtype=torch.long, device=device)  # [B, N+1]
    rows = torch.arange(b, device=device)
    tokens[rows, num_accepted] = target_argmax.gather(1, (end + 1)[:, None]).squeeze(1)
    node, slot = end.clone(), num_accepted - 1  # walk from the path's end to the root
    for _ in range(n):
        live = node >= 0
        if not bool(live.any()):
            break
        at = torch.where(live, slot, 0)
        nodes[rows[live], at[live]] = node[live]
        tokens[rows[live], at[live]] = draft_tokens.long()[rows[live], node[live]]
        node = torch.where(live, parents.long().gather(1, node.clamp(min=0)[:, None]).squeeze(1), -1)
        slot = slot - 1
    return num_accepted, nodes, tokens
