"""``python -m catsock serve --workers N`` (catsock/workers.py): what it refuses, and a
worker that cannot start. Workers serving in cluster mode: tests/cluster/test_workers.py.
The helpers here are shared with it."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import trio

from .test_serve import TIMEOUT, cli_env, run_cli

LISTENING = re.compile(r"^catsock: listening on ws://127\.0\.0\.1:(\d+)/ws$")
RESTARTED = re.compile(r"^catsock: worker (\d) \(pid (\d+)\) exited with code -9; starting it")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's children, from /proc (started from any of its threads)."""
    tasks = Path(f"/proc/{supervisor}/task").iterdir()
    return {int(pid) for task in tasks for pid in (task / "children").read_text().split()}


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie its new parent has yet to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening(count: int) -> Callable[[list[str]], bool]:
    return lambda lines: sum(bool(LISTENING.match(line)) for line in lines) == count


async def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "catsock.db", CATSOCK_CLUSTER__REDIS="redis://127.0.0.1:1/0")
    with trio.fail_after(TIMEOUT):
        result = await run_cli("serve", "--workers", "2", "--port", "0", cwd=tmp_path, env=env)
    assert result.code == 1
    assert "--workers needs a fixed port" in result.err
    assert "Traceback" not in result.err


async def test_workers_need_cluster_mode(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "catsock.db")
    with trio.fail_after(TIMEOUT):
        result = await run_cli("serve", "--workers", "2", "--port", "8765", cwd=tmp_path, env=env)
    assert result.code == 1
    assert "--workers needs cluster mode" in result.err
    assert "Traceback" not in result.err


async def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    """A database the workers cannot open: each exits at once, five times in a row,
    and the supervisor gives up with a message and exit code 1 instead of restarting
    them forever. (They never reach Redis: no server is needed.)"""
    env = cli_env(
        tmp_path / "missing-dir" / "catsock.db", CATSOCK_CLUSTER__REDIS="redis://127.0.0.1:1/0"
    )
    with trio.fail_after(TIMEOUT * 3):
        result = await run_cli(
            "serve", "--workers", "2", "--port", str(free_port()), cwd=tmp_path, env=env
        )
    assert result.code == 1
    assert "times within" in result.err
    assert "giving up" in result.err
    assert "Traceback" not in result.err
