"""Rejection sampling through the real services preserves the target's distribution, for each way q is sent:
dense float32 rows, sparse supports, and one-hot (n-gram drafts send no q)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.core import Limits
from specdec.orchestrator.embedded import EmbeddedStack
from specdec.sampling import SamplingConfig, logits_to_probs
from specdec.v1 import common_pb2
from tests.helpers import load

NEW_TOKENS, K, SAMPLES_PER_CALL, CALLS = 3, 2, 64, 20
SAMPLING = SamplingConfig(temperature=1.0)


def exact_marginals(lm, prompt: list[int], positions: int, sampling: SamplingConfig) -> list[torch.Tensor]:
    """The model's marginal distribution of each of the first `positions` generated tokens, by enumeration.

    Index V stands for "generation already ended" (an EOS came earlier)."""
    vocab, eos = lm.vocab_size, set(lm.eos_token_ids)
    marginals = []
    prefixes: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    ended = 0.0
    for _ in range(positions):
        batch = torch.tensor([prompt + list(p) for p, _ in prefixes])
        with torch.inference_mode():
            probs = logits_to_probs(lm.model(batch).logits[:, -1], sampling)  # [P, V]
        weights = torch.tensor([w for _, w in prefixes])
        marginals.append(torch.cat([(weights[:, None] * probs).sum(0), torch.tensor([ended])]))
        grown = [((*p, t), w * float(probs[i, t])) for i, (p, w) in enumerate(prefixes) for t in range(vocab)]
        ended += sum(w for p, w in grown if p[-1] in eos)
        prefixes = [(p, w) for p, w in grown if p[-1] not in eos]
    return marginals


def repetitive_prompt(lm) -> list[int]:
    """The target's own greedy path, repeated: the n-gram draft then proposes tokens the target likes."""
    path = [3]
    with torch.inference_mode():
        for _ in range(5):
            path.append(int(lm.model(torch.tensor([path])).logits[0, -1].argmax()))
    return path + path[:3]


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


async def sample_counts(
    client: SpecdecClient, prompt: list[int], vocab: int, sampling: SamplingConfig, **request: object
) -> tuple[torch.Tensor, int, int, set[int]]:
    """CALLS x SAMPLES_PER_CALL completions (seeds 0 ..): the count of each token at each of the first NEW_TOKENS
    positions (column V: generation had ended), draft tokens, accepted tokens, the K values used."""
    counts = torch.zeros(NEW_TOKENS, vocab + 1)
    drafted = accepted = 0
    used_k: set[int] = set()
    for call in range(CALLS):
        response = await client.generate(
            prompt_token_ids=prompt, max_new_tokens=NEW_TOKENS, temperature=sampling.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p if sampling.top_p < 1 else 0.0, seed=call,
            num_samples=SAMPLES_PER_CALL, **request,
        )  # fmt: skip
        drafted += response.stats.draft_tokens
        accepted += response.stats.accepted_tokens
        used_k.update(k for k, steps in enumerate(response.stats.k_histogram) if steps)
        for completion in response.completions:
            tokens = list(completion.token_ids) + [vocab] * NEW_TOKENS
            for position, token in enumerate(tokens[:NEW_TOKENS]):
                counts[position, token] += 1
    return counts, drafted, accepted, used_k


def assert_follows(counts: torch.Tensor, p: list[torch.Tensor]) -> None:
    samples = CALLS * SAMPLES_PER_CALL
    for position in range(NEW_TOKENS):
        empirical = counts[position] / counts[position].sum()
        assert counts[position].sum() == samples
        # sampling noise at 1,280 samples over 17 outcomes is ~0.045 TV; a wrong rule is off by >= 0.3
        assert tv(empirical, p[position]) < 0.1, f"position {position}: TV {tv(empirical, p[position]):.3f}"


@pytest.fixture
async def v16_stack(small_vocab_target: Path):
    async with EmbeddedStack(target=str(small_vocab_target), device="cpu", limits=Limits(samples_in_flight=16)) as s:
        yield s


@pytest.mark.parametrize(
    ("draft_kind", "encoding", "sampling", "controller"),
    [
        ("model", common_pb2.PROBS_ENCODING_DENSE, SAMPLING, "fixed"),
        ("model", common_pb2.PROBS_ENCODING_SPARSE, SamplingConfig(temperature=0.7, top_k=6), "fixed"),
        ("model", common_pb2.PROBS_ENCODING_UNSPECIFIED, SamplingConfig(temperature=1.3, top_p=0.95), "fixed"),
        ("ngram", common_pb2.PROBS_ENCODING_UNSPECIFIED, SAMPLING, "fixed"),
        ("model", common_pb2.PROBS_ENCODING_DENSE, SAMPLING, "heuristic"),  # K changes every step
        ("ngram", common_pb2.PROBS_ENCODING_UNSPECIFIED, SAMPLING, "cost"),  # K chosen per proposal, 0 included
    ],
    ids=["dense-q", "sparse-q-top-k", "auto-q-top-p", "one-hot-q", "dense-q-heuristic-k", "one-hot-q-cost-k"],
)
async def test_sampled_tokens_follow_the_target(
    v16_stack, small_vocab_target, small_vocab_draft, draft_kind, encoding, sampling, controller
):
    target = load(str(small_vocab_target))
    draft_lm = load(str(small_vocab_draft))
    prompt = repetitive_prompt(target)
    p = exact_marginals(target, prompt, NEW_TOKENS, sampling)
    q_first = exact_marginals(draft_lm, prompt, 1, sampling)[0]
    assert tv(p[0], q_first) >= 0.3, "the draft must be far from the target for this test to mean anything"

    draft = f"model:{small_vocab_draft}" if draft_kind == "model" else "ngram"
    async with SpecdecClient(v16_stack.address) as client:
        counts, drafted, accepted, used_k = await sample_counts(
            client, prompt, target.vocab_size, sampling, draft=draft, k=K, k_controller=controller,
            probs_encoding=encoding,
        )  # fmt: skip
    assert drafted > 0 and 0 < accepted < drafted  # both accept and reject paths were exercised
    if controller != "fixed":
        assert len(used_k) >= 2, f"the controller should have changed K; used {used_k}"
    assert_follows(counts, p)
    if draft_kind == "model":
        assert tv(counts[0] / (CALLS * SAMPLES_PER_CALL), q_first) > 0.2


@pytest.fixture
def small_vocab_eagle(tmp_path: Path, small_vocab_target: Path) -> Path:
    """An untrained EAGLE head for the 16-token target (12 of its tokens in the draft vocabulary): its trees are
    sampled from a q unlike p."""
    from specdec.draft_service.heads.eagle import EagleHead
    from specdec.draft_service.heads.layers import LayerShape
    from specdec.draft_service.heads.store import HeadConfig, save_head
    from specdec.draft_service.heads.train import target_identity

    target = load(str(small_vocab_target))
    hidden = int(target.model.config.hidden_size)
    shape = LayerShape(hidden_size=hidden, num_heads=4, num_kv_heads=2, intermediate_size=2 * hidden)
    torch.manual_seed(0)
    head = EagleHead(shape, 12).eval()
    head.vocab_ids.copy_(torch.arange(12))
    out = tmp_path / "v16-eagle"
    save_head(head, HeadConfig("eagle", target_identity(target), 12, layer=shape), out)
    return out


@pytest.mark.parametrize("encoding", [common_pb2.PROBS_ENCODING_SPARSE])
async def test_sampled_token_trees_follow_the_target(v16_stack, small_vocab_target, small_vocab_eagle, encoding):
    """Trees drawn without replacement and verified by recursive rejection sampling, through the services."""
    target = load(str(small_vocab_target))
    prompt = repetitive_prompt(target)
    p = exact_marginals(target, prompt, NEW_TOKENS, SAMPLING)
    async with SpecdecClient(v16_stack.address) as client:
        counts, drafted, accepted, _ = await sample_counts(
            client, prompt, target.vocab_size, SAMPLING, draft=f"eagle:{small_vocab_eagle}", k=2, tree_nodes=5,
            k_controller="cost", probs_encoding=encoding,  # the default controller: it must not trim them
        )  # fmt: skip
    assert drafted > 0 and 0 < accepted < drafted
    assert_follows(counts, p)
