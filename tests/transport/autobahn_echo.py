"""A test-only WebSocket echo server on ``catsock.transport``, for the Autobahn TestSuite.

It is the gateway's connection (``catsock/connection.py``) with the event protocol
taken out: the same ``FrameReader`` loop (a budget of frames per slice, a checkpoint
between slices), the same bounded queue that ``pump`` hands to the ``Link`` one write
at a time, and the same closing rules:

- the peer's close frame is answered with a close frame echoing its code (an empty
  one if it sent none), then the TCP connection closes at once;
- a ``FrameError`` drops what is queued, sends a close frame with the error's code
  (1002, 1007 or 1009) and closes with ``linger=True`` (shut the write side, read
  and drop for up to a second);
- a ping is answered with a pong carrying its payload; data frames after our close
  are ignored.

What it does instead of the event protocol: each text message goes back as one
``text_frame``, each binary message as one binary ``frame``. The limits are large
enough for the suite's 16 MiB messages (9.1.6, 9.2.6) and its 4 MiB messages sent in
64-byte fragments (9.3.1, 9.4.1).

Run it alone with ``python -m tests.transport.autobahn_echo --port 9001``; with
``--port 0`` it picks a free port. Either way its first line on stdout is
``listening on ws://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections import deque
from typing import Final

import h11
import trio

from catsock.transport.frames import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    close_frame,
    frame,
    text_frame,
)
from catsock.transport.handshake import accept_response, check_upgrade
from catsock.transport.link import BROKEN, SENT, Link

__all__ = ["MAX_FRAGMENTS", "MAX_SIZE", "EchoConnection", "main", "serve"]

#: The largest message (counting ``FRAGMENT_OVERHEAD`` per fragment): the suite's
#: biggest is 16 MiB in one frame; 4 MiB in 65536 fragments counts 5 MiB.
MAX_SIZE: Final = 32 * 1024 * 1024
#: 4 MiB in 64-byte fragments (9.3.1, 9.4.1) is 65536 of them.
MAX_FRAGMENTS: Final = 128 * 1024

# As in catsock/connection.py.
CLOSE_GRACE: Final = 5.0
FRAME_BUDGET: Final = 1000
MAX_WRITE: Final = 256 * 1024
MAX_UNREAD_REPLIES: Final = 256 * 1024

HEAD_TIMEOUT: Final = 10.0
MAX_HEAD: Final = 16 * 1024
SERVER_HEADER: Final = b"Server: catsock-transport-echo\r\n"


class EchoConnection:
    """One upgraded connection, run like ``catsock.connection.Connection``."""

    def __init__(self, link: Link, *, max_size: int, max_fragments: int) -> None:
        self.link = link
        self.max_size = max_size
        self.max_fragments = max_fragments
        link.on_drained = self._drained
        self._queue: deque[bytes] = deque()
        self._replies = 0  # bytes in the queue (all of it is replies here)
        self._room = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._close: tuple[int, str] | None = None
        self._close_sent = False
        self._peer_closed_too = False
        self._scope = trio.CancelScope()
        self.close_code: int | None = None

    def close(self, code: int, reason: str) -> None:
        """Flush what is queued, then close with ``code``; bounded by ``CLOSE_GRACE``."""
        if self._close is not None:
            return
        self._close = (code, reason)
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + CLOSE_GRACE)
        self.pump()

    def pump(self) -> None:
        """Hand queued frames to the link, as far as it takes them without waiting."""
        link = self.link
        if link.busy or self._close_sent or self._nursery is None:
            return
        queue = self._queue
        while queue:
            batch: list[bytes] = []
            size = 0
            while queue and size < MAX_WRITE:
                item = queue.popleft()
                batch.append(item)
                size += len(item)
            self._replies -= size
            result = link.send(batch[0] if len(batch) == 1 else b"".join(batch))
            if result == BROKEN:
                self._scope.cancel()
                return
            if result != SENT:
                return  # on_drained pumps again
        self._room.unpark_all()
        if self._close is not None:
            self._close_sent = True
            self.close_code = self._close[0]
            if link.send(close_frame(*self._close)) == BROKEN:
                self._scope.cancel()

    def _drained(self) -> None:
        self.pump()
        self._room.unpark_all()

    def _closing_frame_pending(self) -> bool:
        if self.link.broken:
            return False
        if self._close_sent:
            return self.link.busy
        return self._close is not None

    async def run(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.link.start(nursery)
                    self.pump()
                    await self._read()
                    while self._closing_frame_pending():
                        await self._room.park()
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            with trio.move_on_after(CLOSE_GRACE) as cleanup:
                cleanup.shield = True
                await self.link.aclose(linger=self._close_sent and not self._peer_closed_too)

    async def _read(self) -> None:
        reader = FrameReader(max_size=self.max_size, max_fragments=self.max_fragments)
        while True:
            data = await self.link.receive()
            if not data:
                return
            reader.feed(data)
            while True:
                try:
                    events = reader.read(FRAME_BUDGET)
                except FrameError as error:
                    self._queue.clear()
                    self._replies = 0
                    self.close(error.code, error.reason)
                    return
                for kind, value in events:
                    if kind == TEXT:
                        if self._close is None:
                            self._send_frame(text_frame(value))  # type: ignore[arg-type]
                    elif kind == BINARY:
                        if self._close is None:
                            self._send_frame(frame(BINARY, value))  # type: ignore[arg-type]
                    elif kind == PING:
                        self._send_frame(frame(PONG, value))  # type: ignore[arg-type]
                    elif kind == CLOSE:
                        self._peer_closed(*value)  # type: ignore[misc]
                        return
                self.pump()
                if not reader.more:
                    break
                await trio.lowlevel.checkpoint()
            if self._replies > MAX_UNREAD_REPLIES:
                await self._wait_for_room()

    def _peer_closed(self, code: int | None, reason: str) -> None:
        """The peer's close frame: answer it (unless ours went first) and stop.

        As connection.py does, including its flaw: with a write in flight
        (``link.busy``) no answer is ever sent, which no Autobahn case provokes (its
        client reads everything before it closes); a client that sends a large
        message, reads nothing and then closes gets the echo and EOF, no close frame.
        Fix it in both places together."""
        self._peer_closed_too = True
        if self.close_code is None:
            self.close_code = code or 1005
        if not self._close_sent:
            self._queue.clear()
            self._replies = 0
            self._close_sent = True
            if not self.link.busy:
                self.link.send(close_frame(code, ""))

    async def _wait_for_room(self) -> None:
        while self.link.busy or self._replies > MAX_UNREAD_REPLIES:
            await self._room.park()

    def _send_frame(self, data: bytes) -> None:
        if not self._close_sent:
            self._queue.append(data)
            self._replies += len(data)


# -- the HTTP side: one request head, then the 101 ---------------------------------------


async def _read_head(stream: trio.SocketStream) -> tuple[bytes, bytes] | None:
    """The request head (through its blank line) and what followed it; None if the peer
    closed, sent too much, or took too long."""
    buf = b""
    with trio.move_on_after(HEAD_TIMEOUT):
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                return buf[: end + 4], buf[end + 4 :]
            if len(buf) > MAX_HEAD:
                return None
            try:
                data = await stream.receive_some(MAX_HEAD)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            buf += data
    return None


async def _refuse(stream: trio.SocketStream, status: int, message: str) -> None:
    body = message.encode("utf-8")
    head = f"HTTP/1.1 {status} Refused\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(head.encode("ascii") + body)
    await trio.aclose_forcefully(stream)


async def handle(
    stream: trio.SocketStream, *, max_size: int = MAX_SIZE, max_fragments: int = MAX_FRAGMENTS
) -> None:
    """Serve one TCP connection: the opening handshake, then echo."""
    got = await _read_head(stream)
    if got is None:
        await trio.aclose_forcefully(stream)
        return
    head, rest = got
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(head)
    try:
        request = parser.next_event()
    except h11.RemoteProtocolError as exc:
        await _refuse(stream, 400, str(exc))
        return
    assert isinstance(request, h11.Request), request
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers:
        name = raw_name.decode("ascii")
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    refusal = check_upgrade(
        request.method.decode("ascii"), request.http_version.decode("ascii"), headers
    )
    if refusal is not None:
        await _refuse(stream, refusal.status, refusal.message)
        return
    # The gateway's 101 exactly, plus a Server header that names this server in reports.
    response = accept_response(headers)
    response = response[:-2] + SERVER_HEADER + b"\r\n"
    try:
        await stream.send_all(response)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await trio.aclose_forcefully(stream)
        return
    link = Link.over(stream, rest)
    await EchoConnection(link, max_size=max_size, max_fragments=max_fragments).run()


async def serve(
    port: int = 0,
    *,
    max_size: int = MAX_SIZE,
    max_fragments: int = MAX_FRAGMENTS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Echo on 127.0.0.1:``port``; ``task_status.started`` gets the bound port."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    bound = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        await handle(stream, max_size=max_size, max_fragments=max_fragments)

    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await nursery.start(trio.serve_listeners, handler, listeners)


async def _main(port: int, max_size: int, max_fragments: int) -> None:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            functools.partial(serve, port, max_size=max_size, max_fragments=max_fragments)
        )
        print(f"listening on ws://127.0.0.1:{bound}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.transport.autobahn_echo",
        description="Echo server on catsock.transport, for the Autobahn TestSuite.",
    )
    parser.add_argument("--port", type=int, default=9001, help="0: pick a free port")
    parser.add_argument("--max-size", type=int, default=MAX_SIZE)
    parser.add_argument("--max-fragments", type=int, default=MAX_FRAGMENTS)
    args = parser.parse_args(argv)
    try:
        trio.run(_main, args.port, args.max_size, args.max_fragments)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
