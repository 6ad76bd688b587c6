"""Write many WebSocket frames in one system call, through trio-websocket.

trio-websocket's public API sends one frame per ``send_message`` call, each its
own ``send_all``; a relay that fans out that way spends its time in syscalls.
This module frames every pending message with the connection's own wsproto
object and writes them all at once, under the connection's send lock so it
never interleaves with frames the library sends itself (pongs, close).

It is the only module that touches trio-websocket's private attributes; the
versions it was tested with are pinned in pyproject.toml and ``check_internals``
(run by the test suite and at gateway start) fails loudly if they change.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.connection import ConnectionState
from wsproto.events import TextMessage

__all__ = ["InternalsChanged", "check_internals", "send_texts"]

_REQUIRED = ("_wsproto", "_stream", "_stream_lock", "_close_reason", "_abort_web_socket")


class InternalsChanged(RuntimeError):
    """The installed trio-websocket no longer has what this adapter relies on."""


def check_internals(ws: WebSocketConnection) -> None:
    """Raise ``InternalsChanged`` unless ``ws`` has the private attributes used here."""
    missing = [name for name in _REQUIRED if not hasattr(ws, name)]
    if missing:
        raise InternalsChanged(
            f"trio-websocket internals changed (missing {', '.join(missing)}); "
            "catsock/wsadapter.py must be updated for this version"
        )


async def send_texts(ws: WebSocketConnection, texts: Iterable[str]) -> None:
    """Send each text as its own text frame, all in one ``send_all``.

    Raises ``ConnectionClosed`` like ``send_message`` if the connection is closed
    or closing, or breaks during the write.
    """
    if ws._close_reason is not None or ws._wsproto.state is not ConnectionState.OPEN:
        raise ConnectionClosed(ws._close_reason)
    frame = ws._wsproto.send
    data = b"".join([frame(TextMessage(data=text)) for text in texts])
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws._close_reason) from None
