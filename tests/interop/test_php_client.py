"""Seed 000's PHP clients against a live gateway, through a wire-compatible rewrite.

``php/seed_client.php`` is our own client that puts the same bytes on the wire
as the seed's ``SocketClient`` (§5.2), ``SocketEventDispatcher`` (§5.3) and
``SocketMessageReceiver`` (§5.4): the handshake with ``Host`` but no port, masked
0x81 frames in all three length forms, the auth message without envelope, the
§5.2 envelope with ``sender`` "CATS", and the unmasked ``\\x88\\x00`` close. Each
test runs it as a real ``php`` process against a gateway on 127.0.0.1:0.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import storage
from tests.catsock.harness import ADWARE_UPDATE, CONVERSION, GatewayFactory, envelope
from tests.interop.live import LiveProcess, lines, live_process

PHP = shutil.which("php")
CLIENT = Path(__file__).parent / "php" / "seed_client.php"

pytestmark = pytest.mark.skipif(PHP is None, reason="php not found: apt-get install php-cli")

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
GMDATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

#: What ``dispatchConversion`` (§5.3) builds from fetched rows: ids are the rows'
#: numeric strings, ``cost`` / ``sales`` are ``(int)`` casts, ``created_at`` is
#: the row's ``regist`` and ``tier_rewards`` defaults to ``[]``.
DISPATCHED_CONVERSION: dict[str, Any] = {
    "pay_id": "12345",
    "access_id": "67890",
    "adware_id": "100",
    "adware_name": "商品A",
    "owner_id": "500",
    "owner_name": "アフィリエイターX",
    "cost": 1000,
    "sales": 5000,
    "state": "PENDING",
    "tier_rewards": [],
    "created_at": "2025-10-29 12:34:56",
}

#: The seed's §4.2.2 example payload.
FULL_ADWARE_UPDATE: dict[str, Any] = {
    "adware_id": 100,
    "action": "UPDATE",
    "data": {
        "name": "商品A",
        "money": 1000,
        "click_money": 10,
        "continue_money": 500,
        "url": "https://example.com/product-a",
        "limits": 100000,
        "open": True,
    },
}


async def run_php(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert PHP is not None
    return await trio.run_process(
        [PHP, str(CLIENT), *args], capture_stdout=True, capture_stderr=True, check=False
    )


@asynccontextmanager
async def live_php(*args: str) -> AsyncIterator[LiveProcess]:
    assert PHP is not None
    async with live_process([PHP, str(CLIENT), *args]) as live:
        yield live


def handler_reports(stderr: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(stderr) if line.startswith("{")]


def assert_auth_success(line: str) -> None:
    reply = json.loads(line)
    assert reply["type"] == "auth_success", reply
    assert reply["connection_id"].startswith("conn_")
    assert "extensions" not in reply  # a seed client never sees an extension


def assert_php_envelope(text: str, type_: str, payload: dict[str, Any]) -> None:
    """``text`` is the §5.2 envelope as ``send()`` builds it, key order included."""
    message = json.loads(text)
    assert list(message) == ["version", "type", "timestamp", "message_id", "sender", "payload"]
    assert message["version"] == "1.0"
    assert message["type"] == type_
    assert GMDATE.match(message["timestamp"]), message["timestamp"]
    assert UUID4.match(message["message_id"]), message["message_id"]
    assert message["sender"] == "CATS"
    assert message["payload"] == payload


# -- (a) CATS publisher (PHP) -> AFAD (Python) ------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [pytest.param(CONVERSION, id="seed-example"), pytest.param(DISPATCHED_CONVERSION, id="rows")],
)
async def test_php_publisher_conversion_reaches_afad_as_framed(
    start_gateway: GatewayFactory, payload: dict[str, Any]
) -> None:
    gw = await start_gateway()
    token = gw.token("cats-php", "CATS")
    with trio.fail_after(30):
        async with gw.client("AFAD") as afad, gw.client("DASHBOARD", "admin") as admin:
            done = await run_php(
                "publish", gw.url, token, "conversion", json.dumps(payload, ensure_ascii=False)
            )
            assert done.returncode == 0, done.stderr
            auth_line, sent = lines(done.stdout)
            assert_auth_success(auth_line)
            # PHP's json_encode framing: \uXXXX escapes, no spaces.
            assert "\\u5546\\u54c1A" in sent
            assert ", " not in sent
            assert_php_envelope(sent, "conversion", payload)
            # Forwarded byte for byte to every recipient (protocol §5).
            assert await afad.recv_text() == sent
            assert await admin.recv_text() == sent
            # The PHP client's unmasked close left the gateway serving the others.
            await afad.send({"type": "ping"})
            assert (await afad.recv())["type"] == "pong"


async def test_php_publisher_64bit_length_frame(start_gateway: GatewayFactory) -> None:
    # A frame over 65535 bytes uses the 127 + 64-bit length form; json_encode's
    # escapes make it as many characters, so the size limit is raised for it.
    gw = await start_gateway(limits={"max_message_size": 256 * 1024})
    token = gw.token("cats-php", "CATS")
    payload = {**CONVERSION, "adware_name": "商品" * 12_000}  # 12 bytes each once escaped
    with trio.fail_after(30):
        async with gw.client("AFAD") as afad:
            done = await run_php(
                "publish", gw.url, token, "conversion", json.dumps(payload, ensure_ascii=False)
            )
            assert done.returncode == 0, done.stderr
            _, sent = lines(done.stdout)
            assert len(sent.encode()) > 65535
            assert_php_envelope(sent, "conversion", payload)
            assert await afad.recv_text() == sent


async def test_php_queue_flush_of_1000_conversions_all_reach_afad(
    start_gateway: GatewayFactory,
) -> None:
    """Issue 11: the seed's dispatcher flushes its fallback queue (§5.3
    processQueue) with 1,000 sends at once on one connection and reads nothing
    back. Seed §5.13 allows that; with the default rate limits (burst 100 then)
    900 were refused with errors the PHP client never reads, and lost."""
    gw = await start_gateway()  # the default rate limits
    token = gw.token("cats-php", "CATS")
    with trio.fail_after(60):
        async with gw.client("AFAD") as afad:
            done = await run_php(
                "flush", gw.url, token, "conversion", json.dumps(CONVERSION), "1000"
            )
            assert done.returncode == 0, done.stderr
            assert lines(done.stdout)[-1] == "sent 1000"
            got = [(await afad.recv())["payload"]["pay_id"] for _ in range(1000)]
    assert got == [str(i) for i in range(1000)]
    assert gw.gateway.stats.errors.get("RATE_LIMIT_EXCEEDED", 0) == 0


# -- (b) AFAD publisher (Python) -> the §5.4 receiver (PHP) ----------------------------------


async def test_php_receiver_handles_adware_and_budget_updates(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    token = gw.token("cats-php", "CATS")
    updates = [
        envelope("adware_update", FULL_ADWARE_UPDATE, "AFAD", "m-adware-1"),
        envelope("budget_update", {"adware_id": "100", "limit": 200000}, "AFAD", "m-budget-1"),
        envelope("adware_update", ADWARE_UPDATE, "AFAD", "m-adware-2"),
    ]
    with trio.fail_after(30):
        async with live_php("listen", gw.url, token, "CATS", str(len(updates))) as php:
            # Printed after auth_success, by which time the connection is subscribed.
            assert_auth_success(await php.line())
            async with gw.client("AFAD") as afad:
                for text in updates:
                    await afad.send(text)
                code, received = await php.finish()
    assert code == 0, php.stderr
    assert received == updates
    assert handler_reports(php.stderr) == [
        {"handler": "adware_update", "adware_id": 100, "action": "UPDATE",
         "data": FULL_ADWARE_UPDATE["data"]},
        {"handler": "budget_update", "adware_id": "100", "limit": 200000},
        {"handler": "adware_update", "adware_id": 100, "action": "UPDATE",
         "data": {"money": 1000}},
    ]  # fmt: skip


async def test_php_receiver_reads_64bit_length_frames(start_gateway: GatewayFactory) -> None:
    # A message of exactly the default limit, 65,536 bytes of UTF-8, is one byte
    # too long for the 16-bit length form: the gateway must send the 127 +
    # 64-bit form, and the receiver must read it.
    gw = await start_gateway()
    token = gw.token("cats-php", "CATS")

    def update(name: str) -> str:
        payload = {"adware_id": 100, "action": "CREATE", "data": {"name": name}}
        return envelope("adware_update", payload, "AFAD", "m-big")

    name = "商品" * 10_000  # 60,000 bytes
    name += "x" * (65536 - len(update(name).encode()))
    text = update(name)
    assert len(text.encode()) == 65536 == gw.gateway.config.limits.max_message_size
    with trio.fail_after(30):
        async with live_php("listen", gw.url, token, "CATS", "1") as php:
            assert_auth_success(await php.line())
            async with gw.client("AFAD") as afad:
                await afad.send(text)
                code, received = await php.finish()
    assert code == 0, php.stderr
    assert received == [text]
    (report,) = handler_reports(php.stderr)
    assert report == {"handler": "adware_update", "adware_id": 100, "action": "CREATE",
                      "data": {"name": name}}  # fmt: skip


# -- (c) the JSON heartbeat ------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("raw", id="json-ping"),
        # send('ping', []): the §5.2 envelope around a ping, payload [] included.
        pytest.param("envelope", id="enveloped-ping"),
    ],
)
async def test_php_ping_gets_pong(start_gateway: GatewayFactory, mode: str) -> None:
    gw = await start_gateway()
    token = gw.token("cats-php", "CATS")
    with trio.fail_after(30):
        done = await run_php("ping", gw.url, token, "CATS", mode)
    assert done.returncode == 0, done.stderr
    auth_line, reply_line = lines(done.stdout)
    assert_auth_success(auth_line)
    reply = json.loads(reply_line)
    assert reply["type"] == "pong"
    assert GMDATE.match(reply["timestamp"])


async def test_php_unmasked_close_releases_the_connection(start_gateway: GatewayFactory) -> None:
    # The seed closes with an unmasked "\x88\x00" and drops the socket. RFC 6455
    # makes that a protocol error (1002); the gateway must simply let go.
    gw = await start_gateway()
    token = gw.token("cats-php", "CATS")
    with trio.fail_after(30):
        done = await run_php("ping", gw.url, token, "CATS")
        assert done.returncode == 0, done.stderr
        connection_id = json.loads(lines(done.stdout)[0])["connection_id"]
        # The process has exited: its bytes and FIN are already in the socket buffer.
        await trio.testing.wait_all_tasks_blocked()
        assert gw.gateway.connections == set()
        await gw.gateway.log.flush()
    db = storage.open_db(gw.database)
    try:
        (row,) = storage.recent_connections(db, identity="cats-php")
    finally:
        db.close()
    assert row["id"] == connection_id
    assert row["close_code"] == 1002
    assert row["close_reason"] == "server received unexpected unmasked frame"


# -- (d) a bad token -------------------------------------------------------------------------


async def test_php_bad_token_is_not_auth_success(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    gw.token("cats-php", "CATS")
    with trio.fail_after(30):
        done = await run_php("publish", gw.url, "wrong-token", "conversion", json.dumps(CONVERSION))
    assert done.returncode == 2
    assert done.stdout == b""
    stderr = done.stderr.decode()
    assert stderr.startswith("error AUTH_FAILED: Authentication failed: "), stderr
    # What the client read instead of auth_success: the seed server's answer.
    reply = json.loads(stderr.split(": ", 2)[2])
    assert reply["type"] == "error"
    assert reply["payload"]["error_code"] == "AUTH_FAILED"
