"""Protocol-level limits every service enforces, so that one bad or hostile message cannot make a service
allocate without bound. The orchestrator's own, configurable limits (K, tokens, samples) sit below these."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from specdec.errors import ResourceExhausted

MAX_BLOCK_TOKENS = 64  # draft tokens in one propose / verify block
MAX_NGRAM_SEQUENCE = 1 << 20  # tokens of one prompt-lookup session (a model draft is bounded by its context)
DEFAULT_MAX_SESSIONS = 256  # open sessions per verifier / draft service (--max-sessions)
DEFAULT_SESSION_TTL_S = 300.0  # a session stream idle this long is expired (--session-ttl)
DEFAULT_MAX_CONCURRENT_REQUESTS = 64  # requests an orchestrator generates at once (--max-concurrent-requests)
DEFAULT_MAX_QUEUED_REQUESTS = 256  # requests waiting for a slot; beyond it RESOURCE_EXHAUSTED (--max-queued-requests)
DEFAULT_BATCH_WINDOW_S = 0.002  # a verify batch waits this long for other live sessions' blocks (--batch-window-ms)
DEFAULT_MAX_BATCH = 16  # blocks of different sessions verified in one forward pass at most (--max-batch)
DEFAULT_DRAFT_TIMEOUT_S = 10.0  # a propose slower than this fails the draft over to target-only (--draft-timeout)


@dataclass(frozen=True)
class ServiceLimits:
    """What a verifier or draft service holds at most (`--max-sessions`, `--session-ttl`), and how a verifier
    batches blocks of concurrent sessions (`--batch-window-ms`, `--max-batch`)."""

    max_sessions: int = DEFAULT_MAX_SESSIONS
    session_ttl_s: float | None = DEFAULT_SESSION_TTL_S  # None: idle sessions never expire
    batch_window_s: float = DEFAULT_BATCH_WINDOW_S
    max_batch: int = DEFAULT_MAX_BATCH  # 1: no batching


class SessionCapacity:
    """A service's cap on open sessions. Opens are reserved on the event loop before they queue for the model
    worker, so a service at its cap refuses at once instead of after waiting behind forward passes."""

    def __init__(self, service: str, max_sessions: int, live_sessions: Callable[[], int]) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.service = service
        self.max_sessions = max_sessions
        self._live_sessions = live_sessions
        self.opening = 0

    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        held = self._live_sessions() + self.opening
        if held >= self.max_sessions:
            raise ResourceExhausted(
                f"the {self.service} holds {held} sessions, its limit (--max-sessions {self.max_sessions}); retry later"
            )
        self.opening += 1
        try:
            yield
        finally:
            self.opening -= 1
