"""A test-only WebSocket echo server on ``catsock.transport``, for the Autobahn TestSuite.

It is the gateway's connection with the event protocol taken out: the same
``catsock.transport.session.Session`` (the reader in budgeted slices, the queue
that ``pump`` hands to the ``Link`` one write at a time, pongs and the close
handshake) that ``catsock.connection.Connection`` runs on. What it does instead of
the event protocol: each text message goes back as one ``text_frame``, each binary
message as one binary ``frame``. Messages echoed are queued as bytes, like replies,
so they count toward the session's bound on unread replies. The limits are large
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
from typing import Final

import h11
import trio

from catsock.transport.frames import BINARY, frame, text_frame
from catsock.transport.handshake import accept_response, check_upgrade
from catsock.transport.link import Link
from catsock.transport.session import Session

__all__ = ["MAX_FRAGMENTS", "MAX_SIZE", "EchoConnection", "main", "serve"]

#: The largest message (counting ``FRAGMENT_OVERHEAD`` per fragment): the suite's
#: biggest is 16 MiB in one frame; 4 MiB in 65536 fragments counts 5 MiB.
MAX_SIZE: Final = 32 * 1024 * 1024
#: 4 MiB in 64-byte fragments (9.3.1, 9.4.1) is 65536 of them.
MAX_FRAGMENTS: Final = 128 * 1024

HEAD_TIMEOUT: Final = 10.0
MAX_HEAD: Final = 16 * 1024
SERVER_HEADER: Final = b"Server: catsock-transport-echo\r\n"


class EchoConnection(Session):
    """One upgraded connection: the gateway's session, echoing."""

    async def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.send_reply(text_frame(message))
        else:
            self.send_reply(frame(BINARY, message))


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
