"""RFC 6455 frames for the server side, sans-IO: bytes in, whole messages out.

``FrameReader`` takes what a socket read returns (``feed``) and hands back every
complete message and control frame in it (``read``), at most ``budget`` frames
per call so that one connection's input never holds the event loop for long
(the caller checkpoints between calls). It enforces what a server must:

- client frames are masked (§5.1); RSV bits are zero (no extension is offered);
  opcodes are known; lengths use the minimal encoding and the 64-bit form has
  its top bit clear (§5.2);
- control frames carry at most 125 bytes and are never fragmented (§5.5);
- a continuation needs a message in progress, a new message needs none (§5.4);
- text is UTF-8, checked fragment by fragment so a bad byte fails at once (§8.1);
- a close frame's code is one an endpoint may send, its reason UTF-8 (§7.4);
- a message is at most ``max_size`` bytes, counting ``FRAGMENT_OVERHEAD`` per
  fragment, in at most ``max_fragments`` fragments; a frame header announcing
  more fails before its payload is read, so an attacker's connection holds at
  most one partial frame and one message in memory.

A broken rule raises ``FrameError`` carrying the close code to send (1002, 1007
or 1009). After a close frame the reader returns nothing more.

Outgoing frames (``frame``, ``text_frame``, ``close_frame``) are unmasked, as a
server's must be, so one encoded frame can go to every recipient.
"""

from __future__ import annotations

import codecs
import struct
from typing import Final

__all__ = [
    "BINARY",
    "CLOSE",
    "FRAGMENT_OVERHEAD",
    "PING",
    "PONG",
    "TEXT",
    "FrameError",
    "FrameReader",
    "close_frame",
    "frame",
    "text_frame",
]

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

#: What each fragment counts toward ``max_size`` besides its payload, so that a
#: stream of empty fragments reaches the limit too.
FRAGMENT_OVERHEAD: Final = 16

_PROTOCOL_ERROR: Final = 1002
_INVALID_DATA: Final = 1007
_TOO_BIG: Final = 1009
_MAX_CONTROL: Final = 125
_ZERO_MASK: Final = b"\x00\x00\x00\x00"

#: Close codes a peer may send (§7.4.1 and the IANA registry; 3000-4999 are
#: for libraries and applications). 1004-1006 and 1015 are never sent.
_PEER_CLOSE_CODES: Final = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015))

Event = tuple[int, object]


class FrameError(Exception):
    """The peer broke RFC 6455; close with ``code`` (and ``reason``) and stop reading."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` (§5.3), as one big-int operation."""
    if mask == _ZERO_MASK or not data:
        return data
    n = len(data)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (§5.2)."""
    n = len(payload)
    head = 0x80 | opcode
    if n < 126:
        return bytes((head, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", head, 126, n) + payload
    return struct.pack("!BBQ", head, 127, n) + payload


def text_frame(text: str) -> bytes:
    """One unfragmented text frame, as a server sends it."""
    return frame(TEXT, text.encode("utf-8"))


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame; ``None`` sends none of code and reason (§5.5.1). The reason is
    cut to fit the 125-byte control payload on a character boundary."""
    if code is None:
        return frame(CLOSE, b"")
    data = reason.encode("utf-8")[: _MAX_CONTROL - 2].decode("utf-8", "ignore").encode("utf-8")
    return frame(CLOSE, struct.pack("!H", code) + data)


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a received close frame (§5.5.1); ``FrameError`` if invalid."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FrameError(_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = (payload[0] << 8) | payload[1]
    if code not in _PEER_CLOSE_CODES and not 3000 <= code <= 4999:
        raise FrameError(_PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(_INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


class FrameReader:
    """The receiving half of one server connection (see the module docstring)."""

    __slots__ = (
        "_buf",
        "_closed",
        "_decoder",
        "_error",
        "_fragments",
        "_opcode",
        "_parts",
        "_size",
        "max_fragments",
        "max_size",
        "more",
    )

    def __init__(self, *, max_size: int, max_fragments: int = 1000) -> None:
        self.max_size = max_size
        self.max_fragments = max_fragments
        self._buf = b""
        self._closed = False
        # The message being assembled from fragments: its opcode, its parts so far
        # (text decoded fragment by fragment), its counted size and fragment count.
        self._opcode = 0
        self._parts: list[bytes] | list[str] = []
        self._size = 0
        self._fragments = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        #: ``read`` stopped on its budget: call it again (after a checkpoint).
        self.more = False
        # A broken rule found after some good frames in the same read: those are
        # returned first, the error is raised by the next call.
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held: unparsed input and the message being assembled."""
        return len(self._buf) + self._size

    def feed(self, data: bytes) -> None:
        """Add bytes read from the socket (a close frame ends all reading)."""
        if not self._closed:
            self._buf = self._buf + data if self._buf else data

    def read(self, budget: int = 1000) -> list[Event]:
        """Complete events from what was fed, at most ``budget`` frames' worth.

        Each event is ``(opcode, value)``: ``(TEXT, str)``, ``(BINARY, bytes)``,
        ``(PING, bytes)``, ``(PONG, bytes)`` or ``(CLOSE, (code | None, reason))``.
        Call again (after a checkpoint) while ``more`` is true. Raises
        ``FrameError`` (after returning the good frames before the bad one), and
        returns nothing more after that.
        """
        if self._error is not None:
            raise self._take_error()
        events: list[Event] = []
        self.more = False
        buf = self._buf
        n = len(buf)
        pos = 0
        try:
            while budget > 0 and n - pos >= 2 and not self._closed:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                # Decided by the first two bytes (reserved bits, mask, opcode, a control
                # frame's length and FIN): fail at once, not after waiting for an
                # extended length and a mask key that a bad peer may never send.
                if b0 & 0x70:
                    raise FrameError(_PROTOCOL_ERROR, "reserved bits set (no extension in use)")
                if not b1 & 0x80:
                    raise FrameError(_PROTOCOL_ERROR, "server received unexpected unmasked frame")
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                length = b1 & 0x7F
                if opcode >= CLOSE:
                    if length > _MAX_CONTROL or not fin:
                        raise FrameError(_PROTOCOL_ERROR, "control frame too long or fragmented")
                    if opcode > PONG:
                        raise FrameError(_PROTOCOL_ERROR, f"unknown opcode {opcode}")
                else:
                    self._check_opcode(opcode)
                if length < 126:
                    start = pos + 6
                # An extended length is judged once its own bytes are in, not after
                # the mask key that follows it.
                elif length == 126:
                    if n - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    if length < 126:
                        raise FrameError(_PROTOCOL_ERROR, "length not minimally encoded")
                    start = pos + 8
                else:
                    if n - pos > 2 and buf[pos + 2] & 0x80:
                        raise FrameError(_PROTOCOL_ERROR, "64-bit length with its top bit set")
                    if n - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length < 65536:
                        raise FrameError(_PROTOCOL_ERROR, "length not minimally encoded")
                    start = pos + 14
                if opcode < CLOSE:
                    self._admit(length)
                end = start + length
                if end > n:
                    break
                payload = unmask(buf[start:end], buf[start - 4 : start])
                pos = end
                budget -= 1
                if opcode >= CLOSE:
                    if opcode == CLOSE:
                        self._closed = True
                        events.append((CLOSE, parse_close(payload)))
                    else:
                        events.append((opcode, payload))
                elif fin and not self._fragments:
                    if opcode == TEXT:
                        try:
                            events.append((TEXT, payload.decode("utf-8")))
                        except UnicodeDecodeError:
                            raise FrameError(_INVALID_DATA, "text is not UTF-8") from None
                    else:
                        events.append((BINARY, payload))
                else:
                    whole = self._fragment(opcode, payload, fin)
                    if whole is not None:
                        events.append(whole)
        except FrameError as error:
            self._closed = True
            if not events:
                raise
            # Kept without its traceback, whose frame holds this reader: a cycle.
            self._error = error.with_traceback(None)
            self.more = True
        finally:
            self._buf = b"" if self._closed else buf[pos:]
        if self._error is None:
            self.more = budget == 0 and len(self._buf) >= 2
        return events


    def _take_error(self) -> FrameError:
        """The error kept for the next read, given up: raised, its traceback holds the
        raising frame, so neither this reader nor that frame may keep it (a cycle)."""
        error, self._error = self._error, None
        assert error is not None
        return error

    def _check_opcode(self, opcode: int) -> None:
        """A data frame's opcode, against the message in progress (first two bytes)."""
        if opcode == CONTINUATION:
            if not self._fragments:
                raise FrameError(_PROTOCOL_ERROR, "continuation frame with no message to continue")
        elif opcode in (TEXT, BINARY):
            if self._fragments:
                raise FrameError(_PROTOCOL_ERROR, "new message before the last one finished")
        else:
            raise FrameError(_PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _admit(self, length: int) -> None:
        """Check a data frame's size before its payload is buffered."""
        extra = FRAGMENT_OVERHEAD if self._fragments else 0
        if self._size + extra + length > self.max_size:
            raise FrameError(_TOO_BIG, f"message over {self.max_size} bytes")

    def _fragment(self, opcode: int, payload: bytes, fin: int) -> Event | None:
        if not self._fragments:
            self._opcode = opcode
            self._parts = []
            self._decoder = codecs.getincrementaldecoder("utf-8")() if opcode == TEXT else None
        self._size += len(payload) + (FRAGMENT_OVERHEAD if self._fragments else 0)
        self._fragments += 1
        if self._fragments > self.max_fragments:
            raise FrameError(_TOO_BIG, f"message in more than {self.max_fragments} fragments")
        decoder = self._decoder
        try:
            if decoder is not None:
                text = decoder.decode(payload, final=bool(fin))
                if text:
                    self._parts.append(text)  # type: ignore[arg-type]
            elif payload:
                self._parts.append(payload)  # type: ignore[arg-type]
        except UnicodeDecodeError:
            raise FrameError(_INVALID_DATA, "text is not UTF-8") from None
        if not fin:
            return None
        parts, kind = self._parts, self._opcode
        self._parts, self._size, self._fragments, self._decoder = [], 0, 0, None
        if kind == TEXT:
            return (TEXT, "".join(parts))  # type: ignore[arg-type]
        return (BINARY, b"".join(parts))  # type: ignore[arg-type]
