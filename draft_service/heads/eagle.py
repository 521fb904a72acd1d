"""EAGLE: one decoder layer that predicts the target's next feature from (feature, next token).

Input at position j is fc(concat(f_j, emb(t_{j+1}))), f_j being the target's final hidden state after token j;
the layer (with its own KV cache over positions) outputs a predicted f_{j+1}, and a reduced LM head over the N
most frequent tokens (EAGLE-3's draft vocabulary, initialised from the target's embedding rows) turns it into
the token at j+2. Drafting continues autoregressively on its own predicted features.

Around a verdict: the verifier returns features for the positions it fed, so with committed length n the
newest true feature is f_{n-2}; its pair (f_{n-2}, t_{n-1}) yields the first draft, for position n.

Trees (`EagleDrafter.propose_tree`, greedy): EAGLE-2's dynamic tree. Each level keeps the `beam` most likely nodes
(by the product of draft probabilities along their path), runs the layer once over all of them (each attending to
the true pairs and its own ancestors' pairs), and scores their top children; the block is the `nodes` most likely
nodes of all levels (a child is never likelier than its parent, so they form a tree).

Sampled trees (temperature > 0): the children of a node are drawn from q WITHOUT replacement (in that order), and
how many a node gets is settled before they are drawn (the budget spread over the levels), as recursive rejection
sampling needs to stay lossless; which nodes grow children may depend on their scores, but no drawn node is
dropped for its own score (that would bias what the verifier accepts), so the block is every node drawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from specdec.draft_service.heads.common import FeatureBuffer
from specdec.draft_service.heads.layers import DecoderLayer, LayerCache, LayerShape, RMSNorm, rotary
from specdec.sampling import SamplingConfig, draft_token, logits_to_probs, make_generator, reseed_for_position

Proposal = tuple[int, torch.Tensor | None]
TREE_BEAM = 4  # nodes expanded per level (and children scored per expanded node)


@dataclass
class TreeBlock:
    """A proposed token tree: parents precede children; -1 is the last committed token."""

    tokens: list[int]
    parents: list[int]
    scores: list[float]  # each token's path log-probability under the draft (the product along its path)
    probs: list[torch.Tensor] = field(default_factory=list)  # sampled trees: q [V] each token (and its siblings)
    # was drawn from; empty for greedy trees


@dataclass
class _Node:
    token: int
    parent: int  # index into the drafter's node list, -1: the root
    depth: int  # 0: a child of the root (position n)
    score: float  # log of the product of draft probabilities along the path
    feature: torch.Tensor  # [1, 1, H] the predicted feature this node's token was drafted from
    pairs: list[int]  # cache offsets (after the true pairs) of its ancestors' pairs, once expanded: its own last
    q: torch.Tensor | None = None  # sampled trees: [N] the draft-vocabulary distribution it was drawn from


class EagleHead(nn.Module):
    vocab_ids: torch.Tensor  # [N] the draft vocabulary as full-vocabulary ids (a buffer)

    def __init__(self, shape: LayerShape, draft_vocab_size: int) -> None:
        super().__init__()
        h = shape.hidden_size
        self.shape = shape
        self.fc = nn.Linear(2 * h, h, bias=True)
        self.layer = DecoderLayer(shape)
        self.norm = RMSNorm(h, shape.rms_eps)  # the target's features are post-norm: so are the predictions
        self.lm_head = nn.Linear(h, draft_vocab_size, bias=False)
        self.register_buffer("vocab_ids", torch.zeros(draft_vocab_size, dtype=torch.long))  # [N] full-vocab ids

    def inputs(self, features: torch.Tensor, next_embeddings: torch.Tensor) -> torch.Tensor:
        """features, next_embeddings [B, T, H] -> layer inputs [B, T, H]."""
        return self.fc(torch.cat([features, next_embeddings], dim=-1))

    def forward_tree(
        self,
        features: torch.Tensor,  # [1, T, H] each node's feature (its parent's prediction)
        next_embeddings: torch.Tensor,  # [1, T, H] each node's token embedding
        positions: torch.Tensor,  # [T] each node's pair position
        mask: torch.Tensor,  # [T, L+T] bool over the cache and these T new pairs
        cache: LayerCache,
    ) -> torch.Tensor:
        """Append T tree pairs (each seeing what `mask` allows); returns their predicted features [1, T, H]."""
        cos, sin = rotary(positions, self.shape.head_dim, self.shape.rope_theta)
        x = self.inputs(features, next_embeddings)
        q, k, v = self.layer.qkv(x, cos, sin)
        keys, values = cache.append(k, v)
        return self.norm(self.layer.finish(x, q, keys, values, mask))

    def forward_cached(self, features: torch.Tensor, next_embeddings: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Append positions cache.length .. for one sequence ([1, T, H] each); returns predicted features [1, T, H]."""
        start, t = cache.length, features.shape[1]
        positions = torch.arange(start, start + t)
        cos, sin = rotary(positions, self.shape.head_dim, self.shape.rope_theta)
        x = self.inputs(features, next_embeddings)
        q, k, v = self.layer.qkv(x, cos, sin)
        keys, values = cache.append(k, v)
        # causal over the whole cache: query i (position start+i) sees positions <= start+i
        mask = torch.arange(keys.shape[2])[None, :] <= positions[:, None]  # [T, L]
        return self.norm(self.layer.finish(x, q, keys, values, mask))

    def unrolled(
        self, features: torch.Tensor, next_embeddings: torch.Tensor, depth: int, key_mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """Training-time test: `depth` drafting steps over whole sequences at once. features, next_embeddings
        [B, T, H] (pair j = (f_j, emb(t_{j+1}))); key_mask [B, T] marks real positions.

        Step 0 feeds the true features; step s feeds, at position j, the feature predicted at step s-1 for j, and
        attends to true keys at positions <= j-s and to its own chain of predicted keys (steps 1..s at positions
        j-s+1 .. j), exactly what drafting the (s+1)-th token sees. Returns each step's predictions [B, T, H]
        (row j predicts f_{j+1}; rows j < s of step s are meaningless)."""
        _, t, _ = features.shape
        positions = torch.arange(t)
        cos, sin = rotary(positions, self.shape.head_dim, self.shape.rope_theta)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        step_features = features
        i, j = positions[None, :], positions[:, None]  # key index, query index
        for s in range(depth):
            x = self.inputs(step_features, next_embeddings)
            q, k, v = self.layer.qkv(x, cos, sin)
            keys.append(k)
            values.append(v)
            blocks = [(i <= j - s)]  # true keys
            blocks += [(i == j - s + r) for r in range(1, s + 1)]  # the chain of predicted keys
            mask = torch.cat(blocks, dim=1)[None, None] & key_mask.repeat(1, s + 1)[:, None, None, :]  # [B,1,T,(s+1)T]
            mask[..., s * t :] |= torch.eye(t, dtype=torch.bool)  # a query always sees itself: no empty row at padding
            out = self.norm(self.layer.finish(x, q, torch.cat(keys, 2), torch.cat(values, 2), mask))  # [B, T, H]
            outputs.append(out)
            # the next step's input at j is this step's prediction for j (made at j-1)
            step_features = torch.cat([features[:, :1], out[:, :-1]], dim=1).detach()
        return outputs


class EagleDrafter:
    """Drafts with an EagleHead over one session: true features arrive with each commit (observe_hidden); before
    each block the layer runs once over the new true (feature, token) pairs, then on its own predictions."""

    incremental = True
    match_length = 0

    def __init__(self, head: EagleHead, embedding: torch.Tensor, vocab_size: int, sampling: SamplingConfig) -> None:
        self.head = head
        self.embedding = embedding  # [V, H] the target's token embedding (frozen, shared)
        self.vocab_size = vocab_size
        self.sampling = sampling
        self.sends_probs = not sampling.greedy
        self.features = FeatureBuffer(head.shape.hidden_size)
        self.cache = LayerCache()
        self.pair_tokens: list[int] = []  # t_{j+1} of each true pair j in the cache
        self.generator = make_generator(sampling.seed, torch.device("cpu"))

    def observe_hidden(self, start: int, hidden: torch.Tensor) -> None:
        self.features.add(start, hidden)
        self._rollback(min(len(self.pair_tokens), start))  # pairs from `start` on used replaced features

    def _rollback(self, pairs: int) -> None:
        del self.pair_tokens[pairs:]
        self.cache.rollback(pairs)

    def _root_feature(self, committed: Sequence[int]) -> torch.Tensor | None:
        """Run the layer over the new true pairs; returns the predicted f_{n-1} [1, 1, H] (the first draft's
        feature), or None when there is no feature for position n-2 yet (the first block of a session)."""
        n = len(committed)
        if len(self.features) < n - 1 or n < 2:
            return None
        # keep the true pairs whose token still matches the committed sequence; drop drafted ones
        keep = 0
        while keep < len(self.pair_tokens) and self.pair_tokens[keep] == committed[keep + 1]:
            keep += 1
        keep = min(keep, n - 2)  # the newest true pair always runs again: its output is the first draft's feature
        self._rollback(keep)
        new_pairs = range(keep, n - 1)  # pairs (f_j, t_{j+1}) for j = keep .. n-2
        tokens = torch.tensor([committed[j + 1] for j in new_pairs])
        features = self.features.rows[keep : n - 1][None]  # [1, T, H]
        predicted = self.head.forward_cached(features, self.embedding[tokens][None], self.cache)  # [1, T, H]
        self.pair_tokens.extend(int(t) for t in tokens)
        return predicted[:, -1:]  # [1, 1, H] predicted f_{n-1}

    @torch.inference_mode()
    def propose(self, committed: Sequence[int], max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        n = len(committed)
        feature = self._root_feature(committed)
        if feature is None:
            return
        for i in range(max_tokens):
            reduced = self.head.lm_head(feature[0, 0])  # [N]
            drafted = draft_token(
                reduced, self.sampling, self.generator, n + i, min_confidence, self.head.vocab_ids, self.vocab_size
            )
            if drafted is None:
                return
            yield drafted
            if i + 1 < max_tokens:  # the pair (predicted f_{n-1+i}, drafted token) predicts the next feature
                token_emb = self.embedding[drafted[0]][None, None]  # [1, 1, H]
                feature = self.head.forward_cached(feature, token_emb, self.cache)

    @torch.inference_mode()
    def propose_tree(
        self, committed: Sequence[int], depth: int, nodes: int, beam: int = TREE_BEAM, min_probability: float = 0.0
    ) -> TreeBlock:
        """A greedy token tree of at most `nodes` tokens, at most `depth` deep (see the module docstring), holding
        only tokens whose path probability under the draft is at least `min_probability` (each costs the target a
        verified position: an unlikely one costs more than it is expected to gain)."""
        floor = math.log(min_probability) if min_probability > 0 else -math.inf
        root = self._root_feature(committed)
        if root is None or depth < 1 or nodes < 1:
            return TreeBlock([], [], [])
        sampled = not self.sampling.greedy
        true_pairs = self.cache.length  # n-1: the tree's pairs go after them and are dropped at the end
        tree: list[_Node] = []
        first = min(beam, nodes) if sampled else beam
        frontier = self._children(root[0], [-1], [0.0], [[]], 0, [first], tree, len(committed))
        for level in range(1, depth):
            frontier = [i for i in sorted(frontier, key=lambda i: -tree[i].score)[:beam] if tree[i].score >= floor]
            counts = [beam] * len(frontier)
            if sampled:  # the rest of the budget, spread over the levels left, settled before anything is drawn
                counts = _children_counts(nodes - len(tree), depth - level, len(frontier), beam)
                frontier = frontier[: len(counts)]
            if not frontier:  # nothing likely enough to grow
                break
            expanded = self._expand(frontier, tree, true_pairs + level - 1, true_pairs)
            frontier = self._children(
                expanded, frontier, [tree[i].score for i in frontier], [tree[i].pairs for i in frontier], level, counts,
                tree, len(committed),
            )  # fmt: skip
        self.cache.rollback(true_pairs)
        if sampled:  # every drawn node, level by level, siblings in the order they were drawn
            full: dict[int, torch.Tensor] = {}  # per sibling group (one q object): q over the whole vocabulary
            for node in tree:
                assert node.q is not None
                if id(node.q) not in full:
                    full[id(node.q)] = torch.zeros(self.vocab_size)  # [V] q is zero outside the draft vocabulary
                    full[id(node.q)][self.head.vocab_ids] = node.q
            probs = [full[id(node.q)] for node in tree]
            parents = [node.parent for node in tree]
            return TreeBlock([node.token for node in tree], parents, [node.score for node in tree], probs)
        likely = [i for i in range(len(tree)) if tree[i].score >= floor]
        chosen = sorted(likely, key=lambda i: (-tree[i].score, tree[i].depth, i))[:nodes]
        order = sorted(chosen, key=lambda i: (tree[i].depth, i))  # parents before children
        index = {node: i for i, node in enumerate(order)}
        parents = [index[tree[i].parent] if tree[i].parent >= 0 else -1 for i in order]
        return TreeBlock([tree[i].token for i in order], parents, [tree[i].score for i in order])

    def _children(
        self, features: torch.Tensor, parents: list[int], scores: list[float], pairs: list[list[int]], depth: int,
        counts: list[int], tree: list[_Node], position: int,
    ) -> list[int]:  # fmt: skip
        """`counts[row]` children of each parent (features [P, H]: the parents' predictions): greedy, its likeliest;
        sampling, drawn from q without replacement (from the generator reseeded for (position, parent)). Returns the
        new nodes' indices."""
        logits = self.head.lm_head(features).float()  # [P, N] over the draft vocabulary
        if self.sampling.greedy:
            logp = torch.log_softmax(logits, dim=-1)  # [P, N]
            top = torch.topk(logp, min(max(counts), logp.shape[-1]), dim=-1)  # [P, beam]
            picks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = [
                (top.indices[row], top.values[row], None) for row in range(len(parents))
            ]
        else:
            q = logits_to_probs(logits, self.sampling)  # [P, N]
            picks = []  # index [m] (draw order), their log q, q
            for row, parent in enumerate(parents):
                drawn = min(counts[row], int((q[row] > 0).sum()))  # without replacement: at most the support
                gen = reseed_for_position(self.generator, self.sampling.seed, position, f"tree-draft-{parent}")
                index = torch.multinomial(q[row], drawn, replacement=False, generator=gen)  # [m] in draw order
                picks.append((index, torch.log(q[row, index]), q[row]))
        added = []
        for row, parent in enumerate(parents):
            index, logp_row, q_row = picks[row]
            for value, token in zip(logp_row.tolist(), index.tolist(), strict=True):
                tree.append(_Node(int(self.head.vocab_ids[token]), parent, depth, scores[row] + value,
                                  features[row][None, None], pairs[row], q_row))  # fmt: skip
                added.append(len(tree) - 1)
        return added

    def _expand(self, frontier: list[int], tree: list[_Node], position: int, true_pairs: int) -> torch.Tensor:
        """Run the layer over the frontier's pairs (feature, token) at `position`; returns their predictions
        [F, H] (their children's features). Each pair sees the true pairs, its ancestors' pairs and itself."""
        start = self.cache.length - true_pairs  # tree pairs already cached
        f = len(frontier)
        mask = torch.zeros(f, true_pairs + start + f, dtype=torch.bool)  # [F, L+F]
        mask[:, :true_pairs] = True
        for row, i in enumerate(frontier):
            for pair in tree[i].pairs:
                mask[row, true_pairs + pair] = True
            mask[row, true_pairs + start + row] = True
            tree[i].pairs = [*tree[i].pairs, start + row]
        features = torch.cat([tree[i].feature for i in frontier], dim=1)  # [1, F, H]
        tokens = torch.tensor([tree[i].token for i in frontier])
        positions = torch.full((f,), position, dtype=torch.long)
        return self.head.forward_tree(features, self.embedding[tokens][None], positions, mask, self.cache)[0]

    def close(self) -> None:
        self._rollback(0)
        self.features.truncate(0)

    def kv_cache_bytes(self) -> int:
        return self.cache.nbytes() + self.features.nbytes()


def _children_counts(budget: int, levels_left: int, frontier: int, beam: int) -> list[int]:
    """Children per frontier node (likeliest first) for a sampled tree: this level's share of the budget left,
    at most `beam` each, nodes without a share dropped."""
    share = max(1, budget // levels_left) if budget > 0 else 0
    counts: list[int] = []
    for _ in range(frontier):
        take = min(beam, share - sum(counts))
        if take <= 0:
            break
        counts.append(take)
    return counts
