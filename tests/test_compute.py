"""specdec.compute: on a CPU machine every service's model work runs on the process's one compute thread (so that
libgomp never throttles its workers: see the module), and one service's shutdown leaves the others' work alone."""

from __future__ import annotations

import asyncio
import threading

import pytest

from specdec import compute
from specdec.service import ModelWorker

pytestmark = pytest.mark.skipif(not compute.share_cpu_thread(), reason="CUDA machines keep a thread per service")


async def test_services_share_one_compute_thread() -> None:
    verifier, draft = ModelWorker("verifier-model"), ModelWorker("draft-model")
    names = {await worker.run(lambda: threading.current_thread().name) for worker in (verifier, draft)}
    assert names == {await compute.run(lambda: threading.current_thread().name)}
    assert next(iter(names)).startswith(compute.THREAD_PREFIX)


async def test_one_services_shutdown_cancels_only_its_own_queued_jobs() -> None:
    mine, other = ModelWorker("mine"), ModelWorker("other")
    gate = threading.Event()
    blocker = asyncio.ensure_future(other.run(gate.wait, 5.0))  # occupies the shared thread
    await asyncio.sleep(0.05)
    queued_mine = asyncio.ensure_future(mine.run(lambda: "mine"))
    queued_other = asyncio.ensure_future(other.run(lambda: "other"))
    await asyncio.sleep(0.05)
    mine.shutdown()
    gate.set()
    assert await blocker is True
    assert await queued_other == "other"  # the shared thread keeps serving the other service
    with pytest.raises(asyncio.CancelledError):
        await queued_mine
