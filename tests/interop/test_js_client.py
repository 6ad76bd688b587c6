"""Seed 000's browser dashboard client (§9.6) against a live gateway, run in Node.

``js/seed_client.mjs`` is our own rewrite of ``CatsSocketClient``'s behaviour on
top of the WHATWG ``WebSocket`` that Node shares with browsers: auth as
DASHBOARD on open, a ``{"type":"ping"}`` heartbeat after ``auth_success``,
dispatch by ``data.type`` to handlers registered with ``on``, reconnect with
backoff on close. Each test runs it as a real ``node`` process against a gateway
on 127.0.0.1:0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.catsock.harness import CONVERSION, GatewayFactory, envelope

CLIENT = Path(__file__).parent / "js" / "seed_client.mjs"


def _node_command() -> tuple[list[str] | None, str]:
    """``node`` plus the flag its WebSocket needs, or None and why not."""
    node = shutil.which("node")
    if node is None:
        return None, "node not found: install Node.js >= 20 (apt-get install nodejs)"
    probe = "process.exit(typeof globalThis.WebSocket === 'function' ? 0 : 1)"
    for flags in ([], ["--experimental-websocket"]):
        try:
            done = subprocess.run(
                [node, *flags, "-e", probe], capture_output=True, timeout=30, check=False
            )
        except subprocess.TimeoutExpired:
            continue
        if done.returncode == 0:
            return [node, *flags], ""
    return None, "node has no WebSocket: needs Node >= 22, or >= 20 with --experimental-websocket"


NODE, WHY_NOT = _node_command()

pytestmark = pytest.mark.skipif(NODE is None, reason=WHY_NOT)

STATS_UPDATE: dict[str, Any] = {
    "owner_id": 500,
    "period": "2025-10-29",
    "clicks": 1520,
    "conversions": 37,
    "sales": 185000,
    "cost": 37000,
}


@pytest.fixture
def start_gateway(nursery: trio.Nursery, tmp_path: Path) -> GatewayFactory:
    return GatewayFactory(nursery, tmp_path)


class LiveNode:
    """The running client: its stdout read line by line, its stderr collected."""

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

    async def message(self) -> dict[str, Any]:
        """The next JSON line the client printed."""
        while b"\n" not in self._buffer:
            chunk = await self._stdout.receive_some()
            if not chunk:
                raise AssertionError(f"stdout ended; stderr: {self.stderr.decode('replace')}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result

    async def finish(self) -> int:
        """Wait for the client to exit by itself; its return code. No output may be left."""
        while chunk := await self._stdout.receive_some():
            self._buffer += chunk
        await self._stderr_done.wait()
        code = await self.process.wait()
        assert self._buffer == b"", self._buffer
        return code


@asynccontextmanager
async def live_node(url: str, token: str, count: int, **env: str) -> AsyncIterator[LiveNode]:
    assert NODE is not None
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            partial(
                trio.run_process,
                [*NODE, str(CLIENT), url, token, str(count)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
                env={**os.environ, **env},
            )
        )
        live = LiveNode(process)
        nursery.start_soon(live.collect_stderr)
        yield live


async def test_js_dashboard_receives_conversion_and_stats_update(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    token = gw.token("dashboard-js", "DASHBOARD")
    sent = [
        envelope("conversion", CONVERSION, "CATS", "m-conversion"),
        envelope("stats_update", STATS_UPDATE, "CATS", "m-stats"),
    ]
    with trio.fail_after(30):
        async with live_node(gw.url, token, len(sent)) as js:
            first = await js.message()
            assert first["type"] == "auth_success"
            assert "extensions" not in first
            async with gw.client("CATS") as cats:
                for text in sent:
                    await cats.send(text)
                # Each handler got the publisher's whole envelope (data.payload...).
                assert [await js.message() for _ in sent] == [json.loads(t) for t in sent]
                assert await js.finish() == 0, js.stderr


async def test_js_heartbeat_ping_gets_pong(start_gateway: GatewayFactory) -> None:
    # The seed pings every 30 s; the client takes a shorter period from the
    # environment so the test need not wait. Two pongs: the interval repeats.
    gw = await start_gateway()
    token = gw.token("dashboard-js", "DASHBOARD")
    with trio.fail_after(30):
        async with live_node(gw.url, token, 2, SEED_HEARTBEAT_MS="50") as js:
            assert (await js.message())["type"] == "auth_success"
            for _ in range(2):
                pong = await js.message()
                assert pong["type"] == "pong", pong
                assert isinstance(pong["timestamp"], str)
            assert await js.finish() == 0, js.stderr


async def test_js_reconnects_and_authenticates_again(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    token = gw.token("dashboard-js", "DASHBOARD")
    with trio.fail_after(30):
        async with live_node(gw.url, token, 1, SEED_RECONNECT_BASE_MS="10") as js:
            first = await js.message()
            assert first["type"] == "auth_success"
            (conn,) = gw.gateway.connections
            conn.close(1001, "going away")
            again = await js.message()
            assert again["type"] == "auth_success"
            assert again["connection_id"] != first["connection_id"]
            assert await js.finish() == 0, js.stderr
    assert b"Reconnecting... (attempt 1)" in js.stderr
