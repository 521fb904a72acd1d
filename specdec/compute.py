"""The thread that runs a process's CPU model work (loading, forwards, drafts, HF peers in benchmarks).

Why one thread: torch's CPU ops parallelise with OpenMP (libgomp), and every thread that has entered a parallel
region keeps a team of worker threads alive. As soon as two such threads exist, libgomp has more threads than
cores and makes its workers sleep almost at once between regions ("throttled" spinning), so every parallel region
pays a futex wake-up. Measured on this project's 2-core machine: a parallel `torch.add` takes 19 us from the only
OpenMP thread and 80 us once a second one exists; a one-token forward of the default model 40 vs 60 ms.
So on a CPU all services of one process (the verifier and draft of `serve all`, the embedded stack, the bench's HF
peers) share this one thread, and the event loop's thread never runs model code. On CUDA the work is kernel
launches and each service keeps its own thread, so that draft and verify overlap on their streams.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

T = TypeVar("T")

THREAD_PREFIX = "specdec-cpu"
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def shared_pool() -> ThreadPoolExecutor:
    """The process's one CPU compute thread (created on first use, never shut down: threads of other services
    may still queue work on it)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_PREFIX)
        return _pool


def share_cpu_thread() -> bool:
    """Whether model work shares `shared_pool()` (no CUDA device: see the module docstring)."""
    return not torch.cuda.is_available()


async def run(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on the compute thread (on CUDA machines: a thread of the default executor)."""
    if not share_cpu_thread():
        return await asyncio.to_thread(fn, *args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(shared_pool(), functools.partial(fn, *args))
