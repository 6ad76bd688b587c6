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
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.catsock.harness import CONVERSION, GatewayFactory, envelope
from tests.interop.live import LiveProcess, live_process

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


async def message(js: LiveProcess) -> dict[str, Any]:
    """The next JSON line the client printed."""
    result: dict[str, Any] = json.loads(await js.line())
    return result


@asynccontextmanager
async def live_node(url: str, token: str, count: int, **env: str) -> AsyncIterator[LiveProcess]:
    assert NODE is not None
    async with live_process([*NODE, str(CLIENT), url, token, str(count)], **env) as live:
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
            first = await message(js)
            assert first["type"] == "auth_success"
            assert "extensions" not in first
            async with gw.client("CATS") as cats:
                for text in sent:
                    await cats.send(text)
                # Each handler got the publisher's whole envelope (data.payload...).
                assert [await message(js) for _ in sent] == [json.loads(t) for t in sent]
                assert await js.finish() == (0, []), js.stderr


async def test_js_heartbeat_ping_gets_pong(start_gateway: GatewayFactory) -> None:
    # The seed pings every 30 s; the client takes a shorter period from the
    # environment so the test need not wait. Two pongs: the interval repeats.
    gw = await start_gateway()
    token = gw.token("dashboard-js", "DASHBOARD")
    with trio.fail_after(30):
        async with live_node(gw.url, token, 2, SEED_HEARTBEAT_MS="50") as js:
            assert (await message(js))["type"] == "auth_success"
            for _ in range(2):
                pong = await message(js)
                assert pong["type"] == "pong", pong
                assert isinstance(pong["timestamp"], str)
            assert await js.finish() == (0, []), js.stderr


async def test_js_reconnects_and_authenticates_again(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    token = gw.token("dashboard-js", "DASHBOARD")
    with trio.fail_after(30):
        async with live_node(gw.url, token, 1, SEED_RECONNECT_BASE_MS="10") as js:
            first = await message(js)
            assert first["type"] == "auth_success"
            (conn,) = gw.gateway.connections
            conn.close(1001, "going away")
            again = await message(js)
            assert again["type"] == "auth_success"
            assert again["connection_id"] != first["connection_id"]
            assert await js.finish() == (0, []), js.stderr
    assert b"Reconnecting... (attempt 1)" in js.stderr
