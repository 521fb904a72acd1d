"""Memory a service holds, now and at its peak: the process's resident memory, the KV caches of its sessions and
torch's accelerator memory. Each service answers `GetUsage` from one `UsageTracker`; benchmarks reset the peaks
before a run and read them after it."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from specdec.v1 import common_pb2

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def process_memory() -> tuple[int, int]:
    """(resident bytes now, peak resident bytes) of this process. Linux reads /proc (VmRSS, VmHWM); elsewhere
    only the peak is known (getrusage), and it never resets."""
    try:
        fields = dict(line.split(":", 1) for line in _PROC_STATUS.read_text().splitlines() if ":" in line)
        return _kib(fields["VmRSS"]), _kib(fields["VmHWM"])
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return 0, peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def _kib(value: str) -> int:
    return int(value.split()[0]) * 1024


def reset_peak_rss() -> None:
    """Restart the process's peak resident memory at its current value (Linux: write 5 to clear_refs)."""
    with contextlib.suppress(OSError):  # not Linux, or not allowed: the peak stays "since start", as documented
        _CLEAR_REFS.write_text("5")


class UsageTracker:
    """One service's usage. `observe()` is called after every model forward (cheap: a sum of tensor sizes), so
    the KV-cache peak is exact at forward granularity; the process figures come from the operating system."""

    def __init__(self, service: str, kv_cache_bytes: Callable[[], int], live_sessions: Callable[[], int]) -> None:
        self.service = service
        self._kv_cache_bytes = kv_cache_bytes
        self._live_sessions = live_sessions
        self._lock = threading.Lock()  # forwards run on worker threads, GetUsage on the event loop
        self._peak_kv = 0

    def kv_cache_bytes(self) -> int:
        return self._kv_cache_bytes()

    def live_sessions(self) -> int:
        return self._live_sessions()

    def observe(self) -> None:
        now = self._kv_cache_bytes()
        with self._lock:
            self._peak_kv = max(self._peak_kv, now)

    def snapshot(self, reset_peaks: bool = False) -> common_pb2.ServiceUsage:
        """The usage now; with `reset_peaks`, the peaks restart after being read."""
        rss, peak_rss = process_memory()
        kv = self._kv_cache_bytes()
        with self._lock:
            peak_kv = max(self._peak_kv, kv)
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        usage = common_pb2.ServiceUsage(
            service=self.service,
            pid=os.getpid(),
            rss_bytes=rss,
            peak_rss_bytes=peak_rss,
            kv_cache_bytes=kv,
            peak_kv_cache_bytes=peak_kv,
            live_sessions=self._live_sessions(),
            device_peak_bytes=torch.cuda.max_memory_allocated() if cuda else 0,
        )
        if reset_peaks:
            self.reset_peaks()
        return usage

    def reset_peaks(self) -> None:
        with self._lock:
            self._peak_kv = self._kv_cache_bytes()
        reset_peak_rss()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
