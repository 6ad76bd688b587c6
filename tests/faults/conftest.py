"""Fault-injection fixtures: a real ``python -m catsock serve`` process that a test can
kill with SIGKILL and start again on the same database and port, and a durable
recipient that speaks the wire protocol itself and records everything it gets.

``GatewayProcess`` (the ``gateway`` fixture) reads the process's stderr as it comes
(``Served`` from tests/catsock/test_serve.py) and finds its port in the
"listening" line; ``start`` after ``kill`` passes ``--port`` with the old port, so
clients whose URL is fixed (``catsock.client.Client``) reconnect by themselves.
Nothing here sleeps to wait for a condition: a start waits for the listening line,
a kill for the process's exit, a recipient for the gateway's next start.
Every run's stderr is checked when the test ends: a traceback or an "internal
error" there fails it (tests/internal_errors.py).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

import storage
from catsock.backoff import Backoff
from catsock.client import Accepted, Client, Publication
from tests.catsock.harness import CONVERSION
from tests.catsock.test_serve import Served, cli_env, run_cli
from tests.internal_errors import InternalErrors
from tests.lines import LineReader

#: Every wait on a process (start, exit) is bounded by this.
PROCESS_TIMEOUT = 30
#: Reconnect quickly while the gateway restarts (the default starts at 2 s).
FAST_BACKOFF = Backoff(base=0.05, factor=2.0, cap=0.5, jitter=0.2)
#: A publishing ``catsock.client`` for these tests.
CLIENT_OPTIONS: dict[str, Any] = {"receive": False, "backoff": FAST_BACKOFF, "max_in_flight": 500}


def conversion_payload(i: int, **extra: Any) -> dict[str, Any]:
    return {**CONVERSION, "pay_id": i, **extra}


class GatewayProcess:
    """``python -m catsock serve --port P --database DB``, killable and restartable.

    ``settings`` are extra environment variables (``CATSOCK_LIMITS__SEND_QUEUE``...),
    read at each start. Rate limits are off: these tests push thousands of events.
    """

    def __init__(self, nursery: trio.Nursery, tmp_path: Path) -> None:
        self._nursery = nursery
        self.cwd = tmp_path
        self.database = tmp_path / "gw.db"
        self.settings: dict[str, str] = {"CATSOCK_LIMITS__RATE_LIMITS_ENABLED": "false"}
        self.port = 0
        self.served: Served | None = None
        self.starts = 0
        self.stderr: list[str] = []  # the stderr of every run that ended, in order
        self.runs: list[Served] = []
        self._started = trio.Event()

    # -- tokens, the database, the CLI ----------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        return cli_env(self.database, **self.settings)

    @property
    def url(self) -> str:
        assert self.port, "the gateway has not started yet"
        return f"ws://127.0.0.1:{self.port}/ws"

    def token(self, name: str, client_type: str) -> str:
        """Create a token in the gateway's database (also while it runs)."""
        db = storage.open_db(self.database)
        try:
            return storage.create_token(db, name=name, client_type=client_type)
        finally:
            db.close()

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        db = storage.open_db(self.database)
        try:
            return list(db.conn.execute(sql, tuple(params)).fetchall())
        finally:
            db.close()

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """``python -m catsock ARGS`` on this gateway's database: (exit code, out, err)."""
        result = await run_cli(*args, cwd=self.cwd, env=self.env)
        return result.code, result.out, result.err

    # -- the process --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.served is not None and self.served.process.returncode is None

    @property
    def pid(self) -> int:
        assert self.served is not None
        return self.served.process.pid

    async def start(self) -> int:
        """Start the gateway (on the port it had before, if any); its port once listening."""
        assert not self.running, "the gateway is already running"
        process = await trio.lowlevel.open_process(
            [
                sys.executable, "-m", "catsock", "serve",
                "--port", str(self.port), "--database", str(self.database),
            ],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        served = self.served = Served(process)
        self.runs.append(served)
        self._nursery.start_soon(served.read_stderr)
        with trio.fail_after(PROCESS_TIMEOUT):
            port = await served.port()
        assert self.port in (0, port), (self.port, port)
        self.port = port
        self.starts += 1
        self._started.set()
        self._started = trio.Event()
        return port

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; whatever was not committed is gone."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> int:
        """SIGTERM (a graceful shutdown); the exit code."""
        return await self._end(signal.SIGTERM)

    async def _end(self, signum: int) -> int:
        served = self.served
        assert served is not None
        assert self.running
        with trio.fail_after(PROCESS_TIMEOUT):
            code = await served.stop(signum)
        self.stderr.extend(served.lines)
        return code

    async def wait_started(self, after: int) -> int:
        """Wait until the gateway has started more than ``after`` times and runs."""
        while self.starts <= after or not self.running:
            await self._started.wait()
        return self.starts

    async def close(self) -> None:
        served = self.served
        if served is None:
            return
        if served.process.returncode is None:
            served.process.kill()
        with trio.move_on_after(5, shield=True):
            await served.wait_exit()
        assert served.process.stderr is not None
        with trio.move_on_after(5, shield=True):
            await served.process.stderr.aclose()

    def all_stderr(self) -> str:
        """What every run so far wrote to stderr (the current one up to now)."""
        return "\n".join(line for served in self.runs for line in served.lines)

    def vm_rss_kib(self) -> int:
        """The gateway process's resident set size (``VmRSS`` in /proc), in KiB."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS line")


@pytest.fixture
async def gateway(
    nursery: trio.Nursery, tmp_path: Path, internal_errors: InternalErrors
) -> AsyncIterator[GatewayProcess]:
    """A gateway process (not started yet: set ``settings``, create tokens, ``start``)."""
    gw = GatewayProcess(nursery, tmp_path)
    internal_errors.watch_stderr("python -m catsock serve", gw.all_stderr)
    try:
        yield gw
    finally:
        await gw.close()


# -- other processes: the CLI's tail, the publisher script ----------------------------------


@attrs.define
class Child:
    """A process with its stdout and stderr read line by line."""

    process: trio.Process
    out: LineReader
    err: LineReader

    async def kill(self) -> int:
        self.process.kill()
        return await self.wait()

    async def terminate(self) -> int:
        self.process.terminate()
        return await self.wait()

    async def wait(self) -> int:
        with trio.fail_after(PROCESS_TIMEOUT):
            code = await self.process.wait()
            await self.out.wait_for(lambda _: self.out.eof)
            await self.err.wait_for(lambda _: self.err.eof)
        return code


@contextlib.asynccontextmanager
async def child(args: list[str], cwd: Path, env: dict[str, str]) -> AsyncIterator[Child]:
    """Run ``args`` with piped output; killed on the way out if still running."""
    process = await trio.lowlevel.open_process(
        args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    running = Child(process, LineReader(process.stdout), LineReader(process.stderr))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(running.out.run)
            nursery.start_soon(running.err.run)
            try:
                yield running
            finally:
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(5, shield=True):
                    await process.wait()
    finally:
        with trio.move_on_after(5, shield=True):
            await process.stdout.aclose()
            await process.stderr.aclose()


# -- a recipient that speaks the protocol itself --------------------------------------------


@attrs.frozen
class Received:
    seq: int | None
    message_id: str
    connection: int  # the recipient's n-th connection (1-based)


class Recipient:
    """A durable recipient on a raw trio-websocket connection: records every event
    (seq, message_id, which connection), acks every ``ack_every`` events when it asked
    for ``acks``, and reconnects after each start of the gateway. ``pace`` (seconds
    after each event) makes it a slow reader; ``pace = 0`` reads at full speed."""

    def __init__(
        self,
        gateway: GatewayProcess,
        token: str,
        client_type: str = "AFAD",
        *,
        extensions: dict[str, Any] | None = None,
        ack_every: int = 100,
        pace: float = 0.0,
    ) -> None:
        self.gateway = gateway
        self.token = token
        self.client_type = client_type
        self.extensions = extensions
        self.acks = extensions is not None and "acks" in extensions
        self.ack_every = ack_every
        self.pace = pace
        self.received: list[Received] = []
        self.ids: Counter[str] = Counter()
        self.connections = 0
        self.auth_replies: list[dict[str, Any]] = []
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._changed = trio.Event()
        self._pongs = 0
        self._last_seq = 0
        self._acked = 0

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect after every start of the gateway until cancelled."""
        seen = 0
        while True:
            seen = await self.gateway.wait_started(seen)
            connections = self.connections
            # A lost connection or a refused one: the gateway went away; wait for
            # its next start.
            with contextlib.suppress(
                trio_websocket.ConnectionClosed,
                trio_websocket.HandshakeError,
                trio.BrokenResourceError,
                OSError,
            ):
                await self._connection(task_status)
            if self.connections > connections:
                task_status = trio.TASK_STATUS_IGNORED
            self._ws = None
            self._notify()

    async def _connection(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio_websocket.open_websocket_url(self.gateway.url) as ws:
            auth: dict[str, Any] = {
                "type": "auth", "token": self.token, "client_type": self.client_type,
            }
            if self.extensions is not None:
                auth["extensions"] = self.extensions
            await ws.send_message(json.dumps(auth))
            reply = json.loads(await ws.get_message())
            assert reply["type"] == "auth_success", reply
            self.auth_replies.append(reply)
            self.connections += 1
            self._ws = ws
            task_status.started()
            self._notify()
            while True:
                message = json.loads(await ws.get_message())
                kind = message.get("type")
                if kind == "pong":
                    self._pongs += 1
                elif "message_id" in message and "payload" in message:
                    seq = message.get("seq")
                    self.received.append(Received(seq, message["message_id"], self.connections))
                    self.ids[message["message_id"]] += 1
                    if isinstance(seq, int):
                        self._last_seq = seq
                    if self.acks and self._last_seq - self._acked >= self.ack_every:
                        await self._ack(ws)
                    if self.pace:
                        await trio.sleep(self.pace)  # a slow reader's pacing, not a wait
                else:
                    raise AssertionError(f"unexpected message: {message}")
                self._notify()

    async def _ack(self, ws: trio_websocket.WebSocketConnection) -> None:
        if self._last_seq > self._acked:
            await ws.send_message(json.dumps({"type": "ack", "seq": self._last_seq}))
            self._acked = self._last_seq

    async def wait_for(self, wanted: Iterable[str]) -> None:
        """Wait until every id in ``wanted`` has arrived at least once."""
        missing = set(wanted)
        checked = 0
        while True:
            missing.difference_update(r.message_id for r in self.received[checked:])
            checked = len(self.received)
            if not missing:
                return
            await self._changed.wait()

    async def barrier(self) -> None:
        """Ack what arrived, then ping and wait for the pong: everything queued for this
        connection before the ping has arrived by then (connection.py ``_held``)."""
        while self._ws is None:
            await self._changed.wait()
        ws = self._ws
        if self.acks:
            await self._ack(ws)
        want = self._pongs + 1
        await ws.send_message('{"type":"ping"}')
        while self._pongs < want:
            assert self._ws is ws, "the connection ended during a barrier"
            await self._changed.wait()

    # -- what was received --------------------------------------------------------------

    def redeliveries(self) -> list[Received]:
        """Events received again after their first arrival."""
        seen: set[str] = set()
        again = []
        for r in self.received:
            if r.message_id in seen:
                again.append(r)
            seen.add(r.message_id)
        return again

    def check_redeliveries_come_first(self) -> None:
        """On each new connection, what comes again comes first: the replay from the
        stored cursor up to where the last connection got, then what it never had."""
        seen: set[str] = set()
        by_connection: dict[int, list[Received]] = {}
        for r in self.received:
            by_connection.setdefault(r.connection, []).append(r)
        for number in sorted(by_connection):
            got = [r.message_id for r in by_connection[number]]
            again = [m for m in got if m in seen]
            assert got[: len(again)] == again, f"connection {number}: a redelivery came late"
            seen.update(got)

    def check_order(self) -> None:
        """Within each connection, seq strictly increases and no message_id repeats;
        a redelivered id comes back with the seq it had."""
        first_seq: dict[str, int | None] = {}
        by_connection: dict[int, list[Received]] = {}
        for r in self.received:
            by_connection.setdefault(r.connection, []).append(r)
            assert first_seq.setdefault(r.message_id, r.seq) == r.seq, (
                f"{r.message_id} came back with seq {r.seq}, first {first_seq[r.message_id]}"
            )
        for number, got in by_connection.items():
            seqs = [r.seq for r in got]
            assert all(isinstance(s, int) for s in seqs), f"connection {number} got no seq"
            ints = [s for s in seqs if s is not None]
            bad = [(a, b) for a, b in itertools.pairwise(ints) if b <= a]
            assert not bad, f"connection {number}: seq went {bad[:5]}"


# -- publishing a stream with catsock.client ---------------------------------------------------


async def publish_stream(
    client: Client,
    message_ids: list[str],
    accepted: dict[str, Accepted],
    *,
    payload: Callable[[int], dict[str, Any]] = conversion_payload,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Enqueue ``message_ids`` as conversions, in order, and record each answer in
    ``accepted``; ``progress(n)`` after the n-th answer."""
    send, receive = trio.open_memory_channel[Publication](math.inf)

    async def produce() -> None:
        async with send:
            for i, message_id in enumerate(message_ids):
                await send.send(
                    await client.enqueue("conversion", payload(i), message_id=message_id)
                )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        async with receive:
            async for publication in receive:
                accepted[publication.message_id] = await publication.result()
                if progress is not None:
                    progress(len(accepted))
