"""``python -m catsock serve`` as a real process: first run, the listening line, shutdown.

Each test starts the CLI with ``sys.executable -m catsock`` in ``tmp_path`` with a
fresh database, reads the process's stderr as it comes (never sleeping to wait for
it), and talks to the gateway with real trio-websocket clients on loopback.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

from tests.lines import LineReader

from .harness import CONVERSION, Client, envelope

#: Every wait on a subprocess is bounded by this; an interpreter start takes ~1 s.
TIMEOUT = 30
LISTENING = re.compile(r"^catsock: listening on ws://127\.0\.0\.1:(\d+)/ws$")


# -- helpers (test_cli.py uses them too) --------------------------------------------------


def cli_env(database: Path, **extra: str) -> dict[str, str]:
    """The test process's environment without catsock settings, plus a database."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CATSOCK_") and key != "SOCKET_AUTH_TOKEN"
    }
    env["CATSOCK_DATABASE"] = str(database)
    env.update(extra)
    return env


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


async def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> Result:
    """Run ``python -m catsock ARGS`` to completion (bounded by the caller's fail_after)."""
    done = await trio.run_process(
        [sys.executable, "-m", "catsock", *args],
        cwd=cwd,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


async def create_token(
    cwd: Path, env: dict[str, str], client_type: str, name: str, *extra: str
) -> str:
    result = await run_cli(
        "token", "create", "--client-type", client_type, "--name", name, *extra, cwd=cwd, env=env
    )
    assert result.code == 0, result
    return result.out.strip()


class Served:
    """A running ``serve`` process whose stderr is collected line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        assert process.stderr is not None
        self.err = LineReader(process.stderr)

    @property
    def lines(self) -> list[str]:
        return self.err.lines

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def read_stderr(self) -> None:
        await self.err.run()

    async def wait_for_line(self, pattern: re.Pattern[str]) -> tuple[int, re.Match[str]]:
        """The index and match of the first stderr line matching ``pattern``."""
        return await self.err.wait_for_match(pattern)

    async def port(self) -> int:
        _, match = await self.wait_for_line(LISTENING)
        return int(match[1])

    async def wait_exit(self) -> int:
        """Wait for the process to exit and its stderr to end; the exit code."""
        code = await self.process.wait()
        await self.err.wait_eof()
        return code

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` (SIGTERM: what systemd sends) and wait for the exit."""
        self.process.send_signal(signum)
        return await self.wait_exit()


@asynccontextmanager
async def serving(cwd: Path, env: dict[str, str], *args: str) -> AsyncIterator[Served]:
    """``python -m catsock serve ARGS``; killed on the way out if still running."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "catsock", "serve", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    served = Served(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.read_stderr)
            try:
                yield served
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(5, shield=True):
                    await process.wait()
    finally:
        assert process.stderr is not None
        with trio.move_on_after(5, shield=True):
            await process.stderr.aclose()


@asynccontextmanager
async def ws_client(port: int, token: str, client_type: str) -> AsyncIterator[Client]:
    """An authenticated trio-websocket client of the gateway on ``port``."""
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
        client = Client(ws)
        await client.send({"type": "auth", "token": token, "client_type": client_type})
        client.auth_reply = await client.recv()
        assert client.auth_reply["type"] == "auth_success", client.auth_reply
        yield client
    # As in harness.RunningGateway.connect: trio-websocket 0.12 leaves the socket
    # open when the server closed first.
    await ws._stream.aclose()


def query(database: Path, sql: str) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(sql)]


# -- tests ----------------------------------------------------------------------------------


async def test_first_run_says_how_to_create_a_token(tmp_path: Path) -> None:
    db = tmp_path / "first.db"
    env = cli_env(db)
    with trio.fail_after(TIMEOUT):
        async with serving(tmp_path, env, "--port", "0") as served:
            index, listening = await served.wait_for_line(LISTENING)
            hint_index, _ = await served.wait_for_line(re.compile(r"token create"))
            assert index < hint_index <= index + 3, served.stderr
            assert await served.stop() == 0
        # Beside the WebSocket URL: the dashboard's and the HTTP API's.
        base = f"http://127.0.0.1:{listening[1]}"
        assert served.lines[index + 1] == (
            f"catsock: dashboard {base}/ , HTTP API {base}/api/publish and {base}/api/events, "
            f"health {base}/health"
        )
        hint = served.lines[hint_index].strip()
        # It names the database the gateway was started with ($CATSOCK_DATABASE here).
        assert hint.startswith(f"python -m catsock token create --db {db} "), hint
        # The hint is a command that works as printed.
        argv = hint.split()[3:]
        result = await run_cli(*argv, cwd=tmp_path, env=env)
        assert result.code == 0, result
        assert result.out.startswith("cs_")
        # With a token in the database the hint is gone.
        async with serving(tmp_path, env, "--port", "0") as served:
            await served.port()
            assert await served.stop() == 0
        assert not any("token create" in line for line in served.lines), served.stderr


async def test_first_run_hint_repeats_the_config_and_db_flags(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('port = 0\ndatabase = "from-config.db"\n', encoding="utf-8")
    env = cli_env(tmp_path / "unused.db")
    del env["CATSOCK_DATABASE"]
    db = tmp_path / "from flag.db"
    with trio.fail_after(TIMEOUT):
        async with serving(tmp_path, env, "--config", str(config), "--db", str(db)) as served:
            _, hint = await served.wait_for_line(re.compile(r"^  python -m catsock (token .*)$"))
            assert await served.stop() == 0
        argv = shlex.split(hint[1])
        assert argv[:6] == ["token", "create", "--config", str(config), "--db", str(db)]
        # Run where it was printed, it reaches the gateway's database and no other.
        result = await run_cli(*argv, cwd=tmp_path, env=env)
        assert result.code == 0, result
    assert [row["name"] for row in query(db, "SELECT name FROM credentials")] == ["cats-1"]
    assert not (tmp_path / "from-config.db").exists()


async def test_listening_line_gives_a_working_url(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "url.db")
    with trio.fail_after(TIMEOUT):
        token = await create_token(tmp_path, env, "AFAD", "afad-1")
        async with serving(tmp_path, env, "--port", "0") as served:
            port = await served.port()
            assert port != 0
            async with ws_client(port, token, "AFAD") as client:
                assert client.auth_reply is not None
                assert client.auth_reply["connection_id"].startswith("conn_")
            assert await served.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_shuts_down_gracefully(tmp_path: Path, signum: int) -> None:
    db = tmp_path / "shutdown.db"
    env = cli_env(db)
    with trio.fail_after(TIMEOUT):
        identities = [
            ("cats-1", "CATS", ()),
            ("afad-1", "AFAD", ()),
            ("dash-all", "DASHBOARD", ()),
            ("dash-500", "DASHBOARD", ("--user-id", "500")),
        ]
        tokens = {
            name: (await create_token(tmp_path, env, client_type, name, *extra), client_type)
            for name, client_type, extra in identities
        }
        async with serving(tmp_path, env, "--port", "0") as served:
            port = await served.port()
            async with contextlib.AsyncExitStack() as stack:
                clients = {
                    name: await stack.enter_async_context(ws_client(port, token, client_type))
                    for name, (token, client_type) in tokens.items()
                }
                await clients["cats-1"].send(envelope("conversion", CONVERSION, "CATS", "conv-1"))
                for name in ("afad-1", "dash-all", "dash-500"):
                    event = await clients[name].recv()
                    assert (event["type"], event["message_id"]) == ("conversion", "conv-1")

                served.process.send_signal(signum)
                for name, client in clients.items():
                    assert await client.closed_code() == 1001, name
                assert await served.wait_exit() == 0, served.stderr
    assert "Traceback" not in served.stderr
    assert any("shutting down" in line for line in served.lines), served.stderr

    connections = query(db, "SELECT * FROM connections")
    assert sorted(row["identity"] for row in connections) == sorted(tokens)
    for row in connections:
        assert row["disconnected_at"] is not None, row
        assert row["close_code"] == 1001, row
    # One write per event: the event log's row, and no copy in the message table.
    assert query(db, "SELECT * FROM messages WHERE type = 'conversion'") == []
    (event,) = query(db, "SELECT * FROM events WHERE type = 'conversion'")
    assert event["message_id"] == "conv-1"
    assert event["connection_id"] in {row["id"] for row in connections}


async def test_revoking_a_token_cuts_its_live_connection(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "revoke.db")
    with trio.fail_after(TIMEOUT):
        token = await create_token(tmp_path, env, "AFAD", "afad-1")
        async with serving(tmp_path, env, "--port", "0") as served:
            port = await served.port()
            async with ws_client(port, token, "AFAD") as client:
                result = await run_cli("token", "revoke", "afad-1", cwd=tmp_path, env=env)
                assert result.code == 0, result
                # The gateway polls the credentials every ~2 s: no sleep, wait for the close.
                assert await client.closed_code() == 1008
            assert await served.stop() == 0


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("port-in-use", "in use"),
        ("database-dir-missing", "database"),
        ("tls-cert-missing", "tls"),
        ("shared-token-too-short", "shared token"),
    ],
)
async def test_startup_failure_is_one_clear_line(tmp_path: Path, case: str, expected: str) -> None:
    """Start-up problems end with one ``Error:`` line and a non-zero exit, no traceback."""
    env = cli_env(tmp_path / "fail.db")
    args = ["--port", "0"]
    with trio.fail_after(TIMEOUT):
        with trio.socket.socket() as busy:
            await busy.bind(("127.0.0.1", 0))
            busy.listen()
            if case == "port-in-use":
                args = ["--port", str(busy.getsockname()[1])]
            elif case == "database-dir-missing":
                args += ["--db", str(tmp_path / "missing" / "x.db")]
            elif case == "tls-cert-missing":
                args += ["--tls-cert", "missing.pem", "--tls-key", "missing.key"]
            else:
                (tmp_path / "shared.toml").write_text("allow_shared_token = true\n")
                args += ["--config", "shared.toml"]
                env["SOCKET_AUTH_TOKEN"] = "short"
            result = await run_cli("serve", *args, cwd=tmp_path, env=env)
    assert result.code != 0
    assert "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("Error:"), lines
    assert expected.lower() in lines[0].lower(), lines
