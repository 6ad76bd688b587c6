"""Control of the gateway under test for the ``faults`` profile: start it from a
command line, kill it with a signal, start it again.

The command is the one an operator types (``--server-cmd``, like the bench's
peer commands): it runs in a session of its own, so the signal reaches a
wrapper script's children too, and it is ready once its port accepts TCP
connections. Its output goes to ``log`` (or nowhere). The gateway must keep
its state (tokens, event log) across a restart of the same command: that is
what the fault checks test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

import trio

#: Seconds a start may take before the target counts as failed.
READY_TIMEOUT: Final = 30.0
#: Seconds a SIGTERM may take before SIGKILL.
STOP_GRACE: Final = 10.0


class ServerFailed(Exception):
    """The target's command did not start, or exited on its own."""


class ServerControl:
    """The target's process: ``start``, ``kill`` (a signal, SIGKILL by default)
    and ``stop``. ``host``/``port`` are where it listens (the run's URL)."""

    def __init__(
        self,
        command: Sequence[str],
        host: str,
        port: int,
        *,
        kill_signal: signal.Signals = signal.SIGKILL,
        log: Path | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        if not command:
            raise ValueError("the server command is empty")
        self.command = list(command)
        self.host = host
        self.port = port
        self.kill_signal = kill_signal
        self.log = log
        self.ready_timeout = ready_timeout
        self.starts = 0
        self._process: trio.Process | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Run the command and wait until its port accepts a connection."""
        if self.alive:
            return
        out = _open_log(self.log)
        try:
            self._process = await trio.lowlevel.open_process(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if self.log is not None else subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise ServerFailed(f"cannot run {self.command[0]!r}: {exc}") from None
        finally:
            if not isinstance(out, int):
                out.close()
        self.starts += 1
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        with trio.move_on_after(self.ready_timeout):
            while True:
                process = self._process
                if process is None or process.poll() is not None:
                    code = None if process is None else process.returncode
                    raise ServerFailed(f"the server command exited with {code} before listening")
                try:
                    stream = await trio.open_tcp_stream(self.host, self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return
        raise ServerFailed(
            f"the server did not listen on {self.host}:{self.port} within {self.ready_timeout:g} s"
        )

    async def kill(self, sig: signal.Signals | None = None) -> None:
        """Send ``sig`` (default: the kill signal) to the target's session and wait
        for it to exit."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig or self.kill_signal)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(STOP_GRACE):
                await process.wait()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()

    async def stop(self) -> None:
        """End the target in an orderly way (SIGTERM, then SIGKILL)."""
        await self.kill(signal.SIGTERM)


def _open_log(path: Path | None) -> IO[bytes] | int:
    """Where the target's output goes; the caller closes a file once the child has it."""
    if path is None:
        return subprocess.DEVNULL
    return open(path, "ab")
