"""Peer: the trio + wsproto reference relay — the ceiling a trio server can reach.

Plain trio, one task per connection (plus its writer), ``wsproto`` for the
handshake, frame parsing, UTF-8 validation, pings and the close handshake, and
nothing else on the hot path:

- each read is ``receive_some(262144)``, and every wsproto event it produced is
  handled before the next ``await``;
- each inbound message's JSON is parsed only to read its ``type`` (stdlib
  ``json``, like the other Python peers);
- the ``conversion`` messages a CATS connection sent in one read are framed once
  each (RFC 6455 §5.2: FIN + text opcode, 7/16/64-bit length, no mask — server
  frames are unmasked, so the same bytes suit every recipient) and joined into
  one blob; that blob is appended to the pending list of every AFAD connection.
  The sender is CATS, so it is never among the recipients.

Writes: every connection has a writer task that sleeps on a ``trio.Event`` while
its pending list is empty. Appending to an empty list sets the event; the writer
wakes after the reader has handled its whole read (the reader does not await in
between), swaps the list for a fresh one and sends everything in it with one
``send_all(b"".join(pending))``. Everything a connection is sent (the handshake
response, ``auth_success``, pongs, close frames and relayed blobs) goes through
that list, so it leaves in order. A slow recipient only blocks its own writer —
the publisher's reader never awaits a recipient — and writes that queue up while
a ``send_all`` is blocked are coalesced into the next one. Why this and not
something else: writing from the reader would make the publisher wait for its
slowest subscriber (the naive-trio peer's problem), and trying a non-blocking
send first, falling back to the writer, would need trio's private socket; a
writer per connection costs one wake-up per read per recipient, not per message.
The pending list is not bounded (like ``websockets.broadcast``, a recipient that
never reads grows the server's memory; the benchmark's closed loop bounds what
is in flight).

Like the other peers: any token is accepted; the first message must be ``auth``
(else close 1008); ``auth`` gets ``{"type":"auth_success","connection_id":...,
"timestamp":...}``; ``{"type":"ping"}`` gets a pong. Text messages are limited to
256 Ki characters (close 1009), binary messages are refused (close 1003), invalid JSON
closes with 1007. Run: ``python bench/peers/wsproto_relay.py --port 9000``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import struct
import sys
import time
import traceback

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECEIVE_SIZE = 256 * 1024
#: Longest text message, in characters (the websockets peer's max_size is 256 KiB).
MAX_MESSAGE = 256 * 1024
#: How long to wait for the client's close frame after sending ours.
CLOSE_TIMEOUT = 5.0

_ids = itertools.count(1)
_head16 = struct.Struct("!BBH").pack
_head64 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying ``payload`` (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _head16(0x81, 126, n) + payload
    return _head64(0x81, 127, n) + payload


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Client:
    """One connection: its stream, its wsproto state and what is waiting to be written."""

    __slots__ = ("client_type", "done", "pending", "stream", "wake", "ws")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.pending: list[bytes] = []
        self.wake = trio.Event()
        #: Set when nothing more will be queued: the writer drains and returns.
        self.done = False
        self.client_type: str | None = None

    def queue(self, data: bytes) -> None:
        pending = self.pending
        if not pending:
            self.wake.set()
        pending.append(data)

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame (ours, or the answer to the client's) if one is due."""
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self.queue(self.ws.send(CloseConnection(code=code, reason=reason)))


#: client_type → its authenticated connections.
clients: dict[str, set[Client]] = {}


def _leave(client: Client) -> None:
    if client.client_type is not None:
        clients.get(client.client_type, set()).discard(client)
        client.client_type = None


async def writer(client: Client, scope: trio.CancelScope) -> None:
    """Send whatever is pending, all of it in one ``send_all``, whenever there is some."""
    send_all = client.stream.send_all
    try:
        while True:
            pending = client.pending
            if not pending:
                if client.done:
                    return
                client.wake = trio.Event()
                await client.wake.wait()
                continue
            client.pending = []
            await send_all(pending[0] if len(pending) == 1 else b"".join(pending))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        _leave(client)
        scope.cancel()  # the peer is gone: stop reading too


def handle_message(client: Client, text: str, relay: list[bytes]) -> bool:
    """One complete text message; frames to relay go to ``relay``. False: close now."""
    try:
        message = json.loads(text)
    except ValueError:
        client.close(1007, "invalid JSON")
        return False
    kind = message.get("type") if isinstance(message, dict) else None
    if client.client_type is None:
        if kind != "auth":
            client.close(1008, "auth required")
            return False
        client_type = str(message.get("client_type", ""))
        client.client_type = client_type
        clients.setdefault(client_type, set()).add(client)
        reply = {
            "type": "auth_success",
            "connection_id": f"conn_{next(_ids):016x}",
            "timestamp": _now(),
        }
        client.queue(text_frame(json.dumps(reply).encode()))
    elif kind == "conversion" and client.client_type == "CATS":
        relay.append(text_frame(text.encode()))
    elif kind == "ping":
        client.queue(text_frame(json.dumps({"type": "pong", "timestamp": _now()}).encode()))
    return True


async def reader(client: Client) -> None:
    """Read, hand every event of the read to wsproto's handlers, relay; until a close."""
    ws = client.ws
    receive = client.stream.receive_some
    parts: list[str] = []
    size = 0
    open_ = True
    failed = False  # the client broke the protocol: do not wait for its close
    while open_:
        try:
            data = await receive(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return  # EOF without a close frame
        relay: list[bytes] = []
        try:
            ws.receive_data(data)
            for event in ws.events():
                if type(event) is TextMessage:
                    if not event.message_finished:
                        parts.append(event.data)
                        size += len(event.data)
                        if size > MAX_MESSAGE:
                            client.close(1009, "message too big")
                            open_ = False
                            break
                        continue
                    text = event.data
                    if parts:
                        parts.append(text)
                        text = "".join(parts)
                        parts, size = [], 0
                    if len(text) > MAX_MESSAGE:
                        client.close(1009, "message too big")
                        open_ = False
                        break
                    if not handle_message(client, text, relay):
                        open_ = False
                        break
                elif type(event) is Ping:
                    client.queue(ws.send(event.response()))
                elif type(event) is CloseConnection:
                    # The client's close (answer it, with its code), or a frame wsproto
                    # could not parse (still OPEN: send 1002/1007 and drop the connection).
                    failed = ws.state is ConnectionState.OPEN
                    client.close(event.code, event.reason or "")
                    open_ = False
                    break
                elif type(event) is Request:
                    client.queue(ws.send(AcceptConnection()))
                elif type(event) is BytesMessage:
                    client.close(1003, "text messages only")
                    open_ = False
                    break
                # Pong: nothing to do.
        except RemoteProtocolError as exc:  # not a WebSocket handshake: 400
            if exc.event_hint is not None:
                client.queue(ws.send(exc.event_hint))
            open_ = False
            failed = True
        if relay:
            blob = relay[0] if len(relay) == 1 else b"".join(relay)
            for recipient in clients.get("AFAD", ()):
                recipient.queue(blob)
    # Closing: no frame may follow the close frame, so leave the fan-out set now.
    _leave(client)
    if ws.state is ConnectionState.LOCAL_CLOSING and not failed:
        # Our close went first: wait (a little) for the client's, discarding data.
        with trio.move_on_after(CLOSE_TIMEOUT):
            while ws.state is ConnectionState.LOCAL_CLOSING:
                try:
                    data = await receive(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                try:
                    ws.receive_data(data)
                    for _ in ws.events():
                        pass
                except (LocalProtocolError, RemoteProtocolError):
                    return


async def handle(stream: trio.SocketStream) -> None:
    client = Client(stream)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, client, nursery.cancel_scope)
            await reader(client)
            client.done = True  # the writer sends what is left (the close frame) and returns
            client.wake.set()
    except Exception:  # one connection's bug must not stop the server; say so
        traceback.print_exc(file=sys.stderr)
    finally:
        _leave(client)
        await stream.aclose()


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
            nursery.start_soon(trio.serve_listeners, handle, listeners)
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    trio.run(main, parser.parse_args().port)
