"""`--profile DIR`: a torch profiler Chrome trace of the model forwards (verifier and draft), for chrome://tracing
or https://ui.perfetto.dev. Off by default; meant for short runs (the profiler keeps every event in memory).

The forwards run on the services' model-worker threads, not on the thread that starts the profiler, so it
records all threads where torch supports that. While it runs, every model-worker job is a labelled range
(`verifier-model:verify`, `draft-model:_next_batch`, ...), which makes the trace readable.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

log = logging.getLogger(__name__)

_active = False  # read by ModelWorker before each job: label it only while profiling


def active() -> bool:
    return _active


class ModelProfiler:
    """One torch profiler for the process (torch allows one at a time, so in embedded mode the verifier and
    the draft service share it): `start()`, run the workload, `stop()` writes the trace and returns its path."""

    def __init__(self, out_dir: str | Path, label: str) -> None:
        self.out_dir = Path(out_dir)
        self.label = label
        self._profiler: profile | None = None

    def start(self) -> None:
        global _active
        self.out_dir.mkdir(parents=True, exist_ok=True)
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self._profiler = profile(activities=activities, **_all_threads())
        self._profiler.start()
        _active = True

    def stop(self) -> Path | None:
        """Stop and export; None if it was not started."""
        global _active
        if self._profiler is None:
            return None
        _active = False
        profiler, self._profiler = self._profiler, None
        profiler.stop()
        path = self.out_dir / f"specdec-{self.label}-{os.getpid()}-{time.strftime('%Y%m%d-%H%M%S')}.pt.trace.json"
        profiler.export_chrome_trace(str(path))
        log.info("torch profiler trace written to %s", path)
        return path


def _all_threads() -> dict[str, Any]:
    """Profile every thread (torch >= 2.7's experimental option); older torch records the starting thread only."""
    try:
        from torch.profiler import _ExperimentalConfig

        return {"experimental_config": _ExperimentalConfig(profile_all_threads=True)}
    except (ImportError, TypeError):
        log.warning("this torch cannot profile other threads: the model forwards may be missing from the trace")
        return {}


@contextmanager
def profiling(out_dir: str | Path | None, label: str) -> Iterator[ModelProfiler | None]:
    """Profile the block when `out_dir` is given (the CLI's --profile); else do nothing."""
    if out_dir is None:
        yield None
        return
    profiler = ModelProfiler(out_dir, label)
    profiler.start()
    try:
        yield profiler
    finally:
        path = profiler.stop()
        if path is not None:
            print(f"specdec profile written to {path}", file=sys.stderr, flush=True)
