"""The server's side of the opening handshake (RFC 6455 §4.2), on a head h11 already parsed.

The front door reads and parses the request head once; ``check_upgrade`` says
whether it is a handshake this server completes (or the HTTP refusal to send),
and ``accept_response`` builds the 101 answer. No extension and no subprotocol
is ever negotiated, so every frame on the connection is plain RFC 6455.
"""

from __future__ import annotations

import base64
import binascii

import attrs
from wsproto.utilities import generate_accept_token

__all__ = ["Refusal", "accept_response", "check_upgrade"]


@attrs.frozen
class Refusal:
    """Why an upgrade request is refused: the HTTP status, a message, extra headers."""

    status: int
    code: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


def check_upgrade(method: str, http_version: str, headers: dict[str, str]) -> Refusal | None:
    """``None`` if the request is a valid WebSocket handshake (§4.2.1), else the refusal.

    ``headers`` has lower-case names, repeated headers joined with ", ".
    """
    if method != "GET" or http_version != "1.1":
        return Refusal(400, "BAD_REQUEST", "a WebSocket handshake is GET over HTTP/1.1")
    if "upgrade" not in _tokens(headers.get("connection")):
        return Refusal(400, "BAD_REQUEST", "Connection: Upgrade is required")
    if "13" not in _tokens(headers.get("sec-websocket-version")):
        # §4.4: say which version we speak.
        return Refusal(
            426,
            "UPGRADE_REQUIRED",
            "only WebSocket version 13 is supported",
            (("sec-websocket-version", "13"),),
        )
    key = headers.get("sec-websocket-key", "")
    try:
        valid = len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        return Refusal(400, "BAD_REQUEST", "Sec-WebSocket-Key must be 16 bytes in base64")
    return None


def accept_response(headers: dict[str, str]) -> bytes:
    """The 101 response completing a handshake that ``check_upgrade`` accepted."""
    token = generate_accept_token(headers["sec-websocket-key"].strip().encode("ascii"))
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + token + b"\r\n\r\n"
    )
