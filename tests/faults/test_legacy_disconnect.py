"""A seed-protocol recipient that leaves mid-stream loses nothing (issue 11, docs/delivery.md).

A real ``python -m catsock serve``; a CATS publisher streams 3,000 conversions;
an AFAD that speaks the seed protocol (no extensions, no acks: what the seed's
PHP ``SocketMessageReceiver`` sends) reads part of the stream and leaves — with a
close frame and without reading on (graceful), with a TCP reset (drop), or with a
reset after reading slowly, so that the stream piled up unread in its socket
(slow) — and then connects again and reads until its pong. Every event must arrive at
least once over the two connections; events the gateway could not know were
taken in come again (duplicates, counted and reported, never asserted away).
20 runs of each, on one gateway, each with an AFAD identity of its own.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import struct

import pytest
import trio

from catsock.client import Accepted, connect
from tests.wsframes import client_frame

from .conftest import CLIENT_OPTIONS, GatewayProcess, publish_stream

RUNS = int(os.environ.get("CATSOCK_LEGACY_RUNS", "20"))
EVENTS = 3000
_LINGER_RST = struct.pack("ii", 1, 0)


class SeedRecipient:
    """One raw connection: handshake, ``auth``, then text frames one by one."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int, token: str) -> SeedRecipient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self = cls(stream)
        while b"\r\n\r\n" not in self.buf:
            self.buf += await stream.receive_some(65536)
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buf = bytearray(rest)
        auth = {"type": "auth", "token": token, "client_type": "AFAD"}
        await self.send_text(json.dumps(auth))
        reply = json.loads(await self.next_text())
        assert reply["type"] == "auth_success", reply
        return self

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(client_frame(0x1, text.encode()))

    async def next_text(self) -> str:
        while True:
            if len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                start = 2 if n < 126 else 4 if n == 126 else 10
                if n == 126 and len(self.buf) >= 4:
                    n = int.from_bytes(self.buf[2:4], "big")
                elif n == 127 and len(self.buf) >= 10:
                    n = int.from_bytes(self.buf[2:10], "big")
                if len(self.buf) >= start + n and (n < 126 or start > 2):
                    opcode = self.buf[0] & 0x0F
                    payload = bytes(self.buf[start : start + n])
                    del self.buf[: start + n]
                    if opcode == 0x1:
                        return payload.decode()
                    continue  # pings and the like: the seed client ignores them
            data = await self.stream.receive_some(65536)
            assert data, "the gateway closed the connection"
            self.buf += data

    async def leave(self, how: str) -> None:
        if how == "drop":
            self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        else:
            await self.stream.send_all(client_frame(0x8, struct.pack("!H", 1000)))
        await self.stream.aclose()


async def _one_run(gw: GatewayProcess, port: int, cats: str, run: str, how: str) -> int:
    """One stream, one departure, one return; returns the duplicates seen."""
    afad = gw.token(f"afad-{run}", "AFAD")
    ids = [f"{run}-{i:05d}" for i in range(EVENTS)]
    accepted: dict[str, Accepted] = {}
    first: list[str] = []
    recipient = await SeedRecipient.connect(port, afad)
    slow = how == "slow"
    leave_after = random.randrange(100, 600) if slow else random.randrange(200, EVENTS - 200)

    async def read_then_leave() -> None:
        while len(first) < leave_after:
            first.append(json.loads(await recipient.next_text())["message_id"])
            if slow:
                await trio.sleep(0.002)  # a handler at work: the rest piles up unread
        await recipient.leave("drop" if slow else how)

    async with connect(gw.url, cats, "CATS", **CLIENT_OPTIONS) as client, trio.open_nursery() as n:
        n.start_soon(read_then_leave)
        await publish_stream(client, ids, accepted)
    assert len(accepted) == EVENTS
    again = await SeedRecipient.connect(port, afad)
    await again.send_text('{"type":"ping"}')
    second: list[str] = []
    while True:
        message = json.loads(await again.next_text())
        if message["type"] == "pong":
            break
        second.append(message["message_id"])
    await again.leave("graceful")
    missing = set(ids) - set(first) - set(second)
    assert not missing, f"{how} run {run}: {len(missing)} lost, e.g. {sorted(missing)[:3]}"
    # What the return brought is the stream from some point on, in order.
    assert second == ids[len(ids) - len(second) :], f"{how} run {run}: replay out of order"
    return len(first) + len(second) - EVENTS


@pytest.mark.parametrize("how", ["graceful", "drop", "slow"])
async def test_a_seed_recipient_that_leaves_mid_stream_loses_nothing(
    gateway: GatewayProcess, how: str, record_property: pytest.RecordProperty
) -> None:
    if "CATSOCK_LEGACY_CONFIRM" in os.environ:  # for measuring other holds by hand
        gateway.settings["CATSOCK_DELIVERY__LEGACY_CONFIRM"] = os.environ["CATSOCK_LEGACY_CONFIRM"]
    cats = gateway.token("cats", "CATS")
    duplicates: list[int] = []
    with trio.fail_after(60 + 15 * RUNS):
        port = await gateway.start()
        for run in range(RUNS):
            duplicates.append(await _one_run(gateway, port, cats, f"{how}{run}", how))
    record_property("duplicates", duplicates)
    print(f"{how}: {RUNS} runs of {EVENTS}, 0 lost; duplicates per run {duplicates}")
