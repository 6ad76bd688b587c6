"""Peer: python-socketio's AsyncServer on uvicorn (seed 001's stack) doing catsock's routing.

socket.io cannot carry seed frames, so the closest equivalent is used: the seed's
messages travel as socket.io events named after their ``type`` with the message
object as the argument. ``auth`` joins the room named after ``client_type`` (any
token is accepted) and is answered with an ``auth_success`` event carrying
``{"type":"auth_success","connection_id":...}``; ``conversion`` from a CATS socket
is emitted to the ``AFAD`` room; ``ping`` is answered with ``pong``.
Run: ``python bench/peers/socketio_relay.py --port 9000``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
app = socketio.ASGIApp(sio)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@sio.event  # type: ignore[untyped-decorator]
async def auth(sid: str, data: Any) -> None:
    client_type = str(data.get("client_type", "")) if isinstance(data, dict) else ""
    await sio.save_session(sid, {"client_type": client_type})
    await sio.enter_room(sid, client_type)
    await sio.emit(
        "auth_success",
        {"type": "auth_success", "connection_id": f"conn_{sid}", "timestamp": _now()},
        to=sid,
    )


@sio.event  # type: ignore[untyped-decorator]
async def conversion(sid: str, data: Any) -> None:
    session = await sio.get_session(sid)
    if session.get("client_type") == "CATS":
        await sio.emit("conversion", data, room="AFAD", skip_sid=sid)


@sio.event  # type: ignore[untyped-decorator]
async def ping(sid: str, data: Any = None) -> None:
    await sio.emit("pong", {"type": "pong", "timestamp": _now()}, to=sid)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        backlog=4096,
        ws_max_size=256 * 1024,
    )
