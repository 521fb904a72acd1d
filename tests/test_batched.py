"""One ragged forward for several sessions (specdec.batched) against each session's own forward: same logits,
hidden states and caches, over several steps with different cached lengths and block sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specdec.batched import ExtendJob, extend_many, supports_batching
from specdec.kvcache import CachedSequence
from specdec.modeling import LoadedModel
from tests.helpers import load

PROMPTS = [[5, 17, 42, 8, 99, 3], [7], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [30, 31]]


@pytest.fixture(scope="module")
def lm(tiny_target: Path) -> LoadedModel:
    return load(str(tiny_target))


def cached_keys(seq: CachedSequence) -> list[torch.Tensor]:
    return [layer.keys for layer in seq.cache.layers]


def test_the_tiny_llama_qualifies_and_other_models_do_not(lm: LoadedModel) -> None:
    assert supports_batching(lm.model)
    assert not supports_batching(torch.nn.Linear(2, 2))


@torch.inference_mode()
def test_batched_steps_match_one_forward_per_session(lm: LoadedModel) -> None:
    batched = [CachedSequence(lm.model) for _ in PROMPTS]
    alone = [CachedSequence(lm.model) for _ in PROMPTS]
    for seqs in (batched, alone):  # prefill each on its own (the verifier does this at open)
        for seq, prompt in zip(seqs, PROMPTS, strict=True):
            if len(prompt) > 1:
                seq.extend(prompt[:-1])
    pending = [prompt[-1:] for prompt in PROMPTS]
    generator = torch.Generator().manual_seed(0)
    for step in range(4):  # blocks of 1..5 tokens per session: ragged in cached length and in new tokens
        blocks = [p + torch.randint(0, 300, (int(n),), generator=generator).tolist() for p, n in
                  zip(pending, torch.randint(0, 5, (len(PROMPTS),), generator=generator), strict=True)]  # fmt: skip
        jobs = [ExtendJob(seq, block, len(block), want_hidden=True) for seq, block in zip(batched, blocks, strict=True)]
        got = extend_many(lm.model, jobs)
        for i, (seq, block) in enumerate(zip(alone, blocks, strict=True)):
            want = seq.extend(block, keep_logits=len(block), want_hidden=True)
            assert got[i].logits.shape == want.logits.shape == (len(block), lm.vocab_size)
            torch.testing.assert_close(got[i].logits, want.logits, rtol=1e-4, atol=1e-4, msg=f"step {step} seq {i}")
            assert got[i].hidden is not None and want.hidden is not None
            torch.testing.assert_close(got[i].hidden, want.hidden, rtol=1e-4, atol=1e-4)
            assert batched[i].tokens == seq.tokens
            for k_got, k_want in zip(cached_keys(batched[i]), cached_keys(seq), strict=True):
                torch.testing.assert_close(k_got, k_want, rtol=1e-4, atol=1e-4)
        pending = [[int(out.logits[-1].argmax())] for out in got]
        if step == 1:  # a verdict rejected some positions: roll back by position, as sessions do
            for seqs in (batched, alone):
                for seq in seqs:
                    seq.rollback(max(1, len(seq.tokens) - 2))
            pending = [[seq.tokens[-1]] for seq in alone]
            for seqs in (batched, alone):
                for seq in seqs:
                    seq.rollback(len(seq.tokens) - 1)


@torch.inference_mode()
def test_one_job_or_an_unsupported_model_runs_the_models_own_forward(lm: LoadedModel) -> None:
    seq, reference = CachedSequence(lm.model), CachedSequence(lm.model)
    [out] = extend_many(lm.model, [ExtendJob(seq, [5, 6, 7], keep_logits=2)])
    want = reference.extend([5, 6, 7], keep_logits=2)
    assert torch.equal(out.logits, want.logits) and out.hidden is None


@torch.inference_mode()
def test_each_session_gets_its_own_kept_logit_rows(lm: LoadedModel) -> None:
    """One LM head call serves the batch: each session still gets exactly its own last `keep_logits` rows (all of
    its rows when it asks for more than it fed, as the model's own `logits_to_keep` does)."""
    blocks, keeps = [[5, 6, 7, 8], [9], [10, 11, 12]], [2, 3, 1]
    batched = [CachedSequence(lm.model) for _ in blocks]
    got = extend_many(lm.model, [ExtendJob(s, b, k) for s, b, k in zip(batched, blocks, keeps, strict=True)])
    for block, keep, out in zip(blocks, keeps, got, strict=True):
        want = CachedSequence(lm.model).extend(block, keep_logits=keep)
        assert out.logits.shape == want.logits.shape == (min(keep, len(block)), lm.vocab_size)
        torch.testing.assert_close(out.logits, want.logits, rtol=1e-4, atol=1e-4)
