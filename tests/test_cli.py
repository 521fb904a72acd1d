"""The CLI as users run it: three `specdec serve` processes on free ports, then `specdec generate` against them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.faults import ENV, SPECDEC
from tests.helpers import assert_greedy_identical, hf_greedy, load


@contextmanager
def serving(*args: str, http: bool = False, metrics_urls: list[str] | None = None) -> Iterator[str]:
    """Run `specdec serve ... --port 0`, yield its address (with http: its HTTP base URL), then SIGTERM it and
    expect a clean exit. With `metrics_urls`, serve metrics on free ports and append their URLs to it."""
    extra = ["--http-port", "0"] if http else []
    extra += ["--metrics-port", "0"] if metrics_urls is not None else []
    proc = subprocess.Popen(
        [*SPECDEC, "serve", *args, "--port", "0", *extra], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        assert match, f"unexpected first line: {line!r}"
        if http:
            line = proc.stdout.readline()
            match = re.search(r"HTTP on (\S+)", line)
            assert match, f"unexpected second line: {line!r}"
        if metrics_urls is not None:
            for _ in range(3 if args[0] == "all" else 1):
                metrics_line = proc.stdout.readline()
                found = re.search(r"metrics on (\S+)", metrics_line)
                assert found, f"unexpected metrics line: {metrics_line!r}"
                metrics_urls.append(found.group(1))
        yield match.group(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def generate(*args: str) -> dict:
    out = subprocess.run([*SPECDEC, "generate", *args, "--json"], capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_three_served_processes_and_a_cli_client(tiny_target: Path) -> None:
    lm = load(str(tiny_target))
    with (
        serving("verifier", "--target", str(tiny_target), "--device", "cpu") as verifier,
        serving("draft", "--preload", f"model:{tiny_target}") as draft,
        serving("orchestrator", "--verifier-addr", verifier, "--draft-addr", draft) as orchestrator,
    ):
        result = generate(
            "--orchestrator", orchestrator, "--prompt", "def add(a, b):", "--max-new-tokens", "20",
            "--draft", f"model:{tiny_target}", "--k", "3",
        )  # fmt: skip
        reference = hf_greedy(lm, result["prompt_token_ids"], 20)
        assert_greedy_identical(lm, result["prompt_token_ids"], result["token_ids"], reference)
        assert result["stats"]["acceptance_rate"] == 1.0
        assert result["finish_reason"] == "length"

        many = generate(
            "--orchestrator", orchestrator, "--prompt", "hello", "--max-new-tokens", "5",
            "--temperature", "0.8", "--seed", "3", "--num-samples", "3",
        )  # fmt: skip
        assert len(many["token_ids"]) == len(many["text"]) == len(many["finish_reason"]) == 3
        assert many["seed"] == 3


def test_generate_reports_errors_with_their_status(tiny_target: Path) -> None:
    out = subprocess.run(
        [*SPECDEC, "generate", "--target", str(tiny_target), "--prompt", "x", "--temperature", "-1"],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert out.returncode == 1
    assert "INVALID_ARGUMENT" in out.stderr and "temperature" in out.stderr


def test_serve_all_with_the_openai_api(tiny_target: Path) -> None:
    import openai

    metrics_urls: list[str] = []
    with serving("all", "--target", str(tiny_target), http=True, metrics_urls=metrics_urls) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [str(tiny_target)]
        response = client.completions.create(
            model=str(tiny_target), prompt="def add(a, b):", max_tokens=5, temperature=0
        )
        assert response.usage.completion_tokens == 5
        pages = [urllib.request.urlopen(url, timeout=10).read().decode() for url in metrics_urls]
    assert len(set(metrics_urls)) == 3
    assert 'specdec:generation_tokens_total{draft="ngram",policy="exact"} 5.0' in pages[0]  # the orchestrator
    assert 'specdec:forward_latency_seconds_count{kind="verify",service="verifier"}' in pages[1]
    assert 'specdec:live_sessions{service="draft"} 0.0' in pages[2]


def test_overload_and_auth_through_the_official_openai_client(tiny_target: Path) -> None:
    """`serve all` with one request slot, no queue and a token: a concurrent request gets HTTP 429 (openai's
    RateLimitError) at once, a wrong key 401 (AuthenticationError); the server keeps serving."""
    import asyncio

    import openai

    args = ["all", "--target", str(tiny_target), "--max-concurrent-requests", "1", "--max-queued-requests", "0"]
    with serving(*args, "--auth-token", "s3cret", http=True) as base_url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()

        async def burst() -> list[object]:
            client = openai.AsyncOpenAI(base_url=base_url, api_key="s3cret", max_retries=0)
            one = lambda: client.completions.create(  # noqa: E731
                model=str(tiny_target), prompt="def add(a, b):", max_tokens=200, temperature=0
            )
            return await asyncio.gather(*(one() for _ in range(4)), return_exceptions=True)

        outcomes = asyncio.run(burst())
        refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
        served = [o for o in outcomes if isinstance(o, openai.types.Completion)]
        assert refused and served and len(refused) + len(served) == 4, outcomes
        assert "max_concurrent_requests" in str(refused[0])
        ok = openai.OpenAI(base_url=base_url, api_key="s3cret", max_retries=0)
        # greedy: at the API's default temperature 1 the random tiny model may sample EOS early (seen once in CI)
        after = ok.completions.create(model=str(tiny_target), prompt="x", max_tokens=3, temperature=0)
        assert after.usage is not None and after.usage.completion_tokens == 3
