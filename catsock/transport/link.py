"""One WebSocket connection's bytes after the handshake: large reads, writes without a task.

A plain TCP connection leaves trio's ``SocketStream`` once its handshake is done:
the link owns the socket and uses trio only to wait (``wait_readable``,
``wait_writable``). A write is tried at once, from whatever code produced it
(the fan-out after a commit, the reader answering a ping); only when the kernel
will not take all of it does the link start a drain task, which finishes the
write and then calls ``on_drained``. An idle connection therefore has one task
(its reader) and a busy one pays no task switch per write. Reads go through one
256 KiB buffer shared by every link (each read is copied out before any await).

A *paced* write (a live-only recipient's, catsock/pacer.py) is not finished by a
drain task: the task only waits until the socket has room and calls
``on_writable``, and the owner goes on with ``resume`` from its pacer's round.
Under overload a thousand dashboards' sockets become writable together, and a
drain task each meant a round of a thousand writes before anything else ran
(issue 19: rounds of 200-400 ms, every step a drain).

A TLS connection keeps its ``trio.SSLStream`` and every write goes through a
drain task, since encryption happens inside the stream.

``send`` takes one write at a time: the caller waits for ``on_drained`` (or a
``SENT`` result) before the next, which is how a connection keeps its own
queue bounded and knows what reached the kernel.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import termios
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["BROKEN", "PENDING", "RECEIVE_SIZE", "SENT", "Link"]

#: The largest single read (the reference relay's, and the load generator's).
RECEIVE_SIZE: Final = 256 * 1024
#: ``send`` results.
SENT: Final = 1
PENDING: Final = 0
BROKEN: Final = -1

#: After our close frame: how long, and how much, to read and discard before the
#: socket closes, so the peer reads the close frame instead of a reset.
LINGER_SECONDS: Final = 1.0
LINGER_BYTES: Final = 256 * 1024

#: ``struct tcp_info`` (linux/tcp.h): ``tcpi_bytes_acked`` and ``tcpi_snd_wnd`` offsets.
_TCPI_BYTES_ACKED: Final = 120
_TCPI_SND_WND: Final = 228
_TCP_INFO_LEN: Final = 232

_buffer = bytearray(RECEIVE_SIZE)
_view = memoryview(_buffer)
_GONE: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT})


def _nothing() -> None:
    pass


class Link:
    """Reads and writes for one connection; create with ``Link.over``."""

    __slots__ = (
        "_acked_base",
        "_draining",
        "_nursery",
        "_pending",
        "_rest",
        "_sock",
        "_stream",
        "_write",
        "_write_sent",
        "broken",
        "on_drained",
        "on_writable",
        "received_eof",
        "sent",
    )

    def __init__(
        self, sock: socket.socket | None, stream: trio.abc.Stream | None, rest: bytes
    ) -> None:
        self._sock = sock
        self._stream = stream
        self._rest = rest
        self._pending: memoryview | bytes | None = None
        # The write in flight, whole, and how much of it the kernel has taken.
        self._write: memoryview | None = None
        self._write_sent = 0
        self._draining = False
        self._nursery: trio.Nursery | None = None
        #: Called (from the drain task) when a ``PENDING`` write has fully gone out.
        self.on_drained: Callable[[], None] = _nothing
        #: Called (from a waiting task) when a paced ``PENDING`` write can go on.
        self.on_writable: Callable[[], None] = _nothing
        #: The peer reset the connection, or a write failed: nothing more goes out.
        self.broken = False
        self.received_eof = False
        #: Bytes of ours the kernel has taken so far (what ``send`` wrote).
        self.sent = 0
        self._acked_base = self._acked_before(sock)

    @classmethod
    def over(cls, stream: trio.abc.Stream, rest: bytes = b"") -> Link:
        """Take over ``stream`` (whose handshake is done); ``rest`` is what was read past
        the handshake. A plain ``trio.SocketStream`` gives up its socket to the link."""
        if type(stream) is trio.SocketStream:
            fd = stream.socket.detach()
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            return cls(sock, None, rest)
        return cls(None, stream, rest)

    def start(self, nursery: trio.Nursery) -> None:
        """Where drain tasks run: the connection's nursery."""
        self._nursery = nursery

    @property
    def busy(self) -> bool:
        """A write is in flight; ``send`` must wait for ``on_drained``."""
        return self._pending is not None

    # -- reading ------------------------------------------------------------------------

    async def receive(self) -> bytes:
        """The next bytes from the peer; ``b""`` at end of stream or on a reset.

        Every call passes through the scheduler at least once, so a peer that always
        has data ready still cannot keep other tasks from running. A cancellation
        (a deadline) can end the wait for data, never a call that has read some."""
        if self._rest:
            data, self._rest = self._rest, b""
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        sock = self._sock
        if sock is None:
            assert self._stream is not None
            try:
                return bytes(await self._stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.received_eof = True
                return b""
        while True:
            try:
                n = sock.recv_into(_buffer)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                n = 0
            if n == 0:
                self.received_eof = True
                await trio.lowlevel.cancel_shielded_checkpoint()
                return b""
            data = bytes(_view[:n])
            # A yield, so a peer that always has data ready cannot keep others from
            # running, but not a cancellation point: the bytes are read, and a
            # deadline passing now must not drop them.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    # -- writing ------------------------------------------------------------------------

    def send(self, data: bytes | memoryview, *, paced: bool = False) -> int:
        """Write ``data``: ``SENT`` (the kernel took it all), ``PENDING`` (a drain task
        finishes it, then calls ``on_drained``; ``paced``: a task waits for room and
        calls ``on_writable``, see ``resume``) or ``BROKEN`` (the connection is gone)."""
        assert self._pending is None, "one write at a time"
        if self.broken:
            return BROKEN
        if self._draining:
            # Called back from the drain task's on_drained: it picks this up.
            self._pending = data
            return PENDING
        sock = self._sock
        if sock is not None:
            sent = self._try_send(sock, data)
            if sent < 0:
                return BROKEN
            if sent == len(data):
                return SENT
            self._write, self._write_sent = memoryview(data), sent
            self._pending = self._write[sent:]
        else:
            self._pending = data
        self._wait(paced)
        return PENDING

    def resume(self, *, paced: bool = True) -> int:
        """Go on with a paced write: ``SENT`` once it is all out, ``BROKEN``, or
        ``PENDING``: the rest waits as ``send`` says (``paced`` False: a drain task
        finishes it). While a task already waits or drains, ``PENDING`` at once."""
        if self.broken:
            return BROKEN
        pending = self._pending
        if pending is None:
            self._write = None
            return SENT
        if self._draining:
            return PENDING
        sock = self._sock
        if sock is not None:
            sent = self._try_send(sock, pending)
            if sent < 0:
                self._pending = None
                return BROKEN
            self._write_sent += sent
            if sent == len(pending):
                self._pending = self._write = None
                return SENT
            self._pending = pending[sent:]
        self._wait(paced)
        return PENDING

    def _try_send(self, sock: socket.socket, data: bytes | memoryview) -> int:
        """What the kernel took of ``data`` now (0: nothing), or -1: the link broke."""
        try:
            sent = sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self.broken = True
            return -1
        self.sent += sent
        return sent

    def _wait(self, paced: bool) -> None:
        self._draining = True
        assert self._nursery is not None, "start() the link before writing"
        paced = paced and self._sock is not None  # TLS: encryption is the stream's
        self._nursery.start_soon(self._until_writable if paced else self._drain)

    async def _until_writable(self) -> None:
        assert self._sock is not None
        try:
            await trio.lowlevel.wait_writable(self._sock)
        finally:
            self._draining = False
        self.on_writable()

    async def _drain(self) -> None:
        try:
            while self._pending is not None:
                if self._sock is not None:
                    await self._drain_socket(self._sock)
                else:
                    assert self._stream is not None
                    data, self._pending = self._pending, None
                    try:
                        await self._stream.send_all(data)
                        self.sent += len(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.broken = True
                if self.broken:
                    self._pending = None
                    return
                self.on_drained()  # may hand the next write to this task (see send)
        finally:
            self._draining = False

    async def _drain_socket(self, sock: socket.socket) -> None:
        while self._pending is not None:
            await trio.lowlevel.wait_writable(sock)
            if self._pending is None:  # cut short meanwhile (cut_after_frame)
                break
            try:
                sent = sock.send(self._pending)
            except BlockingIOError:
                continue
            except OSError:
                self.broken = True
                return
            self.sent += sent
            self._write_sent += sent
            rest = self._pending[sent:]
            self._pending = rest if len(rest) else None
        self._write = None

    def cut_after_frame(self) -> int:
        """Drop what the write in flight holds after the frame the kernel is in the
        middle of (a frame cannot be cut), so that what comes next — a close — waits
        behind one frame, not behind the whole write. Returns the bytes dropped."""
        write, pending = self._write, self._pending
        if write is None or pending is None or not isinstance(pending, memoryview):
            return 0
        end = _frame_end(write, self._write_sent)
        dropped = len(write) - end
        self._pending = write[self._write_sent : end] if end > self._write_sent else None
        return dropped

    # -- what the peer has taken ------------------------------------------------------------

    @staticmethod
    def _acked_before(sock: socket.socket | None) -> int | None:
        """Bytes written into the socket before the link took it (the 101 response):
        acknowledged ones plus those still queued, so that TCP_INFO's count of
        acknowledged bytes can be turned into an offset in the link's own bytes."""
        info = _tcp_info(sock)
        if info is None or sock is None:
            return None
        try:
            queued: int = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]
        except OSError:
            return None
        return info[0] + queued

    def peer_progress(self) -> tuple[int, int] | None:
        """``(acked, window)``: how many of the link's bytes the peer's TCP has
        acknowledged, and the receive window it advertises now (it shrinks while the
        peer's application leaves data unread). ``None`` where TCP_INFO cannot tell
        (TLS, another OS, a closed link)."""
        info = _tcp_info(self._sock) if self._acked_base is not None else None
        if info is None or self._acked_base is None:
            return None
        return info[0] - self._acked_base, info[1]

    # -- closing --------------------------------------------------------------------------

    async def aclose(self, *, linger: bool = True) -> None:
        """Close the connection. With ``linger``, first stop sending and read (and drop)
        what the peer still sends, briefly, so it reads our last frames before the
        socket closes; without, close at once."""
        # A closed link never drains: dropping the owner's callback also ends the
        # reference cycle through it, so the connection is freed at once, not by a
        # garbage collection that walks every live connection (issue 10's storm).
        self.on_drained = self.on_writable = _nothing
        sock, stream = self._sock, self._stream
        if sock is not None:
            self._sock = None
            if linger and not self.broken and not self.received_eof:
                with trio.move_on_after(LINGER_SECONDS):
                    await _linger(sock)
            trio.lowlevel.notify_closing(sock)
            sock.close()
        elif stream is not None:
            self._stream = None
            if linger and not self.broken:
                with trio.move_on_after(LINGER_SECONDS):
                    await stream.aclose()
            await trio.aclose_forcefully(stream)

    def fileno(self) -> int:
        """The socket's descriptor (-1 for a TLS stream or a closed link)."""
        return self._sock.fileno() if self._sock is not None else -1


def _frame_end(data: memoryview, offset: int) -> int:
    """Where the server frame that ``offset`` falls in ends, walking ``data``'s
    unmasked frame headers (RFC 6455 §5.2) from its start; ``offset`` itself when
    it falls between two frames."""
    pos = 0
    n = len(data)
    while pos < offset and pos + 2 <= n:
        length = data[pos + 1] & 0x7F
        header = 2
        if length == 126:
            length, header = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            length, header = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
        pos += header + length
    return min(pos, n) if pos >= offset else n


def _tcp_info(sock: socket.socket | None) -> tuple[int, int] | None:
    """``tcpi_bytes_acked`` and ``tcpi_snd_wnd`` of ``sock`` (Linux 6.2 and later)."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512)
    except OSError:
        return None
    if len(info) < _TCP_INFO_LEN:
        return None
    return (
        struct.unpack_from("Q", info, _TCPI_BYTES_ACKED)[0],
        struct.unpack_from("I", info, _TCPI_SND_WND)[0],
    )


async def _linger(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    drained = 0
    while drained < LINGER_BYTES:
        try:
            n = sock.recv_into(_buffer)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError:
            return
        if n == 0:
            return
        drained += n
