"""``serve --workers N``: N gateway processes on one port, so one machine's cores all work.

Each worker is an ordinary ``serve`` with ``reuse_port``: it binds the same address
with ``SO_REUSEPORT`` and the kernel spreads new connections over them. What the
workers must agree on (the event log and its seq, cursors, dedup) is shared through
cluster mode (docs/scaling.md); what is a node's own stays in each worker.

The supervisor here only starts, watches and stops them:

- SIGINT or SIGTERM: every worker gets SIGTERM and shuts down gracefully
  (``shutdown_timeout``); one still running ``STOP_GRACE`` seconds later is killed.
  The supervisor exits 0 if every worker did.
- The supervisor killed with -9: each worker notices within a second that its
  parent is gone and shuts down gracefully (``--supervisor-pid``).
- A worker that exits by itself (a crash, ``kill -9``) is started again after
  ``RESTART_DELAY``; its clients reconnect to the others meanwhile. A worker that
  dies within ``STARTUP_SECONDS`` of its start ``MAX_QUICK_DEATHS`` times in a row
  cannot start (the port is taken, the database unreadable): everyone is stopped
  and the supervisor exits 1.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence

import trio

__all__ = [
    "MAX_QUICK_DEATHS",
    "RESTART_DELAY",
    "STARTUP_SECONDS",
    "STOP_GRACE",
    "supervise",
    "worker_command",
]

RESTART_DELAY = 1.0
STARTUP_SECONDS = 5.0
MAX_QUICK_DEATHS = 5
#: Seconds past ``shutdown_timeout`` before a worker still running is killed.
STOP_GRACE = 5.0


class _Worker:
    def __init__(self, number: int, command: Sequence[str]) -> None:
        self.number = number
        self.command = list(command)
        self.process: trio.Process | None = None
        self.quick_deaths = 0


async def supervise(
    command: Sequence[str],
    workers: int,
    shutdown_timeout: float,
    say: Callable[[str], None],
) -> int:
    """Run ``workers`` copies of ``command`` until SIGINT or SIGTERM; the exit code."""
    pool = [_Worker(k + 1, command) for k in range(workers)]
    stop = trio.Event()
    failure: list[str] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            for worker in pool:
                nursery.start_soon(_keep_running, worker, stop, failure, say)
            nursery.start_soon(_stop_on_signal, signals, stop)
            say(f"catsock: {workers} workers started (SIGTERM stops them all)")
            await stop.wait()
            say("catsock: stopping the workers")
            await _stop_all(pool, shutdown_timeout + STOP_GRACE)
            nursery.cancel_scope.cancel()
    if failure:
        say(f"catsock: {failure[0]}")
        return 1
    codes = [w.process.returncode for w in pool if w.process is not None]
    return 0 if all(code == 0 for code in codes) else 1


async def _stop_on_signal(signals: AsyncIterator[int], stop: trio.Event) -> None:
    async for _ in signals:
        stop.set()
        return


async def _keep_running(
    worker: _Worker, stop: trio.Event, failure: list[str], say: Callable[[str], None]
) -> None:
    while not stop.is_set():
        started = trio.current_time()
        # A session of its own: a Ctrl-C in the terminal reaches the supervisor only,
        # which stops the workers once each (a second signal would cut a shutdown).
        worker.process = await trio.lowlevel.open_process(worker.command, start_new_session=True)
        code = await worker.process.wait()
        if stop.is_set():
            return
        quick = trio.current_time() - started < STARTUP_SECONDS
        worker.quick_deaths = worker.quick_deaths + 1 if quick else 0
        if worker.quick_deaths >= MAX_QUICK_DEATHS:
            failure.append(
                f"worker {worker.number} exited {MAX_QUICK_DEATHS} times within"
                f" {STARTUP_SECONDS:g} s of starting (last exit code {code}); giving up"
            )
            stop.set()
            return
        say(
            f"catsock: worker {worker.number} (pid {worker.process.pid}) exited with code"
            f" {code}; starting it again in {RESTART_DELAY:g} s"
        )
        await trio.sleep(RESTART_DELAY)


async def _stop_all(pool: list[_Worker], limit: float) -> None:
    running = [w.process for w in pool if w.process is not None and w.process.returncode is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    with trio.move_on_after(limit):
        for process in running:
            await process.wait()
    for process in running:
        if process.returncode is None:
            process.kill()
            await process.wait()


def worker_command(serve_args: Sequence[str]) -> list[str]:
    """The command line of one worker: this program's ``serve`` with ``serve_args``,
    one process, the port shared."""
    frozen = getattr(sys, "frozen", False)  # the single-file binary is the program itself
    program = [sys.executable] if frozen else [sys.executable, "-m", "catsock"]
    supervisor = ["--supervisor-pid", str(os.getpid())]
    return [*program, "serve", *serve_args, "--workers", "1", "--reuse-port", *supervisor]
