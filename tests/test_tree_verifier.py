"""Token trees through the verifier: greedy identity on dynamic and static caches, the verdict's path, outcomes,
hidden states and logprobs, and precise refusals."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from specdec.errors import FailedPrecondition, InvalidArgument
from specdec.modeling import LoadedModel
from specdec.sampling import SamplingConfig, logits_to_probs
from specdec.static_cache import GraphOptions
from specdec.verifier_service.core import SessionOptions, VerifierCore, VerifierSession, tree_outcomes
from tests.helpers import hf_greedy, load


@pytest.fixture(scope="module")
def lm(tiny_target: Path) -> LoadedModel:
    return load(str(tiny_target))


def _tree_around(rng: random.Random, truth: list[int], vocab: int) -> tuple[list[int], list[int], int]:
    """A random tree that holds the first `depth` tokens of `truth` on one branch (the rest are decoys, never
    equal to the true token at their depth); returns (tokens, parents, depth)."""
    depth = rng.randrange(0, min(4, len(truth)) + 1)
    tokens: list[int] = []
    parents: list[int] = []
    true_nodes = [-1]
    for d in range(4):
        anchors = [n for n in range(-1, len(tokens)) if n == -1 or _depth(parents, n) == d - 1]
        for _ in range(rng.randrange(0, 3)):  # decoys below random nodes of the previous depth
            parent = rng.choice(anchors)
            decoy = rng.randrange(vocab)
            if parent == true_nodes[min(d, len(true_nodes) - 1)] and d < len(truth) and decoy == truth[d]:
                continue
            if any(p == parent and t == decoy for t, p in zip(tokens, parents, strict=True)):
                continue
            tokens.append(decoy)
            parents.append(parent)
        if d < depth and len(true_nodes) == d + 1:
            if any(p == true_nodes[d] and t == truth[d] for t, p in zip(tokens, parents, strict=True)):
                true_nodes.append(next(i for i, (t, p) in enumerate(zip(tokens, parents, strict=True))
                                       if p == true_nodes[d] and t == truth[d]))  # fmt: skip
            else:
                tokens.append(truth[d])
                parents.append(true_nodes[d])
                true_nodes.append(len(tokens) - 1)
    return tokens, parents, len(true_nodes) - 1


def _depth(parents: list[int], node: int) -> int:
    d = 0
    while parents[node] >= 0:
        node, d = parents[node], d + 1
    return d


@pytest.mark.parametrize("static", [False, True])
@torch.inference_mode()
def test_tree_blocks_commit_exactly_the_targets_greedy_decode(lm: LoadedModel, static: bool) -> None:
    prompt = lm.tokenizer.encode("def add(a, b):")
    greedy = hf_greedy(lm, prompt, 30)
    core = VerifierCore(lm, GraphOptions(static="on" if static else "off", slots=2, max_len=128))
    session = core.open_session(SessionOptions(prompt, return_hidden_states=True, return_logprobs=True))
    assert (session.kv.__class__.__name__ == "StaticSequence") == static
    rng = random.Random(1)
    rows: list[torch.Tensor] = []
    longest = 0
    while len(session.committed) - len(prompt) < 26:
        done = len(session.committed) - len(prompt)
        tokens, parents, depth = _tree_around(rng, greedy[done:], lm.vocab_size)
        outcome = session.verify(session.committed_length, tokens, None, parents)
        assert outcome.num_accepted == depth == len(outcome.accepted_nodes)
        assert outcome.token_ids == greedy[done : done + depth + 1]
        assert [tokens[i] for i in outcome.accepted_nodes] == greedy[done : done + depth]
        assert outcome.outcomes == tree_outcomes(parents, outcome.accepted_nodes)[0]
        assert len(outcome.logprobs) == depth + 1
        assert session.kv.tokens == session.committed[:-1]  # the invariant holds after compaction
        assert outcome.hidden is not None
        rows.append(outcome.hidden)
        longest = max(longest, depth)
    assert session.committed == prompt + greedy[: len(session.committed) - len(prompt)]
    assert longest >= 3  # the trees did carry long accepted paths
    full = lm.model(torch.tensor([session.committed[:-1]]), output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(torch.cat(rows), full, atol=1e-4, rtol=1e-4)  # the path's rows, in order
    core.close_session(session)


def test_tree_outcomes_mark_the_path_the_rejected_children_and_the_bonus() -> None:
    parents = [-1, -1, 0, 0, 2]
    assert tree_outcomes(parents, [0, 2]) == (["accepted", "skipped", "accepted", "skipped", "rejected"], False)
    assert tree_outcomes(parents, [0, 2, 4]) == (["accepted", "skipped", "accepted", "skipped", "accepted"], True)
    assert tree_outcomes(parents, []) == (["rejected", "rejected", "skipped", "skipped", "skipped"], False)


def test_tree_blocks_are_refused_precisely(lm: LoadedModel) -> None:
    prompt = lm.tokenizer.encode("hello")
    session = VerifierSession(lm, SessionOptions(prompt))
    session.prefill()
    n = session.committed_length
    with pytest.raises(InvalidArgument, match="draft_parents has 1 entries for 2"):
        session.verify(n, [1, 2], None, [-1])
    with pytest.raises(InvalidArgument, match=r"draft_parents\[1\] is 1"):
        session.verify(n, [1, 2], None, [-1, 1])
    sampled = VerifierSession(lm, SessionOptions(prompt, sampling=SamplingConfig(temperature=0.8, seed=1)))
    sampled.prefill()
    with pytest.raises(InvalidArgument, match="needs draft_probs"):
        sampled.verify(n, [1, 2], None, [-1, -1])
    q = torch.zeros(2, lm.vocab_size)
    q[:, 1:3] = 0.5
    with pytest.raises(InvalidArgument, match="repeats a sibling"):
        sampled.verify(n, [1, 1], q, [-1, -1])
    with pytest.raises(InvalidArgument, match="probability 0"):
        sampled.verify(n, [1, 5], q, [-1, -1])
    with pytest.raises(InvalidArgument, match="share one q"):
        sampled.verify(n, [1, 2], torch.stack([q[0], torch.full((lm.vocab_size,), 1 / lm.vocab_size)]), [-1, -1])
    assert sampled.verify(n, [1, 2], q, [-1, -1]).committed_length > n  # a well-formed one is verified
    lossy = VerifierSession(lm, SessionOptions(prompt, policy="typical"))
    lossy.prefill()
    with pytest.raises(FailedPrecondition, match="losslessly only"):
        lossy.verify(n, [1, 2], None, [-1, -1])
    assert session.verify(n, [1, 2], None, [-1, -1]).committed_length == n + 1  # the session keeps working


@torch.inference_mode()
def test_sampled_tree_blocks_keep_the_targets_distribution(lm: LoadedModel) -> None:
    """Over seeds, the first committed token of a sampled tree block (two children of the root, drawn without
    replacement from a q unlike p) is distributed as the target's own sample (top-4 sampling: 4 outcomes)."""
    prompt = lm.tokenizer.encode("the weather today")
    sampling = SamplingConfig(temperature=1.0, top_k=4, seed=0)
    logits = lm.model(torch.tensor([prompt])).logits[0, -1]
    p = logits_to_probs(logits, sampling)  # [V] the target's distribution for the first new token
    support = torch.nonzero(p).squeeze(1)
    q = torch.zeros_like(p)
    q[support] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # not the target's
    q[(int(support.max()) + 1) % lm.vocab_size] = 0.2  # and mass where the target has none
    q /= q.sum()
    counts = torch.zeros_like(p)
    seeds = 600
    for seed in range(seeds):
        session = VerifierSession(lm, SessionOptions(prompt, sampling=SamplingConfig(1.0, 4, 1.0, seed)))
        session.prefill()
        children = torch.multinomial(q, 2, replacement=False, generator=torch.Generator().manual_seed(seed))
        outcome = session.verify(len(prompt), children.tolist(), q.expand(2, -1).clone(), [-1, -1])
        counts[outcome.token_ids[0]] += 1
        assert outcome.num_accepted == len(outcome.accepted_nodes) <= 1
        if seed < 20:  # seeded: the same verdict again
            again = VerifierSession(lm, SessionOptions(prompt, sampling=SamplingConfig(1.0, 4, 1.0, seed)))
            again.prefill()
            assert again.verify(len(prompt), children.tolist(), q.expand(2, -1).clone(), [-1, -1]).token_ids == (
                outcome.token_ids
            )
    tv = 0.5 * float((counts / seeds - p).abs().sum())
    assert tv < 0.08, f"total variation {tv:.3f}"
