"""Draft and verifier on separate "hosts": real processes in their own network namespaces, each with its own
address, reached over veth links as two machines would be, with and without added delay on the draft's link.
Output must stay the target's own greedy decode and the draft must really contribute.

Needs root and iproute2: in CI (CI set) their absence fails these tests; on a developer laptop it skips them.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from specdec.orchestrator.client import SpecdecClient
from specdec.orchestrator.server import serve as serve_orchestrator
from tests.faults import DelayProxy, ServiceProcess
from tests.helpers import prerequisite
from tests.netns import Host

PROMPT = "def add(a, b):"
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Host, Host]]:
    why_not = Host.available()
    prerequisite(not why_not, why_not)
    with Host("verifier", 1) as verifier_host, Host("draft", 2) as draft_host:
        yield verifier_host, draft_host
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    assert verifier_host.namespace not in left and draft_host.namespace not in left, left


@pytest.fixture(scope="module")
def services(hosts: tuple[Host, Host], tiny_target: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    verifier_host, draft_host = hosts
    verifier = ServiceProcess(
        "verifier", "--target", str(tiny_target), "--device", "cpu",
        host=verifier_host.address, prefix=verifier_host.exec_prefix,
    )  # fmt: skip
    draft = ServiceProcess("draft", host=draft_host.address, prefix=draft_host.exec_prefix)
    with verifier, draft:
        yield verifier, draft


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_each_service_lives_on_its_own_network_stack(services: tuple[ServiceProcess, ServiceProcess]) -> None:
    verifier, draft = services
    assert reachable(verifier.host, verifier.port) and reachable(draft.host, draft.port)
    # Bound inside their namespaces: this host's loopback does not reach them.
    assert not reachable("127.0.0.1", verifier.port) and not reachable("127.0.0.1", draft.port)


@pytest.mark.parametrize("delay_ms", [0, 10])
async def test_greedy_identity_across_hosts(
    services: tuple[ServiceProcess, ServiceProcess], tiny_target: Path, delay_ms: int
) -> None:
    verifier, draft = services
    self_draft = f"model:{tiny_target}"  # the target drafting for itself: every proposal is accepted
    # The delay holds every chunk in both directions: ~2 x delay_ms more round-trip time on the draft's link.
    async with DelayProxy(draft.port, delay_ms / 1000, target_host=draft.host) as draft_link:
        orchestrator = await serve_orchestrator(verifier.address, draft_link.address, 0, "127.0.0.1")
        try:
            async with SpecdecClient(f"127.0.0.1:{orchestrator.port}") as client:
                target_only = await client.generate(PROMPT, max_new_tokens=NEW_TOKENS, draft="none")
                request = {"max_new_tokens": NEW_TOKENS, "draft": self_draft, "k": 4, "k_controller": "fixed"}
                waiting = await client.generate(PROMPT, **request, draft_ahead=False)
                ahead = await client.generate(PROMPT, **request, draft_ahead=True)
        finally:
            await orchestrator.stop(1.0)
    for speculative in (waiting, ahead):
        assert list(speculative.completions[0].token_ids) == list(target_only.completions[0].token_ids)
        stats = speculative.stats
        assert stats.draft_failure == "" and stats.accepted_tokens == stats.draft_tokens > 0, stats
    if delay_ms:  # without draft-ahead every proposal is waited for across the slow link
        assert waiting.stats.network_ms >= waiting.stats.draft_calls * 2 * delay_ms * 0.9, waiting.stats
    assert ahead.stats.draft_ahead_hits >= ahead.stats.steps - 2, ahead.stats  # drafted while verifying
