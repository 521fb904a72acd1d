"""Per-request stats and the Prometheus endpoints of the three services: the counters are served and agree
with the stats of the requests that produced them."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.embedded import EmbeddedStack
from specdec.v1 import orchestrator_pb2
from tests.helpers import load

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def stack(tiny_target: Path) -> AsyncIterator[EmbeddedStack]:
    async with EmbeddedStack(target=str(tiny_target), device="cpu", metrics_port=0) as running:
        yield running


def check_stats_are_consistent(stats: orchestrator_pb2.GenerationStats) -> None:
    assert sum(stats.drafted_per_position) == stats.draft_tokens
    assert sum(stats.accepted_per_position) == stats.accepted_tokens
    assert sum(stats.k_histogram) == stats.steps
    assert sum(k * n for k, n in enumerate(stats.k_histogram)) == stats.draft_tokens
    assert list(stats.drafted_per_position) == sorted(stats.drafted_per_position, reverse=True)
    for rate, accepted, drafted in zip(
        stats.acceptance_per_position, stats.accepted_per_position, stats.drafted_per_position, strict=True
    ):
        assert rate == pytest.approx(accepted / drafted)
    assert stats.mean_k == pytest.approx(stats.draft_tokens / stats.steps)
    assert stats.draft_calls <= 2 * stats.steps  # a step asks at most for its block and, ahead, the next one


async def test_counters_agree_with_the_per_request_stats(stack: EmbeddedStack, tiny_target: Path) -> None:
    ids = load(str(tiny_target)).tokenizer.encode("one two three four one two three four one two three")
    async with SpecdecClient(stack.address) as client:
        responses = [
            await client.generate(prompt_token_ids=ids, max_new_tokens=24, draft="ngram", k=4, k_controller=c)
            for c in ("fixed", "fixed", "cost")
        ]
        target_only = await client.generate(prompt_token_ids=ids, max_new_tokens=10, draft="none")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await client.generate(prompt_token_ids=ids, max_new_tokens=10**9)
    assert bad.value.code() == grpc.StatusCode.OUT_OF_RANGE
    for r in (*responses, target_only):
        check_stats_are_consistent(r.stats)
    assert target_only.stats.draft_calls == 0 and list(target_only.stats.k_histogram) == [10]

    verifier, draft, orchestrator = (scrape(s.metrics_port) for s in stack.servers)
    labels = {"draft": "ngram", "policy": "exact"}
    stats = [r.stats for r in responses]
    assert value(orchestrator, "specdec:requests_total", **labels) == 3
    assert value(orchestrator, "specdec:requests_total", draft="none", policy="exact") == 1
    assert value(orchestrator, "specdec:request_errors_total", code="OUT_OF_RANGE") == 1
    assert value(orchestrator, "specdec:spec_decode_num_drafts_total", **labels) == sum(
        s.steps - s.k_histogram[0] for s in stats
    )
    assert value(orchestrator, "specdec:spec_decode_num_draft_tokens_total", **labels) == sum(
        s.draft_tokens for s in stats
    )
    accepted = sum(s.accepted_tokens for s in stats)
    assert accepted > 0, "the repetitive prompt gets n-gram drafts accepted"
    assert value(orchestrator, "specdec:spec_decode_num_accepted_tokens_total", **labels) == accepted
    for position in range(4):
        expected = sum(s.accepted_per_position[position] for s in stats if len(s.accepted_per_position) > position)
        assert value(
            orchestrator, "specdec:spec_decode_num_accepted_tokens_per_pos_total", **labels, position=str(position)
        ) == expected  # fmt: skip
    assert value(orchestrator, "specdec:generation_tokens_total", **labels) == sum(s.generated_tokens for s in stats)
    assert value(orchestrator, "specdec:time_to_first_token_seconds_count", **labels) == 3
    assert value(orchestrator, "specdec:inter_token_latency_seconds_count", **labels) > 0
    assert value(orchestrator, "specdec:live_requests") == 0

    all_steps = sum(s.steps for s in stats) + target_only.stats.steps
    assert value(verifier, "specdec:forward_latency_seconds_count", service="verifier", kind="verify") == all_steps
    assert value(verifier, "specdec:forward_latency_seconds_count", service="verifier", kind="prefill") == 4
    assert value(draft, "specdec:forward_latency_seconds_count", service="draft", kind="ngram") == sum(
        s.draft_calls for s in stats
    )
    for samples, service in ((verifier, "verifier"), (draft, "draft")):
        assert value(samples, "specdec:live_sessions", service=service) == 0
        assert value(samples, "specdec:kv_cache_bytes", service=service) == 0


async def test_gauges_show_a_session_in_progress(stack: EmbeddedStack, tiny_target: Path) -> None:
    tiny = str(tiny_target)
    ids = load(tiny).tokenizer.encode("The quick brown fox")
    verifier_port, draft_port = stack.servers[0].metrics_port, stack.servers[1].metrics_port
    async with SpecdecClient(stack.address) as client:
        stream = client.generate_stream(prompt_token_ids=ids, max_new_tokens=200, draft=f"model:{tiny}", k=2)
        first = await anext(stream)
        assert first.HasField("delta")
        verifier, draft = await asyncio.gather(*(asyncio.to_thread(scrape, p) for p in (verifier_port, draft_port)))
        await stream.aclose()
    assert value(verifier, "specdec:live_sessions", service="verifier") == 1
    assert value(verifier, "specdec:kv_cache_bytes", service="verifier") > 0
    assert value(draft, "specdec:live_sessions", service="draft") == 1
    assert value(draft, "specdec:kv_cache_bytes", service="draft") > 0


async def test_get_usage_reports_each_service_and_resets_its_peaks(stack: EmbeddedStack, tiny_target: Path) -> None:
    """GetUsage: the orchestrator, the verifier and the draft service answer; the verifier's KV-cache peak covers
    a finished request (whose cache is freed by now) and restarts at 0 after a reset."""
    async with SpecdecClient(stack.address) as client:
        await client.usage(reset_peaks=True)
        await client.generate("one two three four one two three four", max_new_tokens=8, draft="ngram", k=3)
        usage = {u.service: u for u in (await client.usage(reset_peaks=True)).services}
        after_reset = {u.service: u for u in (await client.usage()).services}
    assert list(usage) == ["orchestrator", "verifier", "draft"]
    verifier = usage["verifier"]
    assert verifier.kv_cache_bytes == 0 and verifier.live_sessions == 0  # the request's session is closed
    assert verifier.peak_kv_cache_bytes > 0
    assert after_reset["verifier"].peak_kv_cache_bytes == 0
    assert usage["draft"].peak_kv_cache_bytes == 0  # prompt lookup holds no KV cache
    for u in usage.values():  # embedded: one process, its memory seen by every service
        assert u.pid == usage["orchestrator"].pid and u.peak_rss_bytes >= u.rss_bytes > 0
