"""Peer: a deliberately naive trio-websocket relay (one ``send_message`` per recipient).

The publisher's own task awaits ``send_message`` for each AFAD connection in turn:
one frame, one ``send_all`` and one wait per recipient — the pattern catsock's
coalescing writer (catsock/wsadapter.py) exists to avoid. Any token is accepted;
``{"type":"ping"}`` gets a pong. Run: ``python bench/peers/naive_trio_relay.py --port 9000``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import time

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

_ids = itertools.count(1)
clients: dict[str, set[WebSocketConnection]] = {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    client_type = None
    try:
        first = json.loads(await ws.get_message())
        if not isinstance(first, dict) or first.get("type") != "auth":
            await ws.aclose(1008, "auth required")
            return
        client_type = str(first.get("client_type", ""))
        clients.setdefault(client_type, set()).add(ws)
        await ws.send_message(
            json.dumps(
                {
                    "type": "auth_success",
                    "connection_id": f"conn_{next(_ids):016x}",
                    "timestamp": _now(),
                }
            )
        )
        while True:
            text = await ws.get_message()
            message = json.loads(text)
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "conversion" and client_type == "CATS":
                for other in list(clients.get("AFAD", ())):
                    try:
                        await other.send_message(text)
                    except ConnectionClosed:
                        clients.get("AFAD", set()).discard(other)
            elif kind == "ping":
                await ws.send_message(json.dumps({"type": "pong", "timestamp": _now()}))
    except (ConnectionClosed, ValueError):
        pass
    finally:
        if client_type is not None:
            clients.get(client_type, set()).discard(ws)


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(serve_websocket, handler, "127.0.0.1", port, None)
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    trio.run(main, parser.parse_args().port)
