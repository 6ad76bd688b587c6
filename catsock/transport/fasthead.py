"""The request head every WebSocket client sends, parsed without h11.

A connection storm is mostly upgrade requests, and h11 (a full HTTP/1.1 state
machine) took about a fifth of the CPU a connection costs (issue 10). ``parse``
reads only the strictest form of one request shape: ``GET <path> HTTP/1.1``,
CRLF line ends, header names that are tokens, values of visible characters,
spaces and tabs, a ``Host``, no body. It never refuses anything: whatever it
does not recognise (or any header that announces a body) it leaves to h11, so
what the front door accepts and refuses is still what h11 says. Everything it
accepts, h11 accepts with the same meaning (tests/transport/test_fasthead.py
checks the two against each other).
"""

from __future__ import annotations

import re

__all__ = ["FastHead", "parse"]

#: Origin-form targets only (RFC 9112 §3.2.1): what a WebSocket client sends.
_REQUEST_LINE = re.compile(rb"GET (/[\x21-\x7e]*) HTTP/1\.1\r\n")
#: ``token ":" OWS field-value OWS`` with nothing h11 would object to in the value.
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([\t\x20-\x7e\x80-\xff]*)\r\n")
#: Headers that announce a body, or would make h11 look closer: left to h11.
_BODY_HEADERS = frozenset(("content-length", "transfer-encoding"))

#: Target, lower-case header names to values (repeats joined with ", ").
FastHead = tuple[str, dict[str, str]]


def parse(head: bytes | bytearray) -> FastHead | None:
    """``head`` (the request line through the blank line) as target and headers, if
    it has the one strict shape above; else None (let h11 parse it)."""
    line = _REQUEST_LINE.match(head)
    if line is None:
        return None
    headers: dict[str, str] = {}
    pos = line.end()
    end = len(head) - 2  # the blank line's CRLF
    if head[end:] != b"\r\n":
        return None
    while pos < end:
        field = _HEADER_LINE.match(head, pos)
        if field is None:
            return None
        name = field[1].decode("ascii").lower()
        if name == "host" and name in headers:
            return None  # h11 refuses a second Host
        value = field[2].strip(b" \t").decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
        pos = field.end()
    if pos != end or "host" not in headers or not _BODY_HEADERS.isdisjoint(headers):
        return None
    return line[1].decode("ascii"), headers
