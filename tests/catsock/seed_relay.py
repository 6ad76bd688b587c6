"""An independent seed-protocol gateway: seed 000 §4 and §7, and nothing of catsock.

Written from the seed alone, on ``websockets`` (asyncio), to prove that the
conformance suite's ``seed`` profile is about the protocol, not about catsock.
One shared token (the seed's ``SOCKET_AUTH_TOKEN``) for every client type;
``auth`` → ``auth_success`` with a ``connection_id``; a bad token → ``AUTH_FAILED``
and close; anything before auth → ``AUTH_REQUIRED``; ``ping`` → ``pong``; events
routed unchanged by §4.3's direction column to the other connections of the
target type; unknown types → ``UNKNOWN_MESSAGE_TYPE`` (its own choice).
Run: ``python tests/catsock/seed_relay.py TOKEN [PORT]`` prints its port, then serves.
"""

import asyncio
import contextlib
import json
import sys
import time
import uuid

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

ROUTES = {"adware_update": "CATS", "stats_update": "DASHBOARD", "user_online": "DASHBOARD"}
ROUTES.update(dict.fromkeys(("conversion", "click", "tier_reward"), "AFAD"))
ROUTES.update(dict.fromkeys(("budget_alert", "fraud_alert"), "AFAD"))
clients: dict[ServerConnection, str] = {}


def frame(kind: str, **fields: object) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({"type": kind, "timestamp": stamp, **fields})


def error(code: str, text: str) -> str:
    return frame("error", payload={"error_code": code, "error_message": text})


async def handler(ws: ServerConnection) -> None:
    try:
        async for text in ws:
            try:
                message = json.loads(text)
                kind = message.get("type")
            except (ValueError, AttributeError):
                await ws.send(error("INVALID_MESSAGE", "Invalid JSON format"))
                continue
            if kind == "auth" and message.get("token") == sys.argv[1]:
                clients[ws] = str(message.get("client_type", "CATS"))
                await ws.send(frame("auth_success", connection_id=f"conn_{uuid.uuid4().hex}"))
            elif kind == "auth":
                await ws.send(error("AUTH_FAILED", "Invalid authentication token"))
                await ws.close()
            elif ws not in clients:
                await ws.send(error("AUTH_REQUIRED", "Authentication required"))
            elif kind == "ping":
                await ws.send(frame("pong"))
            elif kind in ROUTES:
                for other, client_type in list(clients.items()):
                    if other is not ws and client_type == ROUTES[kind]:
                        with contextlib.suppress(ConnectionClosed):
                            await other.send(text)
            else:
                await ws.send(error("UNKNOWN_MESSAGE_TYPE", f"Unknown type: {kind}"))
    except ConnectionClosed:
        pass
    finally:
        clients.pop(ws, None)


async def main() -> None:
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    async with serve(handler, "127.0.0.1", port) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
