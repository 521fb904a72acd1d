"""Trained draft heads (EAGLE, Medusa): training on a tiny target, save/load, the drafting math, greedy identity and
distribution preservation through the real services, refusal of a head made for another target."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from specdec.draft_service.core import DraftCore, DraftOptions
from specdec.draft_service.heads.data import HeadData, concat_data
from specdec.draft_service.heads.eagle import EagleDrafter, EagleHead, TreeBlock
from specdec.draft_service.heads.layers import LayerCache, LayerShape
from specdec.draft_service.heads.medusa import MedusaDrafter, MedusaHead
from specdec.draft_service.heads.store import HeadConfig, build_head, load_head, save_head
from specdec.draft_service.heads.train import (
    TrainConfig,
    draft_vocabulary,
    init_head,
    layer_shape,
    replay_acceptance,
    split_indices,
    target_identity,
    train,
)
from specdec.draftspec import parse_draft
from specdec.errors import FailedPrecondition, InvalidArgument
from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.core import Limits
from specdec.orchestrator.embedded import EmbeddedStack
from specdec.orchestrator.loop import UnsentCommit
from specdec.sampling import SamplingConfig, make_generator, reseed_for_position
from specdec.v1 import common_pb2
from specdec.wire import SPARSE, encode_distributions, hidden_from_pb, hidden_to_pb
from tests.helpers import assert_greedy_identical, hf_greedy, load
from tests.test_distribution import exact_marginals, repetitive_prompt, tv

PROMPTS = ["def add(a, b):\n    return", "The quick brown fox jumps over the lazy dog. The quick"]
MAX_NEW = 40
TRAIN_PROMPTS = [
    "def add(a, b):",
    "Hello! How can I help you today?",
    "Summarise: the meeting moved to Tuesday.",
    "for i in range(10):",
    "The quick brown fox",
    "Speculative decoding drafts tokens cheaply.",
    "print the squares",
    "the room was booked",
] * 2


@pytest.fixture(scope="session")
def tiny_heads(tiny_dir: Path, tiny_target: Path) -> dict[str, Path]:
    """An EAGLE and a Medusa head trained for a few steps on the tiny target's own greedy answers."""
    prompts = tiny_dir / "head-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p + f" {i}"}) + "\n" for i, p in enumerate(TRAIN_PROMPTS)))
    lm = load(str(tiny_target))
    heads = {}
    for method in ("eagle", "medusa"):
        cfg = TrainConfig(
            method=method, minutes=5, max_steps=4, draft_vocab=64, max_new_tokens=16, gen_batch=8, holdout_every=4,
            batch_tokens=256, window=64, prompt_files=[str(prompts)], data_dir=str(tiny_dir / "head-data"),
        )  # fmt: skip
        out = tiny_dir / f"{method}-head"
        train(lm, cfg, out, f"test {method}")
        heads[method] = out
    return heads


def random_eagle(shape: LayerShape, vocab: int, draft_vocab: int, seed: int = 0) -> EagleHead:
    torch.manual_seed(seed)
    head = EagleHead(shape, draft_vocab).eval()
    head.vocab_ids.copy_(torch.randperm(vocab)[:draft_vocab].sort().values)
    return head


def test_parse_head_drafts() -> None:
    assert parse_draft("eagle").name == "eagle" and parse_draft("eagle").needs_hidden_states
    assert parse_draft("medusa:/some/dir").model == "/some/dir" and parse_draft("medusa:/some/dir").uses_model
    assert parse_draft("eagle:heads/e").name == "eagle:heads/e"
    assert not parse_draft("ngram").needs_hidden_states and not parse_draft("model:x").needs_hidden_states
    for bad in ("medusas", "eagle-x", "Eagle", "hydra:dir"):
        with pytest.raises(InvalidArgument, match="eagle"):
            parse_draft(bad)


def test_unrolled_training_matches_drafting() -> None:
    """Training-time test's masks reproduce what the drafter sees: step 0 is the cached layer over true pairs, step s
    at position j is the chain of s drafted steps after the true pairs < j-s+1."""
    shape = LayerShape(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64)
    head = random_eagle(shape, 50, 20)
    t = 9
    features, embeddings = torch.randn(1, t, 32), torch.randn(1, t, 32)
    with torch.no_grad():
        outputs = head.unrolled(features, embeddings, 3, torch.ones(1, t, dtype=torch.bool))
        cache = LayerCache()
        torch.testing.assert_close(head.forward_cached(features, embeddings, cache), outputs[0])
        for j in range(2, t):
            cache = LayerCache()
            head.forward_cached(features[:, : j - 1], embeddings[:, : j - 1], cache)  # true pairs 0 .. j-2
            predicted = head.forward_cached(features[:, j - 1 : j], embeddings[:, j - 1 : j], cache)  # pair j-1
            for s in (1, 2):
                if j - 1 + s >= t:
                    break
                # step s drafts at pair j-1+s from the feature predicted for it
                predicted = head.forward_cached(predicted, embeddings[:, j - 1 + s : j + s], cache)
                torch.testing.assert_close(predicted[0, 0], outputs[s][0, j - 1 + s], atol=1e-5, rtol=1e-5)


def test_q_is_the_sampling_distribution_over_the_full_vocabulary() -> None:
    shape = LayerShape(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64)
    head = random_eagle(shape, 50, 20)
    embedding = torch.randn(50, 32)
    sampling = SamplingConfig(temperature=0.9, top_k=5, seed=3)
    drafter = EagleDrafter(head, embedding, 50, sampling)
    drafter.observe_hidden(0, torch.randn(4, 32))
    proposals = list(drafter.propose([1, 2, 3, 4, 5], 4))
    assert len(proposals) == 4
    outside = torch.ones(50, dtype=torch.bool)
    outside[head.vocab_ids] = False
    for token, q in proposals:
        assert q is not None and q.shape == (50,)
        assert float(q.sum()) == pytest.approx(1.0, abs=1e-5) and q[token] > 0
        assert bool((q[outside] == 0).all()) and int((q > 0).sum()) <= 5  # reduced vocabulary, then top-k
    # the same seed drafts the same tokens (draws depend on the position only)
    again = EagleDrafter(head, embedding, 50, sampling)
    again.observe_hidden(0, drafter.features.rows)
    assert [t for t, _ in again.propose([1, 2, 3, 4, 5], 4)] == [t for t, _ in proposals]


def test_drafters_need_features_and_roll_back() -> None:
    shape = LayerShape(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64)
    eagle = EagleDrafter(random_eagle(shape, 50, 20), torch.randn(50, 32), 50, SamplingConfig())
    medusa_head = MedusaHead(32, 3, 20).eval()
    medusa_head.vocab_ids.copy_(torch.arange(20))
    medusa = MedusaDrafter(medusa_head, 50, SamplingConfig())
    for drafter in (eagle, medusa):
        assert list(drafter.propose([1, 2, 3], 3)) == []  # no features yet: the session's first block
        features = torch.randn(6, 32)
        drafter.observe_hidden(0, features[:2])  # positions 0, 1 (committed length 3)
        first = [t for t, _ in drafter.propose([1, 2, 3], 3)]
        assert len(first) == 3
        assert [t for t, _ in drafter.propose([1, 2, 3], 3)] == first  # asked again at the same length: the same
        drafter.observe_hidden(2, features[2:5])  # the next verdict: positions 2 .. 4 (committed length 6)
        second = [t for t, _ in drafter.propose([1, 2, 3, 7, 8, 9], 3)]
        fresh = type(drafter)(*_drafter_args(drafter))
        fresh.observe_hidden(0, features[:5])
        assert [t for t, _ in fresh.propose([1, 2, 3, 7, 8, 9], 3)] == second  # incremental == from scratch
        with pytest.raises(InvalidArgument, match="start at position 9"):
            drafter.observe_hidden(9, features[:1])  # a gap
    assert eagle.kv_cache_bytes() > 0


def _drafter_args(drafter: EagleDrafter | MedusaDrafter) -> tuple[object, ...]:
    if isinstance(drafter, EagleDrafter):
        return drafter.head, drafter.embedding, drafter.vocab_size, drafter.sampling
    return drafter.head, drafter.vocab_size, drafter.sampling


def test_hidden_states_merge_across_steps_without_a_draft_call() -> None:
    unsent = UnsentCommit()
    rows = torch.randn(7, 4)
    unsent.add(5, [1, 2], hidden_to_pb(0, rows[:6]))
    unsent.add(7, [3], hidden_to_pb(6, rows[6:7]))
    commit = unsent.take()
    assert commit is not None and commit.position == 5 and list(commit.token_ids) == [1, 2, 3]
    start, hidden = hidden_from_pb(commit.hidden_states)
    assert start == 0 and torch.equal(hidden, rows)
    assert unsent.take() is None
    with pytest.raises(InvalidArgument, match="whole rows"):
        hidden_from_pb(common_pb2.HiddenStates(start_position=0, hidden_size=4, data_f32=b"\0" * 6))


def test_training_saves_a_head_that_loads_identically(tiny_heads: dict[str, Path], tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    identity = target_identity(lm)
    for method, folder in tiny_heads.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["method"] == method and config["target"] == dataclasses.asdict(identity)
        assert config["training"]["command"] == f"test {method}" and config["training"]["steps"] == 4
        assert set(config["training"]["held_out"]) >= {"mean_accepted_length", "acceptance_per_position"}
        head, loaded_config = load_head(folder)
        again, _ = load_head(folder)
        assert loaded_config.draft_vocab_size == 64 == len(head.vocab_ids)
        for name, tensor in head.state_dict().items():  # fp16 on disk, float32 in memory: a round trip is exact
            assert torch.equal(tensor, again.state_dict()[name])
            if tensor.is_floating_point():
                assert torch.equal(tensor, tensor.half().float())
        resaved = folder.parent / f"{method}-resaved"
        save_head(head, loaded_config, resaved)
        first, second = load_file(str(folder / "model.safetensors")), load_file(str(resaved / "model.safetensors"))
        assert first.keys() == second.keys() and all(torch.equal(first[n], second[n]) for n in first)
        assert json.loads((resaved / "config.json").read_text()) == config


async def test_greedy_identity_with_trained_heads(tiny_stack, tiny_target: Path, tiny_heads: dict[str, Path]) -> None:
    lm = load(str(tiny_target))
    async with SpecdecClient(tiny_stack.address) as client:
        for method, folder in tiny_heads.items():
            for k in (1, 3, 5):
                for prompt in PROMPTS:
                    ids = lm.tokenizer.encode(prompt)
                    response = await client.generate(
                        prompt_token_ids=ids, max_new_tokens=MAX_NEW, draft=f"{method}:{folder}", k=k,
                        k_controller="fixed",
                    )  # fmt: skip
                    tokens = list(response.completions[0].token_ids)
                    assert_greedy_identical(lm, ids, tokens, hf_greedy(lm, ids, MAX_NEW))
                    assert response.stats.draft_tokens > 0 and not response.stats.draft_failure
                    assert response.draft == f"{method}:{folder}"
                    # the first step has no features yet: target-only; later steps draft (except where the token
                    # limit leaves room only for the target's own token)
                    assert 1 <= response.stats.k_histogram[0] <= 2


async def test_a_head_for_another_target_is_refused(tiny_unrelated: Path, tiny_heads: dict[str, Path]) -> None:
    lm = load(str(tiny_unrelated))
    stack = EmbeddedStack(target=str(tiny_unrelated), device="cpu")
    async with stack, SpecdecClient(stack.address) as client:
        for method, folder in tiny_heads.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.generate(prompt_token_ids=lm.tokenizer.encode("def"), draft=f"{method}:{folder}")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "trained for" in err.value.details() and "weights fingerprint" in err.value.details()
            assert f"specdec train-draft --target {tiny_unrelated} --method {method}" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.generate(prompt_token_ids=[1, 2], draft=f"eagle:{tiny_unrelated}/nowhere")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no trained head" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.generate(prompt_token_ids=[1, 2], draft=f"medusa:{tiny_heads['eagle']}")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "holds a eagle head" in err.value.details()


def test_mismatch_without_a_weights_fingerprint(tiny_heads: dict[str, Path], tiny_target: Path) -> None:
    """An older orchestrator sends no weights fingerprint: vocabulary, sizes and the target's name still count."""
    core = DraftCore("cpu")
    lm = load(str(tiny_target))
    good = DraftOptions([1, 2], f"medusa:{tiny_heads['medusa']}", target_name=str(tiny_target),
                        target_fingerprint=lm.fingerprint, target_vocab_size=lm.vocab_size)  # fmt: skip
    core.close_session(core.open_session(good))
    for change in ({"target_name": "someone/else"}, {"target_hidden_size": 65}, {"target_fingerprint": "0" * 16}):
        with pytest.raises(FailedPrecondition, match="trained for"):
            core.open_session(dataclasses.replace(good, **change))  # type: ignore[arg-type]


def test_distillation_teacher_is_the_targets_next_token_distribution(
    tiny_heads: dict[str, Path], tiny_dir: Path, tiny_target: Path
) -> None:
    """The soft labels of row j are the target's distribution after token j+1: on its own greedy answers their top
    token is the data's token at j+2 (the hard label), and a few steps on them lower the distillation loss."""
    from specdec.draft_service.heads.data import load_data
    from specdec.draft_service.heads.train import eagle_batches, eagle_loss, teacher_log_probs

    lm = load(str(tiny_target))
    data = load_data(next((tiny_dir / "head-data").glob("*.safetensors")))
    vocab_ids = torch.arange(lm.vocab_size)  # the whole vocabulary: the teacher's argmax is the greedy token
    rows = lm.model.get_output_embeddings().weight.detach().float()[vocab_ids]  # [V, H]
    embedding = lm.model.get_input_embeddings().weight.detach().float()
    cfg = TrainConfig(method="eagle", batch_tokens=256, window=64, noise=0.0, depth=2)
    batch = next(eagle_batches(data, list(range(data.num_sequences)), embedding, vocab_ids, cfg))
    teacher = teacher_log_probs(batch.target_features, rows)  # [B, T, V]
    answers = batch.weights >= 1.0
    assert answers.sum() > 20
    # the same, up to near-ties flipped by the data's fp16 storage of the features
    agree = (teacher.argmax(-1)[answers] == batch.labels[answers]).float().mean()
    assert agree >= 0.95, agree
    assert torch.allclose(teacher.exp().sum(-1), torch.ones(teacher.shape[:2]), atol=1e-4)

    config = HeadConfig(method="eagle", target=target_identity(lm), draft_vocab_size=lm.vocab_size,
                        layer=layer_shape(lm))  # fmt: skip
    head = build_head(config)
    init_head(head, lm, vocab_ids)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = eagle_loss(head, batch, cfg, 1.0, rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.9


def test_medusa_distillation_teacher_is_the_targets_distribution_k_tokens_ahead(
    tiny_heads: dict[str, Path], tiny_dir: Path, tiny_target: Path
) -> None:
    """Medusa head k at row j learns t_{j+2+k}; its soft label is the target's distribution after token j+1+k,
    whose top token on the target's greedy answers is that very token; a few steps lower the loss."""
    from specdec.draft_service.heads.data import load_data
    from specdec.draft_service.heads.train import medusa_batches, medusa_loss, teacher_log_probs

    lm = load(str(tiny_target))
    data = load_data(next((tiny_dir / "head-data").glob("*.safetensors")))
    vocab_ids = torch.arange(lm.vocab_size)
    rows = lm.model.get_output_embeddings().weight.detach().float()[vocab_ids]  # [V, H]
    cfg = TrainConfig(method="medusa", batch_tokens=256, medusa_heads=3)
    batch = next(medusa_batches(data, list(range(data.num_sequences)), vocab_ids, cfg))
    assert batch.target_features is not None and batch.target_features.shape == (256, 3, lm.model.config.hidden_size)
    teacher = teacher_log_probs(batch.target_features, rows)  # [P, M, V]
    answers = batch.weights >= 1.0  # [P, M]
    assert answers[:, 2].sum() > 20
    agree = (teacher.argmax(-1)[answers] == batch.labels[answers]).float().mean()
    assert agree >= 0.95, agree
    hard_cfg = dataclasses.replace(cfg, labels="tokens")
    hard = next(medusa_batches(data, list(range(data.num_sequences)), vocab_ids, hard_cfg))
    assert hard.target_features is None and torch.equal(hard.labels, batch.labels)

    config = HeadConfig(method="medusa", target=target_identity(lm), draft_vocab_size=lm.vocab_size, medusa_heads=3)
    head = build_head(config)
    init_head(head, lm, vocab_ids)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss, _ = medusa_loss(head, batch, rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.9


def test_training_continues_from_a_trained_head(tiny_heads: dict[str, Path], tiny_target: Path, tiny_dir: Path):
    """--init starts from the head's weights on new data: the draft vocabulary is chosen on that data, the rows of
    tokens it shares with the head's keep their trained weights (with lr 0: unchanged), new tokens start from the
    target's LM head; a head of another method or draft vocabulary size is refused before any data is generated."""
    from specdec.draft_service.heads.data import load_data

    lm = load(str(tiny_target))
    new_prompts = tiny_dir / "head-prompts-new.jsonl"
    reversed_prompts = [json.dumps({"prompt": f"{i} {p[::-1]}"}) + "\n" for i, p in enumerate(TRAIN_PROMPTS)]
    new_prompts.write_text("".join(reversed_prompts))
    new_data = tiny_dir / "head-data-new"
    base = dict(minutes=5, max_steps=1, draft_vocab=64, max_new_tokens=16, gen_batch=8, holdout_every=4,
                batch_tokens=256, window=64, prompt_files=[str(new_prompts)], data_dir=str(new_data))  # fmt: skip
    cfg = TrainConfig(method="eagle", lr=0.0, init_from=str(tiny_heads["eagle"]), **base)  # type: ignore[arg-type]
    continued, config, _ = train(lm, cfg, tiny_dir / "eagle-continued", "test continue")
    start, _ = load_head(tiny_heads["eagle"])
    for name, value in start.state_dict().items():
        if name not in ("vocab_ids", "lm_head.weight"):
            assert torch.equal(continued.state_dict()[name], value), name
    data = load_data(next(new_data.glob("*.safetensors")))
    train_idx, _ = split_indices(data, 4)
    fresh = draft_vocabulary(data.subset(train_idx), 64, lm.vocab_size, list(lm.eos_token_ids))
    assert torch.equal(continued.vocab_ids, fresh)  # chosen on the new data ...
    assert not torch.equal(fresh, start.vocab_ids)  # ... which ranks other tokens first
    old_row = {t: i for i, t in enumerate(start.vocab_ids.tolist())}
    target_rows = lm.model.get_output_embeddings().weight.detach().float()
    for i, t in enumerate(fresh.tolist()):  # shared tokens keep their trained rows, new ones start as the target's
        expected = start.lm_head.weight[old_row[t]] if t in old_row else target_rows[t]
        assert torch.equal(continued.lm_head.weight[i], expected), t
    kept = sum(t in old_row for t in fresh.tolist())
    assert 0 < kept < 64 and config.training["rows_carried_over"] == kept
    empty = tiny_dir / "no-data-yet"
    fast = {**base, "data_dir": str(empty)}
    for method, vocab in (("medusa", 64), ("eagle", 32)):
        cfg = TrainConfig(method=method, init_from=str(tiny_heads["eagle"]), **{**fast, "draft_vocab": vocab})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="another method, target, shape or draft vocabulary"):
            train(lm, cfg, tiny_dir / "refused", "test refuse")
    # a bad --init or --labels fails at once, before any data is generated
    with pytest.raises(FailedPrecondition, match="holds no trained head"):
        train(lm, TrainConfig(method="eagle", init_from=str(empty), **fast), tiny_dir / "refused", "x")  # type: ignore[arg-type]
    assert not empty.exists()
    with pytest.raises(ValueError, match="labels must be"):
        TrainConfig(method="eagle", labels="soft")


def test_held_out_replay_counts_steps(tiny_heads: dict[str, Path], tiny_target: Path, tiny_dir: Path) -> None:
    from specdec.draft_service.heads.data import load_data

    lm = load(str(tiny_target))
    data = load_data(next((tiny_dir / "head-data").glob("*.safetensors")))
    head, _ = load_head(tiny_heads["eagle"])
    report = replay_acceptance(head, data, [0, 1], lm.model.get_input_embeddings().weight.float(), lm.vocab_size, 3)
    answers = sum(int(data.offsets[i + 1] - data.offsets[i] - data.prompt_lengths[i]) for i in (0, 1))
    assert report.committed == answers - 2  # every answer token after the first, target-only step
    assert 1.0 <= report.mean_accepted_length <= 4.0


@pytest.fixture(scope="session")
def v16_heads(tiny_dir: Path, small_vocab_target: Path) -> dict[str, Path]:
    """Untrained heads (perturbed) for the 16-token target with a 12-token draft vocabulary: tokens outside it have
    q = 0, so the verifier's residual must supply them."""
    lm = load(str(small_vocab_target))
    vocab_ids = draft_vocabulary_for(lm.vocab_size, 12)
    heads = {}
    for method in ("eagle", "medusa"):
        config = HeadConfig(
            method=method, target=target_identity(lm), draft_vocab_size=12,
            layer=layer_shape(lm) if method == "eagle" else None, medusa_heads=3 if method == "medusa" else 0,
        )  # fmt: skip
        head = build_head(config)
        init_head(head, lm, vocab_ids)
        torch.manual_seed(5)
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        save_head(head, config, tiny_dir / f"v16-{method}")
        heads[method] = tiny_dir / f"v16-{method}"
    return heads


def draft_vocabulary_for(vocab_size: int, size: int) -> torch.Tensor:
    return torch.arange(vocab_size)[-size:]


@pytest.mark.parametrize("method", ["eagle", "medusa"])
async def test_sampled_tokens_follow_the_target(small_vocab_target: Path, v16_heads: dict[str, Path], method: str):
    """Rejection sampling with a head's q (dense, zero outside its draft vocabulary) keeps the target's distribution."""
    target = load(str(small_vocab_target))
    prompt = repetitive_prompt(target)
    sampling = SamplingConfig(temperature=1.0)
    new_tokens, calls, samples_per_call = 4, 20, 64
    p = exact_marginals(target, prompt, new_tokens, sampling)
    counts = torch.zeros(new_tokens, target.vocab_size + 1)
    drafted = accepted = 0
    stack = EmbeddedStack(target=str(small_vocab_target), device="cpu", limits=Limits(samples_in_flight=16))
    async with stack, SpecdecClient(stack.address) as client:
        for call in range(calls):
            response = await client.generate(
                prompt_token_ids=prompt, max_new_tokens=new_tokens, temperature=1.0, seed=call,
                num_samples=samples_per_call, draft=f"{method}:{v16_heads[method]}", k=2, k_controller="fixed",
                probs_encoding=common_pb2.PROBS_ENCODING_DENSE,
            )  # fmt: skip
            drafted += response.stats.draft_tokens
            accepted += response.stats.accepted_tokens
            for completion in response.completions:
                tokens = list(completion.token_ids) + [target.vocab_size] * new_tokens
                for position, token in enumerate(tokens[:new_tokens]):
                    counts[position, token] += 1
    assert drafted > 0 and 0 < accepted < drafted
    for position in range(new_tokens):
        empirical = counts[position] / counts[position].sum()
        assert tv(empirical, p[position]) < 0.1, f"position {position}: TV {tv(empirical, p[position]):.3f}"


@pytest.mark.real_model
@pytest.mark.parametrize("method", ["eagle", "medusa"])
async def test_shipped_heads_on_the_default_model(method: str) -> None:
    """`--draft eagle` / `--draft medusa` (the shipped heads) on the default target: greedy identity on a chat prompt
    the training never saw, and some drafts accepted."""
    from specdec.modeling import chat_prompt_ids

    lm = load("")
    ids = chat_prompt_ids(
        lm.tokenizer, [{"role": "user", "content": "What is the difference between a lake and a sea?"}]
    )
    async with EmbeddedStack(target_model=lm) as stack, SpecdecClient(stack.address) as client:
        response = await client.generate(
            prompt_token_ids=ids, max_new_tokens=32, draft=method, k=4, k_controller="fixed"
        )
    assert_greedy_identical(lm, ids, list(response.completions[0].token_ids), hf_greedy(lm, ids, 32))
    # the shipped heads are weak (see the README): some drafts are accepted, far from all
    assert response.stats.draft_tokens > 0 and response.stats.accepted_tokens > 0, response.stats


def test_training_data_is_generated_once_per_prompt_file(tiny_dir: Path, tiny_target: Path, tmp_path: Path) -> None:
    """Each prompt file's answers are cached on their own: adding a file generates only its answers, and the data
    of several files is their sequences end to end."""
    from specdec.draft_service.heads.train import load_training_data

    lm = load(str(tiny_target))
    files = []
    for name, prompts in (("a", TRAIN_PROMPTS[:3]), ("b", TRAIN_PROMPTS[3:5])):
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    cache = tmp_path / "data"
    cfg = TrainConfig(method="eagle", max_new_tokens=8, gen_batch=4, prompt_files=[str(files[0])], data_dir=str(cache))
    first = load_training_data(lm, cfg)
    assert first.num_sequences == 3 and len(list(cache.iterdir())) == 1
    cached = next(cache.iterdir()).stat().st_mtime_ns
    both = load_training_data(lm, dataclasses.replace(cfg, prompt_files=[str(f) for f in files]))
    assert len(list(cache.iterdir())) == 2 and min(f.stat().st_mtime_ns for f in cache.iterdir()) == cached
    assert both.num_sequences == 5 and both.info["sequences"] == 5
    assert both.info["generated_tokens"] == both.generated_tokens()
    for i in range(3):  # the first file's sequences, unchanged, come first
        assert all(torch.equal(x, y) for x, y in zip(both.sequence(i)[:2], first.sequence(i)[:2], strict=True))
    second = load_training_data(lm, dataclasses.replace(cfg, prompt_files=[str(files[1])]))
    for i in range(2):
        assert torch.equal(both.sequence(3 + i)[0], second.sequence(i)[0])


def test_target_written_questions(tiny_target: Path) -> None:
    """Questions sampled from the target: whole first lines only, distinct, never an excluded (benchmark) prompt,
    the same for the same seed."""
    from specdec.draft_service.heads.questions import EXAMPLE_QUESTIONS, few_shot_text, first_question, write_questions

    assert first_question(" How do tides work?\n7. Why") == "How do tides work?"
    assert first_question(" How do tides work and why do") is None  # cut off before its line ended
    assert first_question(" 7.\n") is None and first_question("  !!!  ??? ...\n") is None
    text = few_shot_text(random.Random(3))
    assert text.endswith("\n6.") and sum(q in text for q in EXAMPLE_QUESTIONS) == 5
    lm = load(str(tiny_target))
    first = write_questions(lm, 3, seed=1, batch_size=16)
    assert len(first) == 3 and len({q.casefold() for q in first}) == 3
    assert all("\n" not in q and len(q) >= 12 for q in first)
    assert write_questions(lm, 3, seed=1, batch_size=16) == first
    again = write_questions(lm, 3, seed=1, batch_size=16, exclude=first[:2])
    assert not set(first[:2]) & set(again)


def test_training_prompts_are_not_benchmark_prompts() -> None:
    """The shipped training prompts never are a benchmark prompt, and the target-written chat questions are not
    paraphrases of one either (word Jaccard < 0.5; measured max 0.33: "What is the difference between ...")."""
    from specdec.draft_service.heads.data import load_prompt_messages, shipped_prompt_files

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z']+", text.lower())) - STOP_WORDS

    root = Path(__file__).resolve().parent.parent
    bench = [m[0]["content"] for m in load_prompt_messages(sorted((root / "bench" / "suites").glob("*.jsonl")))]
    normal = {" ".join(b.casefold().split()) for b in bench}
    for file in shipped_prompt_files():
        for messages in load_prompt_messages([file]):
            assert " ".join(messages[0]["content"].casefold().split()) not in normal, (file.name, messages)
    written = load_prompt_messages([file for file in shipped_prompt_files() if file.name == "chat-generated.jsonl"])
    assert len(written) >= 1000
    bench_words = [words(b) for b in bench]
    for messages in written:
        w = words(messages[0]["content"])
        closest = max(len(w & b) / max(1, len(w | b)) for b in bench_words)
        assert closest < 0.5, messages[0]["content"]


STOP_WORDS = {"a", "an", "the", "i", "to", "and", "of", "is", "how", "what", "can", "my", "do", "you", "in", "for",
              "me", "it", "are", "some", "should", "that", "with", "on", "be"}  # fmt: skip


def _path(tree_parents: list[int], node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = tree_parents[node]
    return path[::-1]


@torch.inference_mode()
def test_eagle_trees_score_every_path_as_drafting_it_as_a_chain_would() -> None:
    shape = LayerShape(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64)
    head = random_eagle(shape, 50, 20)
    embedding = torch.randn(50, 32)
    drafter = EagleDrafter(head, embedding, 50, SamplingConfig())
    committed = [1, 2, 3, 4, 5]
    drafter.observe_hidden(0, torch.randn(4, 32))
    chain = [t for t, _ in drafter.propose(committed, 4)]
    narrow = drafter.propose_tree(committed, 4, 4, beam=1)  # one branch per level: the greedy chain
    assert narrow.tokens == chain and narrow.parents == [-1, 0, 1, 2]
    tree = drafter.propose_tree(committed, 3, 9, beam=3)
    assert len(tree.tokens) == 9 and all(-1 <= p < i for i, p in enumerate(tree.parents))
    assert all(tree.scores[i] <= tree.scores[p] for i, p in enumerate(tree.parents) if p >= 0)  # never likelier
    for node in range(len(tree.tokens)):  # re-draft each path as a chain: the same log-probability
        fresh = EagleDrafter(head, embedding, 50, SamplingConfig())
        fresh.observe_hidden(0, drafter.features.rows[:4])
        feature = fresh._root_feature(committed)
        assert feature is not None
        score = 0.0
        for i in _path(tree.parents, node):
            logp = torch.log_softmax(head.lm_head(feature[0, 0]).float(), -1)
            score += float(logp[(head.vocab_ids == tree.tokens[i]).nonzero()[0, 0]])
            feature = head.forward_cached(feature, embedding[tree.tokens[i]][None, None], fresh.cache)
        assert score == pytest.approx(tree.scores[node], abs=1e-4)
    assert [t for t, _ in drafter.propose(committed, 4)] == chain  # tree drafting left the cache as it was
    floor = sorted(tree.scores)[len(tree.scores) // 2]  # keep only the likelier half (path probability)
    pruned = drafter.propose_tree(committed, 3, 9, beam=3, min_probability=math.exp(floor) - 1e-9)
    assert 0 < len(pruned.tokens) < len(tree.tokens) and min(pruned.scores) >= floor - 1e-6
    assert set(zip(pruned.tokens, pruned.scores, strict=True)) <= set(zip(tree.tokens, tree.scores, strict=True))


@torch.inference_mode()
def test_sampled_eagle_trees_draw_children_without_replacement_from_their_q() -> None:
    shape = LayerShape(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64)
    head = random_eagle(shape, 50, 20)
    embedding = torch.randn(50, 32)
    hidden = torch.randn(4, 32)
    committed = [1, 2, 3, 4, 5]
    sampling = SamplingConfig(temperature=1.0, seed=3)

    def tree_of(seed: int) -> TreeBlock:
        drafter = EagleDrafter(head, embedding, 50, SamplingConfig(temperature=1.0, seed=seed))
        drafter.observe_hidden(0, hidden)
        return drafter.propose_tree(committed, 4, 12, beam=3)

    tree = tree_of(3)
    assert len(tree.tokens) == 12 == len(tree.probs) and all(-1 <= p < i for i, p in enumerate(tree.parents))
    depths = [len(_path(tree.parents, i)) for i in range(12)]
    assert depths == sorted(depths) and max(depths) == 4  # level by level, the budget spread to the full depth
    outside = torch.ones(50, dtype=torch.bool)
    outside[head.vocab_ids] = False
    for parent in {-1, *tree.parents}:
        children = [i for i, p in enumerate(tree.parents) if p == parent]
        if not children:
            continue
        tokens = [tree.tokens[i] for i in children]
        assert len(set(tokens)) == len(tokens)  # without replacement
        q = tree.probs[children[0]]
        assert all(tree.probs[i] is q for i in children)  # siblings: one q (one tensor: it crosses the wire once)
        assert float(q.sum()) == pytest.approx(1.0, abs=1e-5) and float(q[outside].sum()) == 0.0
        assert all(float(q[t]) > 0 for t in tokens)
    groups = len({-1, *tree.parents})
    assert sum(m.WhichOneof("encoding") == "sparse" for m in encode_distributions(tree.probs, SPARSE)) == groups
    root_q = tree.probs[0]  # the root's q is the chain drafter's q for position n
    chain = EagleDrafter(head, embedding, 50, sampling)
    chain.observe_hidden(0, hidden)
    first = next(iter(chain.propose(committed, 1)))
    assert first[1] is not None and torch.allclose(first[1], root_q, atol=1e-6)
    # the root's children are the draws, in order, from the generator reseeded for (position, root)
    gen = reseed_for_position(make_generator(3, torch.device("cpu")), 3, len(committed), "tree-draft--1")
    roots = [i for i, p in enumerate(tree.parents) if p == -1]
    draws = torch.multinomial(root_q[head.vocab_ids], len(roots), replacement=False, generator=gen)
    assert [tree.tokens[i] for i in roots] == head.vocab_ids[draws].tolist()
    again = tree_of(3)
    assert (again.tokens, again.parents) == (tree.tokens, tree.parents)  # seeded
    assert any(tree_of(seed).tokens != tree.tokens for seed in range(4, 8))


async def test_greedy_identity_with_eagle_trees(tiny_stack, tiny_target: Path, tiny_heads: dict[str, Path]) -> None:
    lm = load(str(tiny_target))
    async with SpecdecClient(tiny_stack.address) as client:
        for k, nodes in ((2, 4), (4, 8), (3, 3)):
            for prompt in PROMPTS:
                ids = lm.tokenizer.encode(prompt)
                response = await client.generate(
                    prompt_token_ids=ids, max_new_tokens=MAX_NEW, draft=f"eagle:{tiny_heads['eagle']}", k=k,
                    k_controller="fixed", tree_nodes=nodes,
                )  # fmt: skip
                tokens = list(response.completions[0].token_ids)
                assert_greedy_identical(lm, ids, tokens, hf_greedy(lm, ids, MAX_NEW))
                assert not response.stats.draft_failure
                # the first step has no features; near the token limit the trees are shallower (and narrower)
                assert response.stats.draft_tokens >= min(nodes, 2 * k) * (response.stats.steps - 4)
                assert len(response.stats.k_histogram) == nodes + 1  # whole trees were verified
                assert len(response.stats.acceptance_per_position) <= k  # positions: the trees' depth
        sampled = []  # sampled trees: seeded runs repeat
        for seed in (11, 11, 12):
            response = await client.generate(prompt_token_ids=lm.tokenizer.encode(PROMPTS[0]), max_new_tokens=MAX_NEW,
                                             draft=f"eagle:{tiny_heads['eagle']}", k=3, k_controller="fixed",
                                             tree_nodes=6, temperature=0.9, seed=seed)  # fmt: skip
            assert not response.stats.draft_failure and response.stats.draft_tokens > 0
            sampled.append(list(response.completions[0].token_ids))
        assert sampled[0] == sampled[1] != sampled[2]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.generate(prompt_token_ids=[1, 2], draft="eagle", tree_nodes=4, temperature=0.7,
                                  policy="typical")  # fmt: skip
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lossless" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.generate(prompt_token_ids=[1, 2], draft="eagle", tree_nodes=10_000)
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        for prompt in PROMPTS:  # the cost controller verifies only the nodes it expects to pay
            ids = lm.tokenizer.encode(prompt)
            response = await client.generate(prompt_token_ids=ids, max_new_tokens=MAX_NEW,
                                             draft=f"eagle:{tiny_heads['eagle']}", k=3, k_controller="cost",
                                             tree_nodes=8)  # fmt: skip
            assert_greedy_identical(lm, ids, list(response.completions[0].token_ids), hf_greedy(lm, ids, MAX_NEW))
            assert not response.stats.draft_failure and response.stats.draft_calls > 0
        ids = lm.tokenizer.encode(PROMPTS[0])  # a draft without trees answers with chains
        response = await client.generate(prompt_token_ids=ids, max_new_tokens=MAX_NEW, draft="ngram", k=3,
                                         k_controller="fixed", tree_nodes=8)  # fmt: skip
        assert_greedy_identical(lm, ids, list(response.completions[0].token_ids), hf_greedy(lm, ids, MAX_NEW))


def _random_data(sequences: int, seed: int) -> HeadData:
    """Sequences of random prompts (lengths 3-8) and answers (2-5 tokens), hidden states of width 2."""
    rng = random.Random(seed)
    prompt_lengths = [rng.randint(3, 8) for _ in range(sequences)]
    lengths = [p + rng.randint(2, 5) for p in prompt_lengths]
    total = sum(lengths)
    return HeadData(
        tokens=torch.tensor([rng.randrange(1000) for _ in range(total)]),
        hidden=torch.zeros(total, 2, dtype=torch.float16),
        offsets=torch.cumsum(torch.tensor([0, *lengths]), 0),
        prompt_lengths=torch.tensor(prompt_lengths),
        info={},
    )


def test_held_out_split_is_stable_when_prompt_files_are_added() -> None:
    # 303 added: a shift that is no multiple of 10, so an every-n-th-index split would move sequences
    old, added = _random_data(400, seed=1), _random_data(303, seed=2)
    train_old, held_old = split_indices(old, 10)
    assert sorted(train_old + held_old) == list(range(400)) and not set(train_old) & set(held_old)
    assert 20 <= len(held_old) <= 60  # about one in ten
    # the new file sorts before the old one (as chat-generated-2 did before chat-generated): indices shift
    _, held_both = split_indices(concat_data([added, old]), 10)
    assert {i - 303 for i in held_both if i >= 303} == set(held_old)  # every old sequence kept its side
    assert {i for i in held_both if i < 303} == set(split_indices(added, 10)[1])  # and every new one its own
    assert split_indices(_random_data(2, seed=3), 1000)[1] != []  # tiny sets still hold one out
    assert split_indices(old, 0) == (list(range(400)), [])
