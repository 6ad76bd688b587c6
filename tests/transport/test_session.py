"""The session's close handshake (catsock/transport/session.py) on real sockets.

The Autobahn echo server runs on the session in-process; a raw client sends
exactly the bytes a case needs and reads what comes back. These are the cases
Autobahn's client never provokes because it always reads before it closes.
"""

from __future__ import annotations

import base64
import os
import struct

import trio
import trio.testing

from catsock.transport.frames import BINARY, CLOSE, PING, PONG
from catsock.transport.link import Link
from catsock.transport.session import Session
from tests.wsframes import client_frame

from .autobahn_echo import serve
from .test_link import small_pair


async def _open(port: int) -> tuple[trio.SocketStream, bytearray]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    await stream.send_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        buf += await stream.receive_some(65536)
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    return stream, bytearray(rest)


async def _frames(stream: trio.SocketStream, buf: bytearray) -> list[tuple[int, bytes]]:
    """Every server frame until the connection closes."""
    while True:
        data = await stream.receive_some(1 << 20)
        if not data:
            break
        buf += data
    out = []
    pos = 0
    while pos < len(buf):
        opcode, length = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack("!H", buf[pos : pos + 2])
            pos += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", buf[pos : pos + 8])
            pos += 8
        out.append((opcode, bytes(buf[pos : pos + length])))
        pos += length
    return out


async def test_a_close_is_answered_even_while_a_large_write_is_in_flight() -> None:
    """The peer sends 8 MiB, reads nothing, then closes: the echo's write is still
    in flight when its close frame arrives, and the answer must follow it."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, 0)
        with trio.fail_after(30):
            stream, buf = await _open(port)
            big = os.urandom(8 * 1024 * 1024)
            await stream.send_all(client_frame(BINARY, big) + client_frame(CLOSE, b"\x03\xe8"))
            await trio.sleep(0.5)  # let the echo fill both socket buffers first
            frames = await _frames(stream, buf)
            assert [(op, len(p)) for op, p in frames] == [(BINARY, len(big)), (CLOSE, 2)]
            assert frames[0][1] == big
            assert frames[1][1] == b"\x03\xe8"  # the peer's code, echoed
        nursery.cancel_scope.cancel()


async def test_replies_read_with_the_close_go_out_before_the_answer() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, 0)
        with trio.fail_after(10):
            stream, buf = await _open(port)
            await stream.send_all(client_frame(PING, b"p") + client_frame(CLOSE, b""))
            assert await _frames(stream, buf) == [(PONG, b"p"), (CLOSE, b"")]
        nursery.cancel_scope.cancel()


class _Paced(Session):
    """A session whose writes are paced and whose messages mean nothing."""

    async def on_message(self, message: str | bytes) -> None:
        pass

    def paced(self) -> bool:
        return True


async def test_a_pump_while_the_session_ends_starts_no_task_in_its_closed_nursery() -> None:
    """A paced write waits in the session's nursery for room; the pacer may pump the
    session at any time, also between that nursery's closing and the end of ``run``
    (a schedule point of trio's): nothing may be started in it then (the 2× soak's
    server died of "Nursery is closed to new arrivals")."""
    ours, peer = small_pair()
    session = _Paced(Link(ours, None, b""), max_size=1 << 20, max_fragments=10)
    ended = trio.Event()

    async def run() -> None:
        await session.run()
        ended.set()

    async def pacer() -> None:
        while True:
            session.pump()
            await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()
            session.send_reply(b"x" * 200_000)  # far more than the buffers hold
            session.pump()
            assert session.link.busy
            nursery.start_soon(pacer)
            session._scope.cancel()
            await ended.wait()
            nursery.cancel_scope.cancel()
    peer.close()
