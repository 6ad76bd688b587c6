"""Peer: a plain ``websockets`` (asyncio) relay speaking catsock's seed protocol.

Any token is accepted; ``conversion`` from a CATS connection goes to every AFAD
connection with ``websockets.broadcast`` (the library's own fan-out: one write per
recipient, no awaiting); ``{"type":"ping"}`` gets a pong. No validation, no log.
Run: ``python bench/peers/websockets_relay.py --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import time

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

_ids = itertools.count(1)
clients: dict[str, set[ServerConnection]] = {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def handler(ws: ServerConnection) -> None:
    client_type = None
    try:
        first = json.loads(await ws.recv())
        if not isinstance(first, dict) or first.get("type") != "auth":
            await ws.close(1008, "auth required")
            return
        client_type = str(first.get("client_type", ""))
        clients.setdefault(client_type, set()).add(ws)
        await ws.send(
            json.dumps(
                {
                    "type": "auth_success",
                    "connection_id": f"conn_{next(_ids):016x}",
                    "timestamp": _now(),
                }
            )
        )
        async for text in ws:
            message = json.loads(text)
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "conversion" and client_type == "CATS":
                broadcast(clients.get("AFAD", ()), text)
            elif kind == "ping":
                await ws.send(json.dumps({"type": "pong", "timestamp": _now()}))
    except (ConnectionClosed, ValueError):
        pass
    finally:
        if client_type is not None:
            clients.get(client_type, set()).discard(ws)


async def main(port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler, "127.0.0.1", port, backlog=4096, compression=None, max_size=256 * 1024
    ):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
