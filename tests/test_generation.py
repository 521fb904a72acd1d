"""Seeds, samples, streaming, stop strings, logprobs and finish reasons through the public API."""

from __future__ import annotations

from pathlib import Path

import torch

from specdec.orchestrator.client import SpecdecClient
from tests.helpers import hf_greedy, load

PROMPT = "The quick brown fox jumps over the lazy dog. The quick"


async def test_seeded_sampling_repeats_exactly(tiny_stack, tiny_target: Path, tiny_unrelated: Path) -> None:
    async with SpecdecClient(tiny_stack.address) as client:
        for draft in ("ngram", f"model:{tiny_unrelated}", f"model:{tiny_target}"):
            kwargs = dict(max_new_tokens=24, temperature=0.9, top_k=50, seed=1234, draft=draft, k=3)
            a = await client.generate(PROMPT, **kwargs)
            b = await client.generate(PROMPT, **kwargs)
            assert a.completions[0].token_ids == b.completions[0].token_ids
            assert a.seed == b.seed == 1234
            c = await client.generate(PROMPT, **{**kwargs, "seed": 99})
            assert c.completions[0].token_ids != a.completions[0].token_ids


async def test_a_seeded_completion_does_not_depend_on_the_prompt_lookup_draft(tiny_stack) -> None:
    """One-hot drafts are verified position by position against the target's own seeded draw, so drafting
    (any K, any controller) commits exactly what target-only sampling with that seed commits."""
    async with SpecdecClient(tiny_stack.address) as client:
        kwargs = dict(max_new_tokens=40, temperature=1.0, top_k=20, seed=5)
        alone = await client.generate(PROMPT, draft="none", **kwargs)
        for k, controller in ((1, "fixed"), (4, "fixed"), (4, "heuristic"), (4, "cost")):
            drafted = await client.generate(PROMPT, draft="ngram", k=k, k_controller=controller, **kwargs)
            assert drafted.completions[0].token_ids == alone.completions[0].token_ids, (k, controller)
            if controller == "fixed":
                assert drafted.stats.draft_tokens > 0


async def test_sample_i_depends_only_on_seed_and_i(tiny_stack) -> None:
    async with SpecdecClient(tiny_stack.address) as client:
        kwargs = dict(max_new_tokens=16, temperature=1.0, seed=7)
        three = await client.generate(PROMPT, num_samples=3, **kwargs)
        two = await client.generate(PROMPT, num_samples=2, **kwargs)
        assert [c.index for c in three.completions] == [0, 1, 2]
        assert [c.token_ids for c in three.completions[:2]] == [c.token_ids for c in two.completions]
        assert len({tuple(c.token_ids) for c in three.completions}) == 3  # independent samples differ
        assert three.stats.generated_tokens == sum(len(c.token_ids) for c in three.completions)


async def test_unseeded_requests_report_their_random_seed(tiny_stack) -> None:
    async with SpecdecClient(tiny_stack.address) as client:
        a = await client.generate(PROMPT, max_new_tokens=8, temperature=1.0)
        replay = await client.generate(PROMPT, max_new_tokens=8, temperature=1.0, seed=a.seed)
        assert a.completions[0].token_ids == replay.completions[0].token_ids


async def test_stream_deltas_add_up_to_the_final_response(tiny_stack) -> None:
    async with SpecdecClient(tiny_stack.address) as client:
        deltas, done = [], None
        async for message in client.generate_stream(PROMPT, max_new_tokens=30, num_samples=2, temperature=0.8, seed=3):
            if message.WhichOneof("kind") == "delta":
                deltas.append(message.delta)
            else:
                done = message.done
        assert done is not None
        for completion in done.completions:
            mine = [d for d in deltas if d.index == completion.index]
            assert [t for d in mine for t in d.token_ids] == list(completion.token_ids)
            assert "".join(d.text for d in mine) == completion.text
            assert mine[-1].finish_reason == completion.finish_reason
        whole = await client.generate(PROMPT, max_new_tokens=30, num_samples=2, temperature=0.8, seed=3)
        assert [c.token_ids for c in whole.completions] == [c.token_ids for c in done.completions]


async def test_stop_string_ends_generation_and_is_not_included(tiny_stack, tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    ids = lm.tokenizer.encode(PROMPT)
    full_text = lm.tokenizer.decode(hf_greedy(lm, ids, 40), skip_special_tokens=True)
    stop = full_text[10:13]  # three characters from the middle of the greedy output
    async with SpecdecClient(tiny_stack.address) as client:
        response = await client.generate(prompt_token_ids=ids, max_new_tokens=40, stop=[stop], draft="ngram")
        completion = response.completions[0]
        assert completion.finish_reason == "stop"
        assert completion.text == full_text[: full_text.index(stop)]
        assert stop not in completion.text
        # the token ids end with the token that completed the stop string
        decoded = lm.tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
        assert stop in decoded and stop not in lm.tokenizer.decode(list(completion.token_ids)[:-1])


async def test_finish_reason_length_and_logprobs_match_the_target(tiny_stack, tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    ids = lm.tokenizer.encode(PROMPT)
    async with SpecdecClient(tiny_stack.address) as client:
        response = await client.generate(prompt_token_ids=ids, max_new_tokens=12, return_logprobs=True, k=4)
    completion = response.completions[0]
    assert completion.finish_reason == "length" and len(completion.token_ids) == 12
    tokens = list(completion.token_ids)
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(list(completion.logprobs)), expected, atol=1e-4)


async def test_chat_messages_use_the_chat_template(tiny_stack, tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    messages = [{"role": "user", "content": "Hello!"}]
    text = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    async with SpecdecClient(tiny_stack.address) as client:
        response = await client.generate(messages=messages, max_new_tokens=4)
    assert list(response.prompt_token_ids) == lm.tokenizer.encode(text, add_special_tokens=False)


async def test_eos_ends_generation_with_stop(tiny_stack, tiny_target: Path) -> None:
    """Force EOS by making it the prompt's continuation: a prompt of repeated EOS tokens."""
    lm = load(str(tiny_target))
    eos = lm.eos_token_ids[0]
    async with SpecdecClient(tiny_stack.address) as client:
        for start in range(0, 60, 3):  # find a prompt after which greedy emits EOS within 30 tokens
            ids = lm.tokenizer.encode(PROMPT)[: 3 + start % 10] + [eos] * (1 + start // 10)
            ref = hf_greedy(lm, ids, 30)
            if eos in ref:
                response = await client.generate(prompt_token_ids=ids, max_new_tokens=30, draft="ngram", k=4)
                completion = response.completions[0]
                assert list(completion.token_ids) == ref[: ref.index(eos) + 1]
                assert completion.finish_reason == "stop"
                return
    raise AssertionError("no prompt found whose greedy continuation reaches EOS")
