"""A real ``redis-server`` for the cluster tests, on a free loopback port.

``RedisServer`` starts the Debian ``redis-server`` binary with its own data
directory (``--dir``), no snapshots, AOF on or off as the test asks, waits until
it answers PING, and can be stopped and started again on the same port and data
(the Redis-restart tests). Nothing here speaks RESP by hand: PING goes through
``redis-cli`` when it is there, else through coredis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import coredis
import trio

__all__ = ["MISSING", "RedisServer", "redis_server_binary"]

MISSING = (
    "redis-server is not installed: apt-get install redis-server"
    " (Debian package; .ci/run installs it)"
)
START_TIMEOUT = 10.0


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; ``url`` names its database 0."""

    def __init__(
        self,
        binary: str,
        data_dir: Path,
        *,
        appendonly: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.extra = tuple(extra)
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.port = _free_port()
        self.process: trio.Process | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert self.process is None, "already running"
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra,
        ]  # fmt: skip
        self.process = await trio.lowlevel.open_process(args, stdin=subprocess.DEVNULL)
        with trio.fail_after(START_TIMEOUT):
            while not await self._answers():
                if self.process.poll() is not None:
                    log = (self.data_dir / "redis.log").read_text(errors="replace")
                    raise RuntimeError(f"redis-server exited at start:\n{log[-2000:]}")
                await trio.sleep(0.02)  # the server's start-up has no event to wait on

    async def info(self, section: str) -> dict[str, object]:
        """``INFO section`` as coredis parses it (``replication``: role, connected_slaves...)."""
        async with coredis.Redis.from_url(self.url, decode_responses=True) as client:
            return dict(await client.info(section))

    async def _answers(self) -> bool:
        try:
            async with coredis.Redis.from_url(self.url, connect_timeout=0.5) as client:
                try:
                    return bool(await client.ping())
                except (coredis.exceptions.RedisError, OSError):
                    return False
        except Exception:  # the client's task group wraps what it raises
            return False

    async def stop(self) -> None:
        """Stop it (SIGTERM: with AOF on, what it acknowledged is on disk) and wait."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        with trio.CancelScope(shield=True):
            await process.wait()

    async def kill(self) -> None:
        """Stop it at once (SIGKILL): what is not fsynced is lost."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
