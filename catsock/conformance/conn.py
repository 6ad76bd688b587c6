"""One client connection to the gateway under test, as the checks see it.

``_Conn`` collects the gateway's frames in the background and offers the
``expect_*`` helpers a check is written in; everything that arrives is decoded
with ``protocol.Codec`` (``_decode``), and ``_describe`` / ``_explain`` turn
what went wrong into the text a failed check reports.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
import trio_websocket

from protocol import Codec, ErrorCode, ProtocolError
from protocol import messages as m

from .frames import _message_id
from .results import _Fail, _Retry
from .tokens import _Budget

if TYPE_CHECKING:
    from .runner import _Ctx

#: Seconds the WebSocket close handshake may take before the socket is dropped.
_CLOSE_GRACE: Final = 2.0
#: A ping as a seed client writes it; its pong is also the runner's barrier.
_PING: Final = '{"type":"ping"}'


@attrs.frozen
class _Target:
    url: str
    host: str
    port: int
    resource: str
    ssl_context: ssl.SSLContext | None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _parse_url(url: str, ssl_context: ssl.SSLContext | None) -> _Target:
    """A ``ws://`` or ``wss://`` URL as a connection target; ``ValueError`` if unusable."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    if parts.scheme == "ws" and ssl_context is not None:
        raise ValueError("a TLS context applies to wss:// URLs only")
    if parts.scheme == "wss" and ssl_context is None:
        ssl_context = ssl.create_default_context()
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    default_port = 443 if parts.scheme == "wss" else 80
    return _Target(url, parts.hostname, port or default_port, resource, ssl_context)


@attrs.frozen
class _Msg:
    """One message from the gateway: its frame, its JSON and its decoded form."""

    data: str | bytes
    obj: Any = None
    message: m.Message | None = None
    problem: str | None = None

    @property
    def type(self) -> str | None:
        return None if self.message is None else self.message.type

    def error_code(self) -> str | None:
        return self.message.payload.error_code if isinstance(self.message, m.Error) else None


def _clip(data: str | bytes, limit: int = 160) -> str:
    text = repr(data)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(msg: _Msg) -> str:
    if msg.problem is not None:
        return f"a message the protocol refuses ({msg.problem}): {_clip(msg.data)}"
    message = msg.message
    if isinstance(message, m.Error):
        p = message.payload
        extra = "" if p.retry_after is None else f", retry_after {p.retry_after}"
        return f"error {p.error_code} ({p.error_message!r}{extra})"
    if isinstance(message, m.Event):
        return f"a {message.type} event (message_id {message.message_id!r})"
    assert message is not None
    return message.type


class _Conn:
    """A client connection whose frames are collected in the background.

    ``recv`` takes the next message; ``closed`` and ``close_code`` tell how the
    gateway ended the connection. A holder task in the check's nursery owns the
    socket and closes it when the check releases the connection.
    """

    def __init__(self, ctx: _Ctx, label: str) -> None:
        self.ctx = ctx
        self.label = label
        self.kind: str | None = None
        self.budget: _Budget | None = None
        self.authed = False
        #: The extensions auth_success granted (``ctx.login(..., extensions=...)``).
        self.granted: dict[str, Any] = {}
        self.sent: set[str] = set()
        self.closed = False
        self.close_code: int | None = None
        self._ws: Any = None
        self._items: list[str | bytes] = []
        #: When the last message arrived (trio time), or None.
        self.last_arrival: float | None = None
        self._cursor = 0
        self._lot = trio.lowlevel.ParkingLot()
        self._release = trio.Event()
        self._done = trio.Event()
        self._abort = False

    # -- lifecycle ---------------------------------------------------------------

    async def hold(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        target = self.ctx.runner.target
        stream = await _open_stream(target)
        started = False
        try:
            async with trio.open_nursery() as inner:
                self._ws = await trio_websocket.wrap_client_stream(
                    inner,
                    stream,
                    target.host_header,
                    target.resource,
                    max_message_size=4 * 1024 * 1024,
                )
                task_status.started()
                started = True
                inner.start_soon(self._read)
                await self._release.wait()
                if not self._abort:
                    with trio.move_on_after(_CLOSE_GRACE):
                        await self._ws.aclose()
                inner.cancel_scope.cancel()
        except Exception:
            if not started:
                raise
        finally:
            self.closed = True
            self._lot.unpark_all()
            try:
                await trio.aclose_forcefully(stream)
            finally:
                self._done.set()

    async def _read(self) -> None:
        try:
            while True:
                self._items.append(await self._ws.get_message())
                self.last_arrival = trio.current_time()
                self._lot.unpark_all()
        except trio_websocket.ConnectionClosed as exc:
            self.close_code = None if exc.reason is None else exc.reason.code
        finally:
            self.closed = True
            self._lot.unpark_all()

    async def abort(self) -> None:
        """Drop the connection without a close handshake, as a crashed client would."""
        self._abort = True
        await self.aclose()

    async def aclose(self) -> None:
        self._release.set()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_CLOSE_GRACE + 1):
                await self._done.wait()

    # -- sending -------------------------------------------------------------------

    async def send(self, data: str | bytes, *, paced: bool = True) -> None:
        """Send one frame (text for ``str``, binary for ``bytes``). After auth it
        takes a token from the pacing model, waiting for one unless ``paced`` is off."""
        if self.authed and self.budget is not None:
            if paced:
                await self.ctx.sleep(self.budget.wait_time(1))
            self.budget.spend(1)
        if isinstance(data, str):
            self.sent.add(data)
        try:
            await self._ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            code = None if exc.reason is None else exc.reason.code
            raise _Fail(f"{self.label}: the connection was closed ({code}) before a send") from None

    # -- receiving ------------------------------------------------------------------

    async def recv(self, what: str) -> _Msg:
        """The next message; fails if the connection closes first."""
        self.ctx.waiting = f"{self.label}: {what}"
        while self._cursor >= len(self._items):
            if self.closed:
                raise _Fail(
                    f"{self.label}: the connection was closed ({self.close_code}) "
                    f"while waiting for {what}"
                )
            await self._lot.park()
        data = self._items[self._cursor]
        self._cursor += 1
        msg = _decode(data)
        if isinstance(msg.message, m.AuthSuccess):
            self.authed = True
        return msg

    def pending(self) -> bool:
        """True if a message arrived that ``recv`` has not taken yet."""
        return self._cursor < len(self._items)

    def drain(self) -> list[_Msg]:
        """Every message that arrived and ``recv`` has not taken, taken now."""
        items = self._items[self._cursor :]
        self._cursor = len(self._items)
        return [_decode(data) for data in items]

    def _unexpected(self, msg: _Msg, what: str) -> Exception:
        if msg.error_code() == ErrorCode.RATE_LIMIT_EXCEEDED:
            return _Retry(f"{self.label}: expected {what}, got {_describe(msg)}", self.kind)
        if isinstance(msg.data, str) and msg.data in self.sent:
            own = "event" if isinstance(msg.message, m.Event) else "frame"
            return _Fail(f"{self.label}: expected {what}, got its own {own} back (echo)")
        return _Fail(f"{self.label}: expected {what}, got {_describe(msg)}")

    async def expect_type(self, type_: str) -> _Msg:
        msg = await self.recv(type_)
        if msg.problem is not None or msg.type != type_:
            raise self._unexpected(msg, type_)
        return msg

    async def expect_error(self, code: str, *, message_id: str | None = None) -> m.Error:
        what = f"error {code}"
        msg = await self.recv(what)
        if msg.problem is not None or msg.error_code() != code:
            raise self._unexpected(msg, what)
        assert isinstance(msg.message, m.Error)
        if message_id is not None and msg.message.payload.message_id != message_id:
            raise _Fail(
                f"{self.label}: error {code} should name message_id {message_id!r}, "
                f"named {msg.message.payload.message_id!r}"
            )
        return msg.message

    async def expect_closed(self, code: int) -> None:
        """The gateway closes with ``code`` and sends nothing more."""
        what = f"close {code}"
        self.ctx.waiting = f"{self.label}: {what}"
        while not self.closed and self._cursor >= len(self._items):
            await self._lot.park()
        if self._cursor < len(self._items):
            raise _Fail(f"{self.label}: expected {what}, got {_describe(await self.recv(what))}")
        if self.close_code != code:
            raise _Fail(f"{self.label}: expected {what}, the gateway closed with {self.close_code}")

    async def expect_text(self, text: str) -> None:
        """The next message is exactly ``text`` (a forwarded event, verbatim)."""
        msg = await self.recv("a forwarded event")
        if msg.data == text:
            return
        if isinstance(msg.message, m.Event) and msg.message.message_id == _message_id(text):
            raise _Fail(f"{self.label}: the event arrived, but not verbatim: {_clip(msg.data)}")
        raise self._unexpected(msg, f"the published text {_clip(text, 80)}")

    async def until_barrier(self) -> list[_Msg]:
        """Send ``ping`` and return everything that arrives before its ``pong``."""
        await self.send(_PING)
        before: list[_Msg] = []
        while True:
            msg = await self.recv("pong (barrier)")
            if msg.type == "pong":
                return before
            if msg.error_code() == ErrorCode.RATE_LIMIT_EXCEEDED:
                raise self._unexpected(msg, "pong")
            before.append(msg)

    async def quiet(self) -> None:
        """Nothing arrives before the barrier's ``pong``."""
        await self.send(_PING)
        msg = await self.recv("pong (barrier)")
        if msg.type != "pong":
            raise self._unexpected(msg, "nothing before the barrier's pong")


def _decode(data: str | bytes) -> _Msg:
    if isinstance(data, bytes):
        return _Msg(data, problem="a binary frame; gateways send text frames only")
    try:
        obj = json.loads(data)
    except ValueError:
        obj = None
    try:
        message = _CODEC.decode(data)
    except ProtocolError as exc:
        return _Msg(data, obj, problem=f"{exc.code}: {exc.detail}")
    return _Msg(data, obj, message)


_CODEC: Final = Codec()


async def _open_stream(target: _Target) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    if target.ssl_context is None:
        return await trio.open_tcp_stream(target.host, target.port)
    stream = await trio.open_ssl_over_tcp_stream(
        target.host, target.port, ssl_context=target.ssl_context, https_compatible=True
    )
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


def _explain(exc: BaseException) -> str:
    leaf = next(_leaves(exc), exc)
    if isinstance(leaf, trio_websocket.ConnectionRejected):
        return f"the WebSocket handshake was refused with HTTP {leaf.status_code}"
    if isinstance(leaf, ssl.SSLError | ssl.CertificateError):
        return f"TLS: {leaf}"
    if isinstance(leaf, trio.BrokenResourceError) and isinstance(leaf.__cause__, ssl.SSLError):
        return f"TLS: {leaf.__cause__}"
    if isinstance(leaf, OSError):
        text = leaf.strerror or str(leaf)
        # trio's "all attempts to connect ... failed" keeps the reasons in its cause.
        causes = [] if leaf.__cause__ is None else list(_leaves(leaf.__cause__))
        reasons = sorted({c.strerror for c in causes if isinstance(c, OSError) and c.strerror})
        if reasons and not any(r in text for r in reasons):
            text += f" ({', '.join(reasons)})"
        return text
    return str(leaf) or type(leaf).__name__


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc
