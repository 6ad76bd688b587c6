"""A process's output stream, read line by line as it comes; tests wait on lines, never sleep."""

from __future__ import annotations

import re
from collections.abc import Callable

import trio


class LineReader:
    """Collects the lines of ``stream`` while ``run`` runs (start it in a nursery)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self.eof = False
        self._changed = trio.Event()

    async def run(self) -> None:
        pending = b""
        async for chunk in self.stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(line.decode() for line in complete)
            self._notify()
        if pending:
            self.lines.append(pending.decode())
        self.eof = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, done: Callable[[list[str]], bool]) -> None:
        """Wait until ``done(lines)``; fail if the stream ends first."""
        while not done(self.lines):
            if self.eof:
                tail = "\n".join(self.lines[-20:])
                raise AssertionError(f"the process's output ended first:\n{tail}")
            await self._changed.wait()

    async def wait_for_match(self, pattern: re.Pattern[str]) -> tuple[int, re.Match[str]]:
        """The index and match of the first line matching ``pattern``."""
        found: list[tuple[int, re.Match[str]]] = []
        seen = 0

        def search(lines: list[str]) -> bool:
            nonlocal seen
            for index in range(seen, len(lines)):
                match = pattern.search(lines[index])
                if match is not None:
                    found.append((index, match))
                    return True
            seen = len(lines)
            return False

        await self.wait_for(search)
        return found[0]

    async def wait_eof(self) -> None:
        await self.wait_for(lambda _: self.eof)
