"""TakenIn (catsock/takenin.py): what a client without acks counts as having taken in."""

from __future__ import annotations

from catsock.takenin import TakenIn


def test_acknowledged_with_nothing_unread_and_held_counts() -> None:
    taken = TakenIn(hold=1.0)
    taken.written(100, seq=5, events=5)
    taken.written(250, seq=9, events=4)
    assert taken.check(0.0, sent=250, progress=(100, 6000)) is None  # taken, not held yet
    assert taken.check(0.9, sent=250, progress=(250, 6000)) is None
    assert taken.check(1.0, sent=250, progress=(250, 6000)) == 5
    assert taken.events == 4
    assert taken.check(2.0, sent=250, progress=(250, 6000)) == 9
    assert not taken


def test_unread_bytes_in_the_peer_hold_back_what_they_cover() -> None:
    taken = TakenIn(hold=0.0)
    taken.written(1000, seq=1, events=1)
    taken.written(2000, seq=2, events=1)
    assert taken.check(0.0, sent=2000, progress=(2000, 8000)) == 2  # the widest so far
    taken.written(3000, seq=3, events=1)
    taken.written(4000, seq=4, events=1)
    # All acknowledged, but the window is 500 below its widest: that much is unread,
    # so the write ending at 4,000 is not taken in yet, the one ending at 3,000 is.
    assert taken.check(1.0, sent=4000, progress=(4000, 7500)) == 3
    assert taken.check(2.0, sent=4000, progress=(4000, 8000)) == 4


def test_unacknowledged_bytes_never_count() -> None:
    taken = TakenIn(hold=0.0)
    taken.written(500, seq=7, events=3)
    assert taken.check(100.0, sent=500, progress=(499, 8000)) is None
    assert taken.events == 3


def test_without_tcp_state_time_since_the_write_decides() -> None:
    taken = TakenIn(hold=2.0)
    taken.written(500, seq=7, events=3)
    assert taken.check(0.0, sent=500, progress=None) is None
    assert taken.check(2.0, sent=500, progress=None) == 7
