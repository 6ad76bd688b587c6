"""Peers that vanish with a TCP reset (SO_LINGER {1, 0}) at every point of a
connection's life: each ends that connection quietly, with no traceback, no
internal error and nothing logged above DEBUG (issue 16, failure 4).

Before the fix (measured at 9b06707): a reset before the ``100 Continue`` went out
raised ``trio.BrokenResourceError`` out of the front door's body read, logged with
a traceback as "connection ended by an internal error", 50 times in 50 tries."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from .conftest import Arena
from .tools import HANDSHAKE, Wire, auth_frame, connect_from, frame, metric_total, reset

TRIES = 50


def publish_head(token: str, length: int, *extra: str) -> bytes:
    lines = [
        "POST /api/publish HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before {marker!r}: {data[:200]!r}"
        data += chunk
    return data


async def one_reset(port: int, token: str, when: str) -> None:
    """One connection, reset at ``when``."""
    stream = await connect_from(port)
    try:
        if when == "mid-head":
            await stream.send_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ppp")
        elif when == "ws-before-101":
            await stream.send_all(HANDSHAKE)
        elif when == "ws-after-101":
            await stream.send_all(HANDSHAKE)
            await _until(stream, b"\r\n\r\n")
        elif when == "mid-frame":
            await stream.send_all(HANDSHAKE)
            await _until(stream, b"\r\n\r\n")
            await stream.send_all(auth_frame(token, "CATS"))
            await _until(stream, b"auth_success")
            await stream.send_all(frame(0x1, b'{"type":"ping"}' * 100)[:700])
        elif when == "100-continue":
            await stream.send_all(publish_head(token, 2000, "Expect: 100-continue"))
        elif when == "after-100-continue":
            await stream.send_all(publish_head(token, 2000, "Expect: 100-continue"))
            await _until(stream, b"HTTP/1.1 100")
        elif when == "mid-body":
            await stream.send_all(publish_head(token, 2000) + b'{"type":"click",' + b" " * 900)
        else:
            raise AssertionError(when)
    finally:
        reset(stream)


RESET_POINTS = [
    "mid-head",
    "ws-before-101",
    "ws-after-101",
    "mid-frame",
    "100-continue",
    "after-100-continue",
    "mid-body",
]


@pytest.mark.parametrize("when", RESET_POINTS)
async def test_a_reset_ends_the_connection_quietly(arena: Arena, when: str) -> None:
    async with arena.attack() as target:
        token = await target.token("resetter", "CATS")
        with trio.fail_after(20):
            for _ in range(TRIES // 10):
                async with trio.open_nursery() as nursery:
                    for _ in range(10):
                        nursery.start_soon(one_reset, target.port, token, when)
            # Every reset connection is gone; the gateway still answers.
            wire = Wire(await connect_from(target.port))
            async with wire.stream:
                await wire.handshake([])
                await wire.stream.send_all(auth_frame(token, "CATS"))
                while not wire.texts:
                    await wire._pump()
                assert json.loads(wire.texts[0])["type"] == "auth_success"
        loud = target.logged(logging.INFO)
        resets = await metric_total(target.port, r"catsock_peer_resets(_total)?")
    assert not loud, loud
    assert resets >= 1, "no reset counted in catsock_peer_resets"
