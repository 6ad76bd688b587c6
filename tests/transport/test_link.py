"""The link (catsock/transport/link.py) on a real socket pair with small buffers."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from catsock.transport.frames import CLOSE, TEXT, close_frame, frame
from catsock.transport.link import PENDING, SENT, Link


async def _read_all(sock: socket.socket, until: trio.Event) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            if until.is_set():
                return bytes(data)
            with trio.move_on_after(0.05):
                await trio.lowlevel.wait_readable(sock)
            continue
        if not chunk:
            return bytes(data)
        data += chunk


def small_pair() -> tuple[socket.socket, socket.socket]:
    """A connected, non-blocking socket pair whose buffers fill after a few KiB."""
    ours, peer = socket.socketpair()
    for sock in (ours, peer):
        sock.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return ours, peer


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        head = 2
        if n == 126:
            n, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        out.append((opcode, data[pos + head : pos + head + n]))
        pos += head + n
    assert pos == len(data), "ends inside a frame"
    return out


async def test_a_write_cut_short_ends_at_the_frame_in_progress_then_the_close_follows() -> None:
    ours, peer = small_pair()
    frames = [frame(TEXT, bytes([65 + i]) * 3000) for i in range(40)]
    link = Link(ours, None, b"")
    drained, closed = trio.Event(), trio.Event()
    link.on_drained = drained.set
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            link.start(nursery)
            assert link.send(b"".join(frames)) == PENDING  # far more than the buffers hold
            assert link.cut_after_frame() > 0
            got: list[bytes] = []

            async def read() -> None:
                got.append(await _read_all(peer, closed))

            nursery.start_soon(read)  # the peer reads while the link drains the rest
            await drained.wait()
            assert link.send(close_frame(4001, "SLOW_CONSUMER")) == SENT
            closed.set()
    received = _frames(got[0])
    *events, last = received
    assert last == (CLOSE, b"\x0f\xa1SLOW_CONSUMER")
    # Whole frames, the first ones of the write, and fewer than all of them.
    assert 0 < len(events) < len(frames)
    assert [frame(TEXT, payload) for _, payload in events] == frames[: len(events)]
    ours.close()
    peer.close()


async def test_a_paced_write_goes_on_only_when_its_owner_resumes_it() -> None:
    ours, peer = small_pair()
    data = b"".join(frame(TEXT, bytes([65 + i % 26]) * 3000) for i in range(40))
    link = Link(ours, None, b"")
    writable = trio.Event()
    link.on_writable = writable.set
    link.on_drained = lambda: pytest.fail("a paced write has no drain task")
    got = bytearray()

    def read_what_is_there() -> None:
        while True:
            try:
                chunk = peer.recv(65536)
            except BlockingIOError:
                return
            got.extend(chunk)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            link.start(nursery)
            assert link.send(data, paced=True) == PENDING
            sent = link.sent
            assert 0 < sent < len(data)
            assert link.resume() == PENDING  # the kernel has no room yet: still waiting
            read_what_is_there()
            await writable.wait()
            # Room came, and nothing was written for it: the owner decides when.
            await trio.testing.wait_all_tasks_blocked()
            assert link.sent == sent
            assert link.busy
            while True:
                writable = trio.Event()
                link.on_writable = writable.set
                result = link.resume()
                if result == SENT:
                    break
                assert result == PENDING
                read_what_is_there()
                await writable.wait()
            assert not link.busy
            assert link.sent == len(data)
            read_what_is_there()
    assert bytes(got) == data
    ours.close()
    peer.close()
