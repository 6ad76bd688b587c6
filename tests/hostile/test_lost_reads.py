"""What the canary found: bytes read from a socket are dropped when the reader's
deadline fires just after the read.

``Session._read`` waits for data under ``move_on_at(self.deadline())``; the
deadline is the auth deadline, the heartbeat, and (since ac3bcca) the 50 ms
confirmation timer of every durable recipient without acks, so a CATS or AFAD
connection's reader has one most of the time. ``Link.receive`` reads the socket
and then checkpoints before returning the bytes: when the deadline has passed
by then, the checkpoint raises ``Cancelled`` and the bytes, already taken out
of the kernel, are lost. End to end the canary saw it as events the gateway
never decoded (not in the event log, no error, the connection open): in the
slow-dashboard attacks of test_delivery_attacks.py, 1 to 4 of 24 canary events
in about one run of ten (measured at d7173bc, 40 runs). Fixed: the checkpoint after
a read is a yield that a cancellation cannot interrupt.
"""

from __future__ import annotations

import socket

import trio

from catsock.transport.link import Link


async def test_bytes_read_when_the_readers_deadline_fires_are_not_lost() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(False)
        link = Link(ours, None, b"")
        peer.send(b"first")
        got: list[bytes] = []
        with trio.move_on_at(trio.current_time()):  # the deadline has just passed
            got.append(await link.receive())
        peer.send(b"second")
        with trio.fail_after(5):
            while not b"".join(got).endswith(b"second"):
                got.append(await link.receive())
    assert b"".join(got) == b"firstsecond"
