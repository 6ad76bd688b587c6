"""A fake clock for tests whose code under test hands work to worker threads.

trio's ``MockClock`` autojump treats "every task is waiting" as idleness, and a task
waiting for ``trio.to_thread.run_sync`` (every SQLite call of the gateway, the log
writer and the client's outbox) is waiting. On a busy machine such a thread can take
longer than the autojump threshold, and the clock then jumps to the next deadline in
the middle of the exchange: a heartbeat, an auth deadline, the test's own
``fail_after``. ``thread_aware_clock`` makes a ``MockClock`` that does not jump while
a worker thread holds a token of trio's default thread limiter (which every
``to_thread.run_sync`` without a limiter of its own takes), so fake time moves only
when nothing at all is running. tests/test_clocks.py checks that it still works.

``wait_quiet`` is the matching wait for a test that moves a clock by hand: it
returns once no task can run and no worker thread works, so everything the current
fake time allows has happened.
"""

from __future__ import annotations

import trio
import trio.testing

__all__ = ["thread_aware_clock", "wait_quiet"]


def thread_aware_clock(autojump_threshold: float) -> trio.testing.MockClock:
    """A ``MockClock`` that autojumps after ``autojump_threshold`` real seconds of
    idleness, never while a worker thread runs.

    While a thread runs, the run loop wakes every ``autojump_threshold`` real seconds
    and asks again, so the threshold must be above zero (zero would spin and starve
    the thread of the GIL).
    """
    if not autojump_threshold > 0:
        raise ValueError("a thread-aware clock needs a positive autojump threshold")
    clock = trio.testing.MockClock(autojump_threshold=autojump_threshold)
    # MockClock cannot be subclassed (trio marks it final), and the run loop calls
    # clock._autojump() once it has been idle for the threshold: wrap that call.
    jump = clock._autojump

    def autojump_unless_a_thread_works() -> None:
        if trio.to_thread.current_default_thread_limiter().borrowed_tokens:
            return  # a worker thread is busy: that is not idleness
        jump()

    clock._autojump = autojump_unless_a_thread_works  # type: ignore[method-assign]
    return clock


async def wait_quiet() -> None:
    """Return once every other task is blocked and no worker thread works: what the
    code under test does at this fake time is done. (``wait_all_tasks_blocked``
    alone returns while a task waits for a thread.)"""
    limiter = trio.to_thread.current_default_thread_limiter()
    while True:
        await trio.testing.wait_all_tasks_blocked()
        if not limiter.borrowed_tokens:
            return
        # A thread works: look again. This task stays runnable meanwhile, so no
        # autojump can take it for idleness (the thread gets the GIL at its switch
        # interval, and SQLite releases it anyway).
