"""The load generator's wire layer: a lean WebSocket (RFC 6455) client on raw trio sockets.

One ``Conn`` per connection, one reader task each; the reader does big reads and
parses every complete frame in the buffer in one pass, handing each text frame to
``conn.handler(buf, start, end)`` without copying. Writes are whole batches of
pre-built frames in one ``send_all``. Client frames use the all-zero masking key
(valid per RFC 6455 §5.3, and free: the masked payload equals the payload).

Two switches serve the soak scenario: ``raw`` hands each read to a callable
whole, with no frame parsing (a recipient that only counts what it gets), and
``pause``/``resume`` stop and restart reading (a client that stops reading, so
the server's writes back up into the socket buffers).

``Conn`` also speaks socket.io v5 over Engine.IO v4's WebSocket transport (no
long-polling), which is what ``socket.io-client`` with ``transports: ["websocket"]``
sends: the generator can then drive the python-socketio peer with the same code.
wsproto was measured at about 70k frames per CPU-second here against 310-380k for
this parser (docs/benchmarks.md), which is why the hot path does not use it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson
import trio

__all__ = ["Conn", "ConnectFailed", "Handler", "authenticate", "frame", "open_conn", "sio_event"]

#: (buffer, start, end) of one text frame's payload.
Handler = Callable[[bytes, int, int], None]

RECEIVE_SIZE = 256 * 1024
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_ZERO_MASK = b"\x00\x00\x00\x00"
_LINGER_RST = struct.pack("ii", 1, 0)


class ConnectFailed(Exception):
    """The TCP connect, the HTTP upgrade or the auth did not complete."""


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame (masked with the zero key) carrying ``payload``."""
    n = len(payload)
    head = 0x80 | opcode
    if n < 126:
        return bytes((head, 0x80 | n)) + _ZERO_MASK + payload
    if n < 65536:
        return bytes((head, 0x80 | 126)) + n.to_bytes(2, "big") + _ZERO_MASK + payload
    return bytes((head, 0x80 | 127)) + n.to_bytes(8, "big") + _ZERO_MASK + payload


_PONG_EMPTY = frame(b"", 0xA)
_SIO_PONG = frame(b"3")


class Conn:
    """One client connection. Create with ``open_conn``; run ``reader`` in a nursery."""

    __slots__ = (
        "_fragments",
        "_gate",
        "_pending",
        "_send_lock",
        "closed",
        "connection_id",
        "ended_by",
        "handler",
        "inbox",
        "inbox_event",
        "notify",
        "raw",
        "rx_time",
        "sio",
        "stream",
    )

    def __init__(self, stream: trio.SocketStream, sio: bool) -> None:
        self.stream = stream
        self.sio = sio
        self.handler: Handler = self._control
        #: Called once after each read that carried frames (cheap wake-ups for waiters).
        self.notify: Callable[[], None] | None = None
        #: When set, every read goes to ``raw`` whole and no frame is parsed (the
        #: caller then answers no pings: catsock sends none unless asked to).
        self.raw: Callable[[bytes], None] | None = None
        self._gate: trio.Event | None = None
        self.rx_time = 0.0
        self.closed = False
        #: How reading ended: "eof" (the peer closed), "reset", or "" (still open, or
        #: a close frame or unreadable frame ended it).
        self.ended_by = ""
        self.connection_id = ""
        self.inbox: list[Any] = []
        self.inbox_event = trio.Event()
        self._send_lock = trio.Lock()
        self._pending: list[bytes] = []
        self._fragments: list[bytes] = []

    # -- sending -------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def send_text(self, text: str | bytes) -> None:
        """Send one message: a text frame (WebSocket) or an Engine.IO message."""
        data = text.encode() if isinstance(text, str) else text
        await self.send_raw(frame(data))

    async def emit(self, event: str, body: bytes) -> None:
        """socket.io: emit ``event`` with ``body`` (already-encoded JSON) as its argument."""
        await self.send_raw(frame(sio_event(event, body)))

    # -- receiving -----------------------------------------------------------------

    async def reader(self, initial: bytes = b"") -> None:
        """Read until the peer closes; hand each text frame to ``self.handler``.

        ``initial`` is what arrived with the upgrade response, if anything."""
        rest = self._parse(initial) if initial else b""
        receive = self.stream.receive_some
        perf = time.perf_counter
        try:
            while True:
                if self._gate is not None:
                    await self._gate.wait()
                data = await receive(RECEIVE_SIZE)
                if not data:
                    self.ended_by = "eof"
                    break
                self.rx_time = perf()
                if self.raw is not None:
                    self.raw(data)
                    continue
                if rest:
                    data = rest + data
                rest = self._parse(data)
                if self.closed:  # a close frame, or a frame we cannot read
                    break
                if self._pending:
                    out, self._pending = b"".join(self._pending), []
                    await self.send_raw(out)
                if self.notify is not None:
                    self.notify()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended_by = "reset"
        finally:
            self.closed = True
            self.inbox_event.set()
            if self.notify is not None:
                self.notify()

    def _parse(self, buf: bytes) -> bytes:
        n = len(buf)
        pos = 0
        handler = self.handler if not self.sio else self._sio_frame
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if buf[pos + 1] & 0x80:
                # A server must not mask its frames (RFC 6455 §5.1): give up on this connection.
                self.closed = True
                return b""
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 0x1 or opcode == 0x2 or opcode == 0x0:
                if b0 & 0x80 and not self._fragments:
                    handler(buf, start, end)
                else:
                    self._fragments.append(buf[start:end])
                    if b0 & 0x80:
                        whole = b"".join(self._fragments)
                        self._fragments = []
                        handler(whole, 0, len(whole))
            elif opcode == 0x9:
                payload = buf[start:end]
                self._pending.append(frame(payload, 0xA) if payload else _PONG_EMPTY)
            elif opcode == 0x8:
                self.closed = True
            pos = end
            handler = self.handler if not self.sio else self._sio_frame
        return buf[pos:]

    def _sio_frame(self, buf: bytes, start: int, end: int) -> None:
        """Engine.IO: ``2`` is a ping (answer ``3``); ``4...`` carries socket.io."""
        if start == end:
            return
        kind = buf[start]
        if kind == 0x34:  # "4": message; "42[...]" is an event
            self.handler(buf, start, end)
        elif kind == 0x32:  # "2": ping
            self._pending.append(_SIO_PONG)
        elif kind == 0x30:  # "0{...}": the open packet
            self.inbox.append(("open", bytes(buf[start + 1 : end])))
            self.inbox_event.set()

    def _control(self, buf: bytes, start: int, end: int) -> None:
        """Default handler while setting up: decode and keep every message."""
        raw = buf[start:end]
        if self.sio:
            if raw[:2] == b"42":
                try:
                    event, *args = orjson.loads(raw[2:])
                except (orjson.JSONDecodeError, ValueError):
                    return
                self.inbox.append((event, args[0] if args else None))
            elif raw[:2] == b"40":
                self.inbox.append(("connect", raw[2:]))
            elif raw[:2] == b"44":
                self.inbox.append(("connect_error", raw[2:]))
        else:
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return
            if isinstance(message, dict):
                self.inbox.append((message.get("type"), message))
        self.inbox_event.set()

    async def next_message(self) -> tuple[Any, Any]:
        """The next message the default handler kept, as ``(type_or_event, body)``."""
        while not self.inbox:
            if self.closed:
                raise ConnectFailed("connection closed")
            self.inbox_event = trio.Event()
            await self.inbox_event.wait()
        return self.inbox.pop(0)  # type: ignore[no-any-return]

    def pause(self) -> None:
        """Stop reading after the read in progress (if any) until ``resume``."""
        if self._gate is None:
            self._gate = trio.Event()

    def resume(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    # -- closing -------------------------------------------------------------------

    def abort(self) -> None:
        """Close at once with a TCP reset: no close handshake, no TIME_WAIT left behind."""
        self.closed = True
        sock = self.stream.socket
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        sock.close()


def sio_event(event: str, body: bytes) -> bytes:
    return b'42["' + event.encode() + b'",' + body + b"]"


async def open_conn(
    port: int,
    *,
    sio: bool = False,
    host: str = "127.0.0.1",
    nursery: trio.Nursery,
    rcvbuf: int | None = None,
) -> Conn:
    """TCP connect and WebSocket upgrade (plus the Engine.IO open and socket.io
    connect for ``sio``); the reader is started in ``nursery``. ``rcvbuf`` fixes the
    socket's receive buffer (``SO_RCVBUF``, which also stops the kernel growing it).
    Raises ``ConnectFailed``."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await sock.connect((host, port))
    except OSError as exc:
        sock.close()
        raise ConnectFailed(f"connect: {exc.strerror or exc}") from None
    stream = trio.SocketStream(sock)
    key = base64.b64encode(os.urandom(16))
    path = b"/socket.io/?EIO=4&transport=websocket" if sio else b"/ws"
    request = (
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: "
        + host.encode()
        + b":"
        + str(port).encode()
        + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        await stream.send_all(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectFailed("closed during the handshake")
            head += chunk
            if len(head) > 65536:
                raise ConnectFailed("handshake response too large")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        sock.close()
        raise ConnectFailed(f"handshake: {exc}") from None
    header, _, rest = head.partition(b"\r\n\r\n")
    status = header.split(b"\r\n", 1)[0]
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    if b" 101" not in status or accept not in header:
        sock.close()
        raise ConnectFailed(f"upgrade refused: {status.decode(errors='replace')}")
    conn = Conn(stream, sio)
    nursery.start_soon(conn.reader, rest)
    if sio:
        try:
            kind, _ = await conn.next_message()
            if kind != "open":
                raise ConnectFailed(f"socket.io: expected the open packet, got {kind!r}")
            await conn.send_raw(frame(b"40"))
            kind, body = await conn.next_message()
            if kind != "connect":
                raise ConnectFailed(f"socket.io: namespace connect refused: {body!r}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            conn.abort()
            raise ConnectFailed(f"socket.io: {exc}") from None
        except ConnectFailed:
            conn.abort()
            raise
    return conn


async def authenticate(
    conn: Conn, token: str, client_type: str, extensions: dict[str, Any] | None = None
) -> str:
    """Send the seed's ``auth`` and wait for ``auth_success``; returns the connection_id.

    ``extensions`` asks for catsock's (docs/delivery.md §1, e.g. ``{"acks": {}}``).
    Over socket.io the same object travels as the argument of an ``auth`` event and
    the answer is an ``auth_success`` event. Raises ``ConnectFailed`` on anything else."""
    auth: dict[str, Any] = {"type": "auth", "token": token, "client_type": client_type}
    if extensions is not None:
        auth["extensions"] = extensions
    body = orjson.dumps(auth)
    try:
        if conn.sio:
            await conn.emit("auth", body)
        else:
            await conn.send_text(body)
        kind, message = await conn.next_message()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ConnectFailed(f"auth: {exc}") from None
    if kind != "auth_success":
        detail = message.get("payload", message) if isinstance(message, dict) else message
        raise ConnectFailed(f"auth refused: {kind} {detail}")
    conn.connection_id = str(message.get("connection_id", "")) if isinstance(message, dict) else ""
    return conn.connection_id
