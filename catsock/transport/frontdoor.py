"""The one port's front door: WebSocket upgrades go to the gateway, the rest is HTTP.

Every TCP (or TLS) stream starts here. The request head is read under one
deadline and hard size limits, and parsed with h11. A ``GET /ws`` carrying
``Upgrade: websocket`` (and an acceptable ``Origin``) leaves ``FrontDoor.serve``
as an ``Upgrade``, its head parsed and the bytes read past it kept, for the
gateway to answer (``catsock/transport/handshake.py``). Anything else is plain
HTTP/1.1, served with h11 by a handler (``catsock/httpapi.py``); keep-alive is
allowed but bounded, and a client that misbehaves gets one error response and a
gentle close.

A body is never read before the handler asks for it (``Request.read_body``), so
a request that needs a token is refused before its body is read, and one whose
endpoint takes no body is answered without reading it (and the connection then
closed). A body is read within the request's one deadline (``request_timeout``
from the head's first byte, never restarted) and within ``max_body`` bytes, each
chunk of a chunked body counting at least ``CHUNK_COST``. A peer that resets or
leaves ends its connection quietly (``stats.peer_resets``).
"""

from __future__ import annotations

import http
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import h11
import orjson
import trio

from ..config import HttpConfig
from . import fasthead

__all__ = [
    "CHUNK_COST",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "MAX_LINE_BYTES",
    "FrontDoor",
    "PeerGone",
    "Request",
    "RequestRefused",
    "Response",
    "Upgrade",
    "error_response",
    "json_response",
    "origin_allowed",
]

logger = logging.getLogger("catsock.frontdoor")

#: Longest request line or header line, CRLF included.
MAX_LINE_BYTES = 8 * 1024
#: Longest request head (request line, headers and the blank line).
MAX_HEAD_BYTES = 16 * 1024
#: Most header lines in one request.
MAX_HEADERS = 100
#: Blank lines tolerated before a request line (RFC 9112 §2.2: stray CRLFs).
MAX_LEADING_BLANK_LINES = 4
RECEIVE_BYTES = 16 * 1024
#: After an error response: how long, and how much, to read and discard before
#: closing, so the peer reads the response instead of a connection reset.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024
#: The least one chunk of a chunked body counts toward ``max_body``, however small:
#: a body of 2-byte chunks is refused after max_body / 1 KiB chunks.
CHUNK_COST = 1024
#: Refused origins logged (once each); past this many, no more are.
MAX_WARNED_ORIGINS = 1000


@attrs.frozen
class Request:
    """One plain HTTP request; its body is read when ``read_body`` is awaited."""

    method: str
    path: str
    query: str
    #: Lower-case names; a repeated header's values are joined with ", ".
    headers: dict[str, str]
    #: The body when it is known without reading (none announced, or given here).
    body: bytes = b""
    #: The client's address: the peer's, or behind a trusted proxy the one it names.
    client: str = ""
    _reader: Callable[[], Awaitable[bytes]] | None = attrs.field(
        default=None, alias="reader", eq=False, repr=False
    )

    @property
    def body_pending(self) -> bool:
        """A body was announced and has not been read (``read_body`` reads it)."""
        return self._reader is not None

    async def read_body(self) -> bytes:
        """The whole body, read off the connection on the first call. Raises
        ``RequestRefused`` (413 over the size limit, 408 past the request's
        deadline, 400 malformed) or ``PeerGone``; let them propagate: the front
        door answers them."""
        if self._reader is None:
            return self.body
        return await self._reader()


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, orjson.dumps(value) + b"\n", "application/json", headers)


def error_response(
    status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """The one error shape of every HTTP endpoint."""
    return json_response(status, {"error_code": code, "error_message": message}, headers)


class RequestRefused(Exception):
    """The request broke a limit, its deadline, or did not parse; answer
    ``response`` and close."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class PeerGone(Exception):
    """The peer reset the connection or left mid-request: close quietly."""


@attrs.frozen
class Upgrade:
    """A WebSocket handshake request, its head parsed; the handshake is not answered yet.

    ``rest`` is what the client sent past the head (frames, if it did not wait)."""

    stream: trio.abc.Stream
    method: str
    http_version: str
    path: str
    query: str
    headers: dict[str, str]
    rest: bytes


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Whether a browser page from ``origin`` may open a WebSocket here.

    No ``Origin`` header: not a browser (PHP, Python clients): allowed. Otherwise
    the origin must be the gateway's own (its host and port are the ``Host``
    header's) or one of ``allowed`` (``http.allowed_origins``).
    """
    if origin is None:
        return True
    normal = _normal_origin(origin)
    if normal is None:
        return False
    if normal in {_normal_origin(o) for o in allowed}:
        return True
    if host is None:
        return False
    scheme, _, netloc = normal.partition("://")
    return netloc == _normal_netloc(scheme, host)


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _normal_origin(origin: str) -> str | None:
    scheme, sep, netloc = origin.strip().lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or not netloc or "/" in netloc:
        return None
    return f"{scheme}://{_normal_netloc(scheme, netloc)}"


def _normal_netloc(scheme: str, netloc: str) -> str:
    netloc = netloc.strip().lower()
    default = ":" + _DEFAULT_PORTS.get(scheme, "")
    return netloc[: -len(default)] if netloc.endswith(default) else netloc


def _is_websocket_upgrade(headers: dict[str, str]) -> bool:
    upgrade = headers.get("upgrade")
    return upgrade is not None and "websocket" in (t.strip() for t in upgrade.lower().split(","))


def _ws_path(path: str) -> bool:
    return path.rstrip("/") == "/ws"


@attrs.define
class FrontDoorStats:
    http_connections: int = 0
    http_refused_full: int = 0
    heads_refused: int = 0
    heads_timed_out: int = 0
    #: Bodies refused for their size (413) or framing (400), and cut at the deadline.
    bodies_refused: int = 0
    bodies_timed_out: int = 0
    #: Connections the peer reset or left mid-request (or mid-answer).
    peer_resets: int = 0


class FrontDoor:
    """Reads requests off one stream and routes them (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        config: HttpConfig,
        *,
        max_body: int,
        closing: Callable[[], bool] = lambda: False,
        client_of: Callable[[str, Mapping[str, str]], str] = lambda peer, headers: peer,
    ) -> None:
        self.handler = handler
        self.config = config
        self.max_body = max_body
        self.closing = closing
        #: The client behind a peer, given the request's headers (behind a trusted
        #: proxy, the one its forwarding header names: ``AddressGuard.client_from``).
        self.client_of = client_of
        self.stats = FrontDoorStats()
        self.open_http = 0
        self._warned_origins: set[str] = set()

    async def serve(self, stream: trio.abc.Stream, peer: str = "") -> Upgrade | None:
        """Serve plain HTTP until the connection ends (then ``None``; the stream is
        closed), or return a WebSocket handshake request for the caller to answer.
        ``peer`` is the socket's remote address (``Request.client`` comes from it)."""
        buf = bytearray()
        counted = False
        served = 0
        try:
            while True:
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES + 1024)
                next_request: Request | Upgrade | None = None
                with trio.move_on_after(self.config.request_timeout) as deadline:
                    try:
                        next_request = await self._next_request(
                            stream, buf, conn, peer, deadline.deadline
                        )
                    except RequestRefused as refused:
                        self.stats.heads_refused += 1
                        await self.refuse(stream, refused.response)
                        return None
                    except PeerGone:
                        self._peer_gone("request head")
                        await trio.aclose_forcefully(stream)
                        return None
                if deadline.cancelled_caught:
                    if buf.strip():
                        self.stats.heads_timed_out += 1
                        timeout = error_response(408, "REQUEST_TIMEOUT", "request too slow")
                        await self.refuse(stream, timeout)
                    else:  # an idle keep-alive connection, or one that never spoke
                        await trio.aclose_forcefully(stream)
                    return None
                if next_request is None:  # the client closed between requests
                    await trio.aclose_forcefully(stream)
                    return None
                if not isinstance(next_request, Request):
                    return next_request
                if not counted:
                    if self.open_http >= self.config.max_connections:
                        self.stats.http_refused_full += 1
                        full = error_response(503, "CONNECTION_LIMIT", "too many HTTP connections")
                        await self.refuse(stream, full)
                        return None
                    counted = True
                    self.open_http += 1
                    self.stats.http_connections += 1
                served += 1
                try:
                    response = await self.handler(next_request)
                except RequestRefused as refused:  # the body broke a limit or the deadline
                    await self.refuse(stream, refused.response)
                    return None
                except PeerGone:
                    self._peer_gone("request body")
                    await trio.aclose_forcefully(stream)
                    return None
                except Exception:
                    logger.warning("HTTP handler failed", exc_info=True)
                    failed = error_response(500, "PROCESSING_ERROR", "internal error")
                    await self.refuse(stream, failed)
                    return None
                # A body the handler did not read is never read: answer, then close.
                unread = conn.their_state is not h11.DONE
                last = served >= self.config.keepalive_requests or self.closing() or unread
                head = next_request.method == "HEAD"
                if not await self._send(stream, conn, response, close=last, head=head):
                    await trio.aclose_forcefully(stream)
                    return None
                data, closed = conn.trailing_data
                if last or closed or conn.our_state is not h11.DONE:
                    await _close_gently(stream)
                    return None
                buf = bytearray(data)
        finally:
            if counted:
                self.open_http -= 1

    def _warn_origin(self, origin: str, host: str | None) -> None:
        """One WARNING per refused origin (at most ``MAX_WARNED_ORIGINS`` of them),
        naming the setting that would allow it: a browser only sees a 403."""
        origin = origin.strip()[:200]
        if origin in self._warned_origins or len(self._warned_origins) >= MAX_WARNED_ORIGINS:
            return
        self._warned_origins.add(origin)
        logger.warning(
            "refused a WebSocket from a page of origin %r: it is not this gateway's own "
            "(Host %r); to allow it, add it to http.allowed_origins "
            "(or CATSOCK_HTTP__ALLOWED_ORIGINS). Logged once per origin",
            origin,
            host,
        )

    def _peer_gone(self, where: str) -> None:
        self.stats.peer_resets += 1
        logger.debug("HTTP peer reset or left during the %s", where)

    async def _next_request(
        self,
        stream: trio.abc.Stream,
        buf: bytearray,
        conn: h11.Connection,
        peer: str,
        deadline: float,
    ) -> Request | Upgrade | None:
        end = await _read_head(stream, buf)
        if end == 0:
            return None
        # The common case, a WebSocket client's upgrade, without h11 (fasthead.py).
        fast = fasthead.parse(buf[:end])
        if fast is not None and _is_websocket_upgrade(fast[1]):
            path, _, query = fast[0].partition("?")
            return self._upgrade(stream, "GET", "1.1", path, query, fast[1], bytes(buf[end:]))
        conn.receive_data(bytes(buf[:end]))
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise RequestRefused(
                error_response(400, "BAD_REQUEST", str(exc) or "bad request")
            ) from None
        assert isinstance(event, h11.Request), event  # a complete head was fed
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("ascii")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        method = event.method.decode("ascii")
        if _is_websocket_upgrade(headers):
            version = event.http_version.decode("ascii")
            upgrade = self._upgrade(stream, method, version, path, query, headers, bytes(buf[end:]))
            if upgrade is not None:
                return upgrade
        if "content-length" in headers and "transfer-encoding" in headers:
            # RFC 9112 §6.1: a way to smuggle requests past a proxy; refused outright.
            raise RequestRefused(
                error_response(400, "BAD_REQUEST", "Content-Length and Transfer-Encoding together")
            )
        client = self.client_of(peer, headers)
        # Only the head was fed: h11 ends the message at once when no body is announced,
        # and says NEED_DATA (consuming nothing) when one is.
        no_body = isinstance(conn.next_event(), h11.EndOfMessage)
        if len(buf) > end:  # what came past the head: the body, or the next request
            conn.receive_data(bytes(buf[end:]))  # (receive_data(b"") would mean EOF)
        if no_body:
            return Request(method, path, query, headers, client=client)
        body = _Body(self, stream, conn, headers, deadline)
        return Request(method, path, query, headers, client=client, reader=body.read)

    def _upgrade(
        self,
        stream: trio.abc.Stream,
        method: str,
        version: str,
        path: str,
        query: str,
        headers: dict[str, str],
        rest: bytes,
    ) -> Upgrade | None:
        """A request asking for a WebSocket: the ``Upgrade`` to answer, a refusal
        raised (wrong path, foreign origin), or None: not a GET, served as HTTP."""
        if not _ws_path(path):
            raise RequestRefused(error_response(404, "NOT_FOUND", "the WebSocket endpoint is /ws"))
        if method != "GET":
            return None
        origin, host = headers.get("origin"), headers.get("host")
        if not origin_allowed(origin, host, self.config.allowed_origins):
            self._warn_origin(origin or "", host)
            raise RequestRefused(error_response(403, "ORIGIN_NOT_ALLOWED", "origin not allowed"))
        return Upgrade(stream, method, version, path, query, headers, rest)

    async def _send(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        response: Response,
        *,
        close: bool,
        head: bool,
    ) -> bool:
        """Write ``response`` through h11; False if the peer is gone or too slow to take it."""
        headers = [*_headers(response), *(_CLOSE if close else ())]
        reason = _reason(response.status)
        data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if response.body and not head:
            data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
        data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
        return await self._write(stream, data)

    async def refuse(self, stream: trio.abc.Stream, response: Response) -> None:
        """Answer a request that cannot be served (it may not even have parsed), then close."""
        lines = [f"HTTP/1.1 {response.status} {_reason(response.status).decode()}"]
        lines += [f"{name}: {value}" for name, value in [*_headers(response), *_CLOSE]]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
        if await self._write(stream, data):
            await _close_gently(stream)
        else:
            await trio.aclose_forcefully(stream)

    async def _write(self, stream: trio.abc.Stream, data: bytes) -> bool:
        with trio.move_on_after(self.config.request_timeout):
            try:
                await stream.send_all(data)
                return True
            except trio.BrokenResourceError:
                self._peer_gone("answer")
                return False
            except trio.ClosedResourceError:
                return False
        return False


class _Body:
    """One request's body, read when the handler asks (``Request.read_body``)."""

    def __init__(
        self,
        door: FrontDoor,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        headers: dict[str, str],
        deadline: float,
    ) -> None:
        self.door = door
        self.stream = stream
        self.conn = conn
        self.headers = headers
        self.deadline = deadline
        self.body: bytes | None = None

    async def read(self) -> bytes:
        if self.body is None:
            with trio.move_on_at(self.deadline):
                self.body = await self._read()
            if self.body is None:
                self.door.stats.bodies_timed_out += 1
                raise RequestRefused(error_response(408, "REQUEST_TIMEOUT", "request too slow"))
        return self.body

    def _refused(self, status: int, code: str, message: str) -> RequestRefused:
        self.door.stats.bodies_refused += 1
        return RequestRefused(error_response(status, code, message))

    async def _read(self) -> bytes:
        max_body = self.door.max_body
        too_large = f"the body may be at most {max_body} bytes"
        length = self.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body:
            raise self._refused(413, "MESSAGE_TOO_LARGE", too_large)
        conn = self.conn
        body = bytearray()
        cost = 0  # what the body counts toward max_body
        chunked = False
        chunk = 0  # bytes of the current chunk so far
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._refused(400, "BAD_REQUEST", str(exc) or "bad request") from None
            if isinstance(event, h11.Data):
                size = len(event.data)
                if event.chunk_start:
                    chunked, chunk = True, 0
                    cost += CHUNK_COST
                if chunked:  # a chunk counts max(its size, CHUNK_COST)
                    cost += max(chunk + size, CHUNK_COST) - max(chunk, CHUNK_COST)
                    chunk += size
                else:
                    cost += size
                if cost > max_body:
                    raise self._refused(413, "MESSAGE_TOO_LARGE", too_large)
                body += event.data
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return bytes(body)
            elif event is h11.NEED_DATA:
                try:
                    if conn.they_are_waiting_for_100_continue:
                        # curl and PHP's curl ask before sending a body over 1 KiB.
                        go_on = conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                        await self.stream.send_all(go_on or b"")
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                except trio.BrokenResourceError:
                    raise PeerGone from None
                conn.receive_data(bytes(data))
            else:  # ConnectionClosed: the peer stopped sending mid-body
                self.door._peer_gone("request body")
                raise RequestRefused(error_response(400, "BAD_REQUEST", "incomplete body"))


_CLOSE = (("connection", "close"),)


def _headers(response: Response) -> list[tuple[str, str]]:
    """Content type and length, then defaults the response's own headers may override."""
    given = {name.lower() for name, _ in response.headers}
    defaults = [("cache-control", "no-store"), ("x-content-type-options", "nosniff")]
    return [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        *((name, value) for name, value in defaults if name not in given),
        *((name, value) for name, value in response.headers if name.lower() not in _FRAMING),
    ]


_FRAMING = frozenset({"content-type", "content-length", "transfer-encoding", "connection"})


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


async def _read_head(stream: trio.abc.Stream, buf: bytearray) -> int:
    """Receive into ``buf`` until it holds a whole request head; return the offset
    just past it, or 0 if the peer closed before sending anything. Raises
    ``RequestRefused`` as soon as a limit is broken, without reading further."""
    line_start = 0
    lines = 0
    blanks = 0
    while True:
        while (newline := buf.find(b"\n", line_start)) >= 0:
            length = newline + 1 - line_start
            if length > MAX_LINE_BYTES:
                raise _too_large(lines)
            if length <= 2 and buf[line_start:newline].strip(b"\r") == b"":
                if lines:
                    if newline >= MAX_HEAD_BYTES:
                        raise _head_too_large()
                    return newline + 1
                blanks += 1
                if blanks > MAX_LEADING_BLANK_LINES:
                    raise RequestRefused(error_response(400, "BAD_REQUEST", "no request line"))
                del buf[: newline + 1]
                continue
            lines += 1
            if lines > MAX_HEADERS + 1:
                raise RequestRefused(
                    error_response(431, "HEADERS_TOO_LARGE", f"more than {MAX_HEADERS} headers")
                )
            line_start = newline + 1
        if len(buf) - line_start > MAX_LINE_BYTES:
            raise _too_large(lines)
        if len(buf) > MAX_HEAD_BYTES:
            raise _head_too_large()
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except trio.BrokenResourceError:
            raise PeerGone from None
        if not data:
            if buf.strip():
                raise RequestRefused(error_response(400, "BAD_REQUEST", "incomplete request head"))
            return 0
        buf += data


def _head_too_large() -> RequestRefused:
    return RequestRefused(
        error_response(431, "HEADERS_TOO_LARGE", f"request head over {MAX_HEAD_BYTES} bytes")
    )


def _too_large(lines: int) -> RequestRefused:
    if lines == 0:
        return RequestRefused(
            error_response(414, "URI_TOO_LONG", f"request line over {MAX_LINE_BYTES} bytes")
        )
    return RequestRefused(
        error_response(431, "HEADERS_TOO_LARGE", f"a header line over {MAX_LINE_BYTES} bytes")
    )


async def _close_gently(stream: trio.abc.Stream) -> None:
    """Close after a response: stop sending, then read and discard what the peer
    still sends (bounded), so its unread request does not turn into a reset that
    destroys the response before the peer reads it."""
    send_eof = getattr(stream, "send_eof", None)
    if send_eof is not None:
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await send_eof()
                drained = 0
                while drained < LINGER_BYTES:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        break
                    drained += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    await trio.aclose_forcefully(stream)
