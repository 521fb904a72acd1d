"""Fault injection for tests: a TCP proxy that delays or drops a peer's traffic, a service run as a real
process that can be killed (SIGKILL, no goodbye) and started again on the same port, and a poll for recovery."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from specdec.netdelay import DelayProxy

__all__ = ["ENV", "SPECDEC", "DelayProxy", "ServiceProcess", "eventually", "free_port"]

SPECDEC = [sys.executable, "-m", "specdec.orchestrator.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], seconds: float = 60.0) -> None:
    """Poll `check` until it holds (generous bound: catches hangs and leaks, never times a fast path)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if await result if asyncio.iscoroutine(result) else result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still not true after {seconds:g} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """`specdec serve SERVICE ARGS --host HOST --port PORT` as a child process; `prefix` runs it elsewhere (e.g. in
    a network namespace: `ip netns exec NS`)."""

    def __init__(
        self, *args: str, port: int | None = None, host: str = "127.0.0.1", prefix: Sequence[str] = ()
    ) -> None:
        self.args = args
        self.host = host
        self.port = port or free_port()
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ServiceProcess:
        command = [*self.prefix, *SPECDEC, "serve", *self.args, "--host", self.host, "--port", str(self.port)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=ENV)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the service listens (it prints its address)
        assert re.search(r"listening on \S+", line), f"unexpected first line: {line!r}"
        return self

    def kill(self) -> None:
        """SIGKILL: the process dies mid-whatever, as a crash or an OOM kill would leave it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            self.kill()
