"""Suffix decoding (Oliaro et al., 2024): propose the most frequent continuation of the context's longest
matched suffix, looked up in two suffix trees — one over this request (prompt and output so far) and one over
earlier requests' prompts and outputs, shared by every session of the same target vocabulary.

A tree counts every substring up to `depth` tokens (a depth-capped suffix trie: node = substring, count =
its occurrences). A proposal walks the context's last m tokens from the root (the longest m <= max_match whose
substring has occurred with a continuation; found by binary search, since a suffix of a match also matches),
then follows the most frequent child while the estimated probability of the whole run (the product of
child count / sibling counts) stays >= min_prob, for at most spec_factor * m tokens: a long match earns a long
proposal, a one-token coincidence a short one. Of the two trees' proposals the one with the larger expected
accepted length (the sum of the running probabilities) wins.

The shared tree is bounded: past `max_tokens` tokens the oldest sequences are evicted, their counts removed
exactly. Everything runs on the draft service's one model worker thread, so nothing here locks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from specdec.draft_service.drafts import Proposal


@dataclass(frozen=True)
class SuffixConfig:
    depth: int = 32  # longest substring counted: match + proposal fit in it
    max_match: int = 16  # longest context suffix looked up
    spec_factor: float = 4.0  # propose at most spec_factor * (match length) tokens
    min_prob: float = 0.1  # stop proposing when the run's estimated probability falls below this
    cache_tokens: int = 16384  # tokens of earlier requests kept in the shared tree (~depth nodes per token)


class _Node:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.count = 0
        self.children: dict[int, _Node] = {}


class SuffixTree:
    """Occurrence counts of every substring of at most `depth` tokens of the sequences added to it."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.root = _Node()
        self.nodes = 1

    def add(self, tokens: Sequence[int], active: list[_Node] | None = None) -> list[_Node]:
        """Count the substrings that end in `tokens`, given the `active` nodes (the substrings ending just
        before them, deepest first, as returned by the previous call for the same sequence). O(depth) a token."""
        active = [] if active is None else active
        for token in tokens:
            grown = [self.root, *active][: self.depth]  # each substring grows by one token; one new starts here
            active = [self._child(node, token) for node in grown]  # shortest first
        return active

    def _child(self, node: _Node, token: int) -> _Node:
        child = node.children.get(token)
        if child is None:
            child = node.children[token] = _Node()
            self.nodes += 1
        child.count += 1
        return child

    def remove(self, tokens: Sequence[int]) -> None:
        """Undo `add(tokens)` for a whole sequence. `add` counted, for every start, each prefix of the next
        `depth` tokens: walk each such path once and decrement it deepest first, so a node reaches 0 only
        after its extensions did (count(ua) <= count(u)) and can be dropped then. O(depth) a token."""
        for start in range(len(tokens)):
            path = [self.root]
            for token in tokens[start : start + self.depth]:
                path.append(path[-1].children[token])
            for depth in range(len(path) - 1, 0, -1):
                node = path[depth]
                node.count -= 1
                if node.count == 0:
                    del path[depth - 1].children[tokens[start + depth - 1]]
                    self.nodes -= 1

    def find(self, path: Sequence[int]) -> _Node | None:
        node: _Node | None = self.root
        for token in path:
            node = node.children.get(token) if node is not None else None
        return node

    def propose(self, context: Sequence[int], max_tokens: int, config: SuffixConfig) -> tuple[int, list[int], float]:
        """(match length, proposed tokens, expected accepted length) for the end of `context`."""
        match, node = self._longest_match(context, config.max_match)
        if node is None or max_tokens <= 0:
            return 0, [], 0.0
        budget = min(max_tokens, math.ceil(config.spec_factor * match), self.depth - match)
        tokens: list[int] = []
        probability, expected = 1.0, 0.0
        while len(tokens) < budget and node.children:
            total = sum(child.count for child in node.children.values())
            token, child = max(node.children.items(), key=lambda item: item[1].count)
            probability *= child.count / total
            if probability < config.min_prob:
                break
            tokens.append(token)
            expected += probability
            node = child
        return match, tokens, expected

    def _longest_match(self, context: Sequence[int], max_match: int) -> tuple[int, _Node | None]:
        """The longest m <= max_match whose last-m-token substring occurred followed by something, and its
        node. Having a continuation is monotone in m (a suffix of such a substring has one too): bisect."""
        low, high = 1, min(max_match, len(context), self.depth - 1)
        best: tuple[int, _Node | None] = (0, None)
        while low <= high:
            m = (low + high) // 2
            node = self.find(context[len(context) - m :])
            if node is not None and node.children:
                best, low = (m, node), m + 1
            else:
                high = m - 1
        return best


class SuffixCache:
    """The shared tree over earlier requests, with first-in first-out eviction beyond `max_tokens`."""

    def __init__(self, config: SuffixConfig) -> None:
        self.config = config
        self.tree = SuffixTree(config.depth)
        self.sequences: deque[list[int]] = deque()
        self.tokens = 0

    def add(self, sequence: Sequence[int]) -> None:
        kept = list(sequence[-self.config.cache_tokens :])
        self.tree.add(kept)
        self.sequences.append(kept)
        self.tokens += len(kept)
        while self.tokens > self.config.cache_tokens:
            oldest = self.sequences.popleft()
            self.tree.remove(oldest)
            self.tokens -= len(oldest)


class SuffixDrafter:
    """The request's own tree (kept in step with the committed sequence) and the shared cache; on close the
    request's sequence joins the cache, so later requests can reuse its text."""

    sends_probs = False
    incremental = False  # the whole proposal is known at once

    def __init__(self, cache: SuffixCache) -> None:
        self.cache = cache
        self.config = cache.config
        self.local = SuffixTree(self.config.depth)
        self.sequence: list[int] = []
        self.active: list[_Node] = []
        self.match_length = 0

    def sync(self, committed: Sequence[int]) -> None:
        """Extend the local tree with the newly committed tokens; rebuild it if earlier tokens changed."""
        known = len(self.sequence)
        if len(committed) < known or list(committed[:known]) != self.sequence:
            self.local, self.sequence, self.active, known = SuffixTree(self.config.depth), [], [], 0
        fresh = [int(t) for t in committed[known:]]
        self.active = self.local.add(fresh, self.active)
        self.sequence.extend(fresh)

    def propose(self, committed: Sequence[int], max_tokens: int, min_confidence: float = 0.0) -> Iterator[Proposal]:
        return self.propose_ahead(committed, (), max_tokens)

    def propose_ahead(self, committed: Sequence[int], assumed: Sequence[int], max_tokens: int) -> Iterator[Proposal]:
        """Propose after committed + assumed (draft-ahead) without adding the assumed tokens to any tree: a wrong
        guess then costs no rebuild, and only verified text ever reaches the shared cache."""
        self.sync(committed)
        context = [*self.sequence, *assumed]
        own = self.local.propose(context, max_tokens, self.config)
        shared = self.cache.tree.propose(context, max_tokens, self.config)
        self.match_length, tokens, _ = max(own, shared, key=lambda p: p[2])
        for token in tokens:
            yield token, None

    def close(self) -> None:
        if self.sequence:
            self.cache.add(self.sequence)

    def kv_cache_bytes(self) -> int:
        return 0
