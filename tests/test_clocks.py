"""tests/clocks.py: the thread-aware fake clock waits for worker threads, and only
for them."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import trio
import trio.testing

from tests.clocks import thread_aware_clock


def _blocking(release: threading.Event) -> Callable[[], bool]:
    return lambda: release.wait(10)


def test_no_jump_while_a_worker_thread_runs() -> None:
    """A thread that outlasts the threshold many times over (a slow SQLite write)
    must not let fake time reach the caller's deadline; the plain clock does."""

    async def main() -> float:
        release = threading.Event()
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, _blocking(release))
            # Let about twenty thresholds of real time pass with the thread busy.
            await trio.to_thread.run_sync(threading.Event().wait, 0.2)
            release.set()
        with trio.fail_after(1):
            await trio.to_thread.run_sync(threading.Event().wait, 0.2)
            await trio.lowlevel.checkpoint()  # where a jump past the deadline shows
        return trio.current_time() - start

    assert trio.run(main, clock=thread_aware_clock(0.01)) == 0.0
    with pytest.raises(trio.TooSlowError):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.01))


def test_jumps_when_nothing_runs() -> None:
    async def main() -> float:
        start = trio.current_time()
        await trio.sleep(3600)
        return trio.current_time() - start

    assert trio.run(main, clock=thread_aware_clock(0.01)) == 3600


def test_a_zero_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        thread_aware_clock(0)
