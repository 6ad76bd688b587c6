"""``python -m catsock serve --workers N`` (catsock/workers.py): N real gateway processes
on one port, a worker killed with -9 started again, SIGTERM stopping them all."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import trio

from .test_http import http
from .test_serve import TIMEOUT, cli_env, run_cli, serving

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


async def test_two_workers_share_the_port_survive_a_kill_and_stop_together(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = cli_env(tmp_path / "catsock.db")
    with trio.fail_after(TIMEOUT * 2):
        async with serving(tmp_path, env, "--workers", "2", "--port", str(port)) as served:
            await served.err.wait_for(
                lambda lines: sum(bool(LISTENING.match(x)) for x in lines) == 2
            )
            pids = worker_pids(served.process.pid)
            assert len(pids) == 2
            for _ in range(20):  # fresh connections, spread by the kernel: all answered
                assert (await http(port, "GET", "/health")).status == 200
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            _, restarted = await served.wait_for_line(RESTARTED)
            assert int(restarted[2]) == victim
            await served.err.wait_for(
                lambda lines: sum(bool(LISTENING.match(x)) for x in lines) == 3
            )
            assert (await http(port, "GET", "/health")).status == 200
            survivors = worker_pids(served.process.pid)
            assert len(survivors) == 2
            assert victim not in survivors
            assert await served.stop(signal.SIGTERM) == 0
    assert served.stderr.count("catsock: shutting down") >= 2
    assert not [pid for pid in survivors if alive(pid)]


async def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "catsock.db")
    with trio.fail_after(TIMEOUT):
        result = await run_cli("serve", "--workers", "2", "--port", "0", cwd=tmp_path, env=env)
    assert result.code == 1
    assert "--workers needs a fixed port" in result.err
    assert "Traceback" not in result.err


async def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path: Path) -> None:
    """A database the workers cannot open: each exits at once, five times in a row,
    and the supervisor gives up with a message and exit code 1 instead of restarting
    them forever."""
    env = cli_env(tmp_path / "missing-dir" / "catsock.db")
    with trio.fail_after(TIMEOUT * 3):
        result = await run_cli(
            "serve", "--workers", "2", "--port", str(free_port()), cwd=tmp_path, env=env
        )
    assert result.code == 1
    assert "times within" in result.err
    assert "giving up" in result.err
    assert "Traceback" not in result.err


async def test_workers_do_not_outlive_a_supervisor_killed_with_9(tmp_path: Path) -> None:
    """Nothing would stop them any more: each sees its supervisor gone and shuts down
    gracefully (their stderr, shared with it, then ends)."""
    port = free_port()
    env = cli_env(tmp_path / "catsock.db")
    with trio.fail_after(TIMEOUT * 2):
        async with serving(tmp_path, env, "--workers", "2", "--port", str(port)) as served:
            await served.err.wait_for(listening(2))
            pids = worker_pids(served.process.pid)
            served.process.kill()
            await served.err.wait_eof()  # every worker has closed its stderr: exited
    gone = [line for line in served.lines if line == "catsock: the supervisor is gone"]
    assert len(gone) == 2
    assert served.stderr.count("catsock: shutting down") == 2
    assert not [pid for pid in pids if alive(pid)]
