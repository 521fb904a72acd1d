"""The OpenAI-compatible HTTP API, driven by the official `openai` client against a real server on a free port."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import openai
import pytest

from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.embedded import EmbeddedStack
from tests.helpers import load
from tests.test_sessions import wait_for_no_sessions

PROMPT = "def add(a, b):\n    return"


@pytest.fixture
async def http_stack(tiny_target: Path):
    async with EmbeddedStack(target=str(tiny_target), device="cpu", http_port=0) as stack:
        yield stack


def client_for(stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.http_url, api_key="unused", max_retries=0)


async def test_completions_match_the_grpc_api_token_for_token(http_stack, tiny_target: Path) -> None:
    client = client_for(http_stack)
    model = str(tiny_target)
    response = await client.completions.create(model=model, prompt=PROMPT, max_tokens=20, temperature=0)
    async with SpecdecClient(http_stack.address) as grpc_client:
        reference = await grpc_client.generate(PROMPT, max_new_tokens=20)
    choice = response.choices[0]
    assert choice.text == reference.completions[0].text
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 20
    assert response.usage.prompt_tokens == len(reference.prompt_token_ids)
    assert response.usage.total_tokens == response.usage.prompt_tokens + 20
    assert response.model == model
    stats = response.model_extra["specdec"]
    assert stats["steps"] >= 1 and 0.0 <= stats["acceptance_rate"] <= 1.0 and stats["mean_accepted_length"] >= 1.0


async def test_token_array_prompt_and_logprobs(http_stack, tiny_target: Path) -> None:
    ids = load(str(tiny_target)).tokenizer.encode(PROMPT)
    response = await client_for(http_stack).completions.create(
        model=str(tiny_target), prompt=ids, max_tokens=6, temperature=0, logprobs=1
    )
    logprobs = response.choices[0].logprobs
    assert len(logprobs.token_logprobs) == 6 and all(lp <= 0 for lp in logprobs.token_logprobs)
    assert len(logprobs.tokens) == 6 and logprobs.text_offset == sorted(logprobs.text_offset)


async def test_chat_completions_with_n_and_seed(http_stack, tiny_target: Path) -> None:
    client = client_for(http_stack)
    kwargs = dict(model=str(tiny_target), messages=[{"role": "user", "content": "Hi"}], max_tokens=12, n=3, seed=5)
    a = await client.chat.completions.create(temperature=0.9, **kwargs)
    b = await client.chat.completions.create(temperature=0.9, **kwargs)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert all(c.message.role == "assistant" for c in a.choices)
    assert a.usage.completion_tokens > 0 and a.object == "chat.completion"


async def test_streamed_chat_equals_the_whole_response(http_stack, tiny_target: Path) -> None:
    client = client_for(http_stack)
    kwargs = dict(
        model=str(tiny_target), messages=[{"role": "user", "content": "Hello!"}], max_tokens=24, temperature=0
    )
    whole = await client.chat.completions.create(**kwargs)
    stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    pieces, finish, usage, roles = [], None, None, []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            roles += [choice.delta.role] if choice.delta.role else []
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason and roles == ["assistant"]
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


async def test_streamed_completion_honours_stop_strings(http_stack, tiny_target: Path) -> None:
    client = client_for(http_stack)
    model = str(tiny_target)
    full = (await client.completions.create(model=model, prompt=PROMPT, max_tokens=30, temperature=0)).choices[0].text
    stop = full[8:11]
    stream = await client.completions.create(
        model=model, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop], stream=True
    )
    text, finish = "", None
    async for chunk in stream:
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
    assert text == full[: full.index(stop)] and finish == "stop"


async def test_errors_use_openai_shapes_and_statuses(http_stack, tiny_target: Path) -> None:
    client = client_for(http_stack)
    model = str(tiny_target)
    with pytest.raises(openai.BadRequestError) as bad:
        await client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=-1)
    assert bad.value.status_code == 400
    assert bad.value.body["type"] == "invalid_request_error" and "temperature" in bad.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="someone/else", prompt=PROMPT, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=model, messages=[], max_tokens=4)
    with pytest.raises(openai.BadRequestError):  # a streaming request fails before its stream starts
        await client.completions.create(model=model, prompt=PROMPT, max_tokens=4, top_p=3.0, stream=True)
    ok = await client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0)
    assert ok.usage.completion_tokens == 4


async def test_models_and_health(http_stack, tiny_target: Path) -> None:
    models = await client_for(http_stack).models.list()
    assert [m.id for m in models.data] == [str(tiny_target)]
    url = http_stack.http_url.removesuffix("/v1") + "/health"
    body = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(url, timeout=10).read()))
    assert body == {"status": "ok"}


async def test_client_disconnect_mid_stream_frees_the_sessions(http_stack, tiny_target: Path) -> None:
    client = client_for(http_stack)
    stream = await client.completions.create(
        model=str(tiny_target), prompt=PROMPT, max_tokens=400, temperature=0.8, stream=True, extra_body={"k": 1}
    )
    async for _ in stream:
        break
    await stream.close()
    await wait_for_no_sessions(http_stack)


async def test_a_verifier_that_is_down_gives_503(http_stack, tiny_target: Path) -> None:
    await http_stack.servers[0].stop(grace=0)  # the verifier goes away
    with pytest.raises(openai.InternalServerError) as info:
        await client_for(http_stack).completions.create(model=str(tiny_target), prompt=PROMPT, max_tokens=4)
    assert info.value.status_code == 503
