"""Token trees in one forward (specdec.batched): each node's logits equal a chain forward of its own path, and after
`compact` the cache holds exactly what feeding the accepted path as a chain leaves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specdec.batched import ExtendJob, extend_many, tree_layout
from specdec.kvcache import CachedSequence
from specdec.modeling import LoadedModel
from specdec.static_cache import GraphRunner, KVSequence
from tests.helpers import load

PREFIX = [5, 17, 42, 8, 99, 3]
# fed after PREFIX: the uncached last committed token (index 0), then a tree below it
TREE_TOKENS = [3, 40, 41, 50, 51, 52, 60]
TREE_PARENTS = [-1, 0, 0, 1, 1, 2, 4]
PATH = [0, 1, 4, 6]  # a root-to-leaf path through the tree


@pytest.fixture(scope="module")
def lm(tiny_target: Path) -> LoadedModel:
    return load(str(tiny_target))


def _path_to(node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = TREE_PARENTS[node]
    return path[::-1]


def _sequences(lm: LoadedModel, kind: str) -> list[KVSequence]:
    """Two sessions' caches: dynamic, or two slots of one static pool (one padded attention call for both)."""
    if kind == "dynamic":
        return [CachedSequence(lm.model), CachedSequence(lm.model)]
    runner = GraphRunner(lm.model, slots=2, max_len=64)
    seqs = [runner.acquire(), runner.acquire()]
    return [seq for seq in seqs if seq is not None]


def _keys(seq: KVSequence, length: int) -> list[torch.Tensor]:
    if isinstance(seq, CachedSequence):
        return [layer.keys[0, :, :length] for layer in seq.cache.layers]
    return [pool[seq.slot, :, :length] for pool in seq.runner.keys]


def test_tree_layout_depths_and_ancestors() -> None:
    layout = tree_layout(TREE_PARENTS)
    assert layout.depths == [0, 1, 1, 2, 2, 2, 3]
    assert layout.ancestors[6].nonzero().flatten().tolist() == [0, 1, 4, 6]
    assert layout.ancestors[5].nonzero().flatten().tolist() == [0, 2, 5]
    with pytest.raises(ValueError, match="parent must come before"):
        tree_layout([-1, 1])


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("alone", [False, True])  # a lone tree on a static slot runs the slot's own forward
@torch.inference_mode()
def test_each_tree_node_sees_only_its_path_and_compaction_leaves_the_chains_cache(
    lm: LoadedModel, kind: str, alone: bool
) -> None:
    seq, other = _sequences(lm, kind)  # other: a chain session in the same forward (trees batch with chains)
    seq.extend(PREFIX[:-1])
    other.extend([7, 8, 9])
    tree_job = ExtendJob(seq, TREE_TOKENS, len(TREE_TOKENS), True, TREE_PARENTS)
    if alone:
        got, chain_out = extend_many(lm.model, [tree_job])[0], extend_many(lm.model, [ExtendJob(other, [10, 11], 2)])[0]
    else:
        got, chain_out = extend_many(lm.model, [tree_job, ExtendJob(other, [10, 11], 2)])
    assert got.logits.shape == (len(TREE_TOKENS), lm.vocab_size)
    for node in range(len(TREE_TOKENS)):
        alone = CachedSequence(lm.model)
        path = [TREE_TOKENS[i] for i in _path_to(node)]
        want = alone.extend(PREFIX[:-1] + path, keep_logits=1, want_hidden=True)
        torch.testing.assert_close(got.logits[node], want.logits[-1], rtol=1e-4, atol=1e-4, msg=f"node {node}")
        assert got.hidden is not None and want.hidden is not None
        torch.testing.assert_close(got.hidden[node], want.hidden[-1], rtol=1e-4, atol=1e-4)
    chain = CachedSequence(lm.model)
    chain.extend([7, 8, 9])
    torch.testing.assert_close(chain_out.logits, chain.extend([10, 11], keep_logits=2).logits, rtol=1e-4, atol=1e-4)

    start = len(PREFIX) - 1
    seq.compact(start, [start + i for i in PATH])
    assert seq.tokens == PREFIX[:-1] + [TREE_TOKENS[i] for i in PATH]
    reference = CachedSequence(lm.model)
    reference.extend(seq.tokens)
    for k_got, k_want in zip(_keys(seq, len(seq.tokens)), _keys(reference, len(seq.tokens)), strict=True):
        torch.testing.assert_close(k_got, k_want, rtol=1e-4, atol=1e-4)
    # and the next forward after compaction agrees with the chain's
    torch.testing.assert_close(seq.extend([77]).logits, reference.extend([77]).logits, rtol=1e-4, atol=1e-4)
