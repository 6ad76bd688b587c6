"""Write many WebSocket frames in one system call, through trio-websocket.

trio-websocket's public API sends one frame per ``send_message`` call, each its
own ``send_all``; a relay that fans out that way spends its time in syscalls.
Here a message is framed once (``text_frame``; server frames are unmasked, so
every recipient gets the same bytes) and a connection's pending frames go out
in one write, under the connection's send lock so they never interleave with
frames the library sends itself (pongs, close).

It is the only module that touches trio-websocket's private attributes; the
versions it was tested with are pinned in pyproject.toml and ``check_internals``
(run by the test suite and for every connection) fails loudly if they change.
"""

from __future__ import annotations

import struct

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.connection import ConnectionState

__all__ = ["InternalsChanged", "check_internals", "send_frames", "text_frame"]

_REQUIRED = ("_wsproto", "_stream", "_stream_lock", "_close_reason", "_abort_web_socket")
_FIN_TEXT = 0x81


class InternalsChanged(RuntimeError):
    """The installed trio-websocket no longer has what this adapter relies on."""


def check_internals(ws: WebSocketConnection) -> None:
    """Raise ``InternalsChanged`` unless ``ws`` has what this module relies on:
    its private attributes, and no negotiated extension (which would make
    frames differ from ``text_frame``'s plain RFC 6455 framing)."""
    missing = [name for name in _REQUIRED if not hasattr(ws, name)]
    proto = getattr(getattr(getattr(ws, "_wsproto", None), "connection", None), "_proto", None)
    if missing or getattr(proto, "extensions", None) != []:
        raise InternalsChanged(
            f"trio-websocket internals changed (missing {', '.join(missing) or 'frame protocol'}"
            "); catsock/wsadapter.py must be updated for this version"
        )


def text_frame(text: str) -> bytes:
    """One unfragmented, unmasked text frame (RFC 6455 §5.2), as a server sends it."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", _FIN_TEXT, 126, n) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, n) + payload


async def send_frames(ws: WebSocketConnection, frames: list[bytes]) -> None:
    """Write ``frames`` (from ``text_frame``) in one ``send_all``.

    Raises ``ConnectionClosed`` like ``send_message`` if the connection is closed
    or closing, or breaks during the write.
    """
    if ws._close_reason is not None or ws._wsproto.state is not ConnectionState.OPEN:
        raise ConnectionClosed(ws._close_reason)
    data = frames[0] if len(frames) == 1 else b"".join(frames)
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws._close_reason) from None
