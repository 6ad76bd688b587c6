"""A seed client running as a subprocess: stdout read line by line while it runs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import trio


def lines(data: bytes) -> list[str]:
    return data.decode("utf-8").splitlines()


class LiveProcess:
    """A running process: stdout read line by line, stderr collected on the side."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.process = process
        self._stdout = process.stdout
        self._buffer = b""
        self.stderr = b""
        self._stderr_done = trio.Event()

    async def collect_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some():
            self.stderr += chunk
        self._stderr_done.set()

    async def line(self) -> str:
        """The next line of stdout; fails if stdout ends first."""
        while b"\n" not in self._buffer:
            chunk = await self._stdout.receive_some()
            if not chunk:
                raise AssertionError(
                    f"stdout ended; stderr: {self.stderr.decode(errors='replace')}"
                )
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8")

    async def finish(self) -> tuple[int, list[str]]:
        """Wait for exit; the return code and the stdout lines not yet read."""
        while chunk := await self._stdout.receive_some():
            self._buffer += chunk
        await self._stderr_done.wait()
        code = await self.process.wait()
        return code, lines(self._buffer)


@asynccontextmanager
async def live_process(argv: Sequence[str], **env: str) -> AsyncIterator[LiveProcess]:
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(
                trio.run_process,
                list(argv),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
                env={**os.environ, **env},
            )
        )
        live = LiveProcess(process)
        nursery.start_soon(live.collect_stderr)
        yield live
