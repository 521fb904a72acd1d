"""Suffix decoding: the depth-capped suffix tree's counts, exact removal, proposals by frequency and
probability, the request's own tree kept in step, cross-request reuse and eviction of the shared cache."""

from __future__ import annotations

import random

from specdec.draft_service.suffix import SuffixCache, SuffixConfig, SuffixDrafter, SuffixTree, _Node


def dump(node: _Node) -> dict:
    return {token: (child.count, dump(child)) for token, child in sorted(node.children.items())}


def brute_counts(sequences: list[list[int]], depth: int) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    for seq in sequences:
        for start in range(len(seq)):
            for end in range(start + 1, min(len(seq), start + depth) + 1):
                key = tuple(seq[start:end])
                counts[key] = counts.get(key, 0) + 1
    return counts


def tree_counts(tree: SuffixTree) -> dict[tuple[int, ...], int]:
    out: dict[tuple[int, ...], int] = {}
    stack: list[tuple[tuple[int, ...], _Node]] = [((), tree.root)]
    while stack:
        path, node = stack.pop()
        for token, child in node.children.items():
            out[(*path, token)] = child.count
            stack.append(((*path, token), child))
    return out


def test_counts_equal_brute_force_and_grow_incrementally() -> None:
    rng = random.Random(0)
    sequences = [[rng.randrange(5) for _ in range(rng.randrange(1, 40))] for _ in range(6)]
    tree = SuffixTree(depth=6)
    for seq in sequences:
        active = None
        for cut in range(0, len(seq), 7):  # in pieces, as commits arrive
            active = tree.add(seq[cut : cut + 7], active)
    assert tree_counts(tree) == brute_counts(sequences, 6)
    assert tree.nodes == 1 + len(tree_counts(tree))


def test_removal_is_exact() -> None:
    rng = random.Random(1)
    first, second = ([rng.randrange(4) for _ in range(50)] for _ in range(2))
    tree, alone = SuffixTree(8), SuffixTree(8)
    tree.add(first)
    tree.add(second)
    alone.add(second)
    tree.remove(first)
    assert dump(tree.root) == dump(alone.root) and tree.nodes == alone.nodes
    tree.remove(second)
    assert tree.root.children == {} and tree.nodes == 1


def test_proposals_follow_the_most_frequent_continuation_while_it_is_likely() -> None:
    config = SuffixConfig(depth=16, max_match=4, spec_factor=4.0, min_prob=0.3)
    tree = SuffixTree(config.depth)
    for tail in ([7, 8, 9], [7, 8, 9], [7, 5, 6]):
        tree.add([1, 2, 3, *tail])
    match, tokens, expected = tree.propose([0, 1, 2, 3], 8, config)
    assert match == 3 and tokens == [7, 8, 9]  # 8 follows 7 two times in three: p = 2/3 >= 0.3
    assert expected == 1 + 2 / 3 + 2 / 3
    strict = SuffixConfig(depth=16, max_match=4, spec_factor=4.0, min_prob=0.9)
    assert tree.propose([0, 1, 2, 3], 8, strict)[1] == [7]
    assert tree.propose([1, 2, 3], 1, config)[1] == [7]  # max_tokens
    short = SuffixConfig(depth=16, max_match=4, spec_factor=1.0, min_prob=0.3)
    assert tree.propose([0, 3], 8, short)[:2] == (1, [7])  # a 1-token match earns 1 token
    assert tree.propose([42], 8, config) == (0, [], 0.0)


def test_a_request_reuses_an_earlier_requests_text_and_the_cache_evicts() -> None:
    config = SuffixConfig(depth=12, max_match=6, cache_tokens=40)
    cache = SuffixCache(config)
    earlier = SuffixDrafter(cache)
    answer = [50, 51, 52, 53, 54, 55, 56, 57]
    list(earlier.propose([1, 2, 3, *answer], 4))
    earlier.close()  # its text joins the shared cache
    later = SuffixDrafter(cache)
    proposal = [t for t, _ in later.propose([9, 9, 50, 51, 52], 4)]  # its own text never had 53...
    assert proposal == [53, 54, 55, 56] and later.match_length == 3
    for i in range(5):  # 5 x 11 tokens > 40: the oldest sequences go
        cache.add([100 + i] * 11)
    assert cache.tokens <= 40 and cache.tree.find([50, 51]) is None
    assert sum(len(s) for s in cache.sequences) == cache.tokens


def test_the_requests_own_tree_follows_rollbacks() -> None:
    drafter = SuffixDrafter(SuffixCache(SuffixConfig(depth=8, max_match=4)))
    assert [t for t, _ in drafter.propose([1, 2, 3, 4, 1, 2], 2)] == [3, 4]
    assert [t for t, _ in drafter.propose([1, 2, 9, 4, 1, 2], 2)] == [9, 4]  # an earlier token changed: rebuilt
