"""What attackers use: sockets from their own loopback address, raw frames, resets.

Attackers connect from ``127.0.0.2`` and up (Linux routes all of 127.0.0.0/8 to
the loopback interface), the canary and the legitimate clients from
``127.0.0.1``, so per-address limits can tell them apart as they would tell two
hosts apart. Frames are built by hand (``frame`` and ``Wire`` come from the
framing fuzz, tests/catsock/test_framing_fuzz.py).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from tests.catsock.test_framing_fuzz import HANDSHAKE, Wire, frame, text_frame
from tests.catsock.test_http import body_of, http, raw_exchange, status_of, ws_handshake

__all__ = [
    "ATTACKER",
    "HANDSHAKE",
    "Wire",
    "auth_frame",
    "authenticate",
    "body_of",
    "connect_from",
    "differences",
    "frame",
    "http",
    "metric_total",
    "next_json",
    "one_response",
    "raw_exchange",
    "read_reply",
    "reset",
    "status_of",
    "text_frame",
    "until_closed",
    "ws_from",
    "ws_handshake",
]

#: The attacker's address; the canary and legitimate clients use 127.0.0.1.
ATTACKER = "127.0.0.2"


async def connect_from(port: int, source: str = ATTACKER) -> trio.SocketStream:
    """A TCP connection to the gateway on 127.0.0.1:``port`` from ``source``."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def ws_from(port: int, source: str = ATTACKER) -> Wire:
    """A raw WebSocket connection from ``source``, its handshake done (101)."""
    wire = Wire(await connect_from(port, source))
    await wire.handshake([])
    return wire


def reset(stream: trio.SocketStream) -> None:
    """Close with SO_LINGER {1, 0}: the kernel sends RST instead of FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


def auth_frame(token: Any, client_type: Any = "DASHBOARD", **extra: Any) -> bytes:
    auth = {"type": "auth", "token": token, "client_type": client_type, **extra}
    return text_frame(json.dumps(auth))


async def next_json(wire: Wire) -> dict[str, Any]:
    """The next text message the gateway sent on ``wire``, parsed."""
    while not wire.texts:
        assert not wire.ended, f"closed {wire.close_code} before a reply"
        await wire._pump()
    message: dict[str, Any] = json.loads(wire.texts.pop(0))
    return message


async def authenticate(wire: Wire, token: str, client_type: str) -> None:
    """Send ``auth`` on ``wire``; the reply must be ``auth_success``."""
    await wire.stream.send_all(auth_frame(token, client_type))
    reply = await next_json(wire)
    assert reply["type"] == "auth_success", reply


async def read_reply(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until the peer closes (a reset counts as a close)."""
    reply = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return reply
        if not chunk:
            return reply
        reply += chunk


async def one_response(port: int, request: bytes, source: str = ATTACKER) -> bytes:
    """Send ``request`` on a new connection from ``source``; the first response
    (head, and the body its Content-Length announces; the head alone for a 101),
    or what came before the gateway hung up."""
    async with await connect_from(port, source) as stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(request)
        data = b""
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                if status_of(data) == 101:
                    return head + sep
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                if length is None or len(body) >= int(length[1]):
                    return data
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                chunk = b""
            if not chunk:
                return data
            data += chunk


async def metric_total(port: int, name: str, labels: str = "") -> float:
    """The sum of /metrics samples whose name matches the regular expression ``name``
    and whose labels contain ``labels`` (asked from 127.0.0.1)."""
    body = (await http(port, "GET", "/metrics")).body.decode()
    total = 0.0
    for line in body.splitlines():
        found = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if found and re.fullmatch(name, found[1]) and labels in (found[2] or ""):
            total += float(found[3])
    return total


def differences(got: dict[Any, Any], expected: dict[Any, Any]) -> dict[Any, Any]:
    """``{key: (got, expected)}`` where they differ: ``assert not differences(...)``."""
    keys = [*expected, *(k for k in got if k not in expected)]
    return {k: (got.get(k), expected.get(k)) for k in keys if got.get(k) != expected.get(k)}


async def until_closed(send: Callable[[], Awaitable[None]]) -> int:
    """Call ``send`` until the peer stops taking data; return how many calls went through."""
    n = 0
    while True:
        try:
            await send()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return n
        n += 1
