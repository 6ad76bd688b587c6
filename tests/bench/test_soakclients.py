"""The soak's client-side bookkeeping (bench/soakclients.py, and the crowd's counts in
bench/soakcrowd.py), fed bytes by hand."""

from __future__ import annotations

import time
from array import array
from typing import Any

import pytest
import trio

from bench.soakclients import (
    Afad,
    ClassTotals,
    Dashboard,
    LatencyWindow,
    Progress,
    close_frame_code,
    weighted_percentiles,
)
from bench.soakcrowd import _Child


class FakeConn:
    """What the recipients use of ``wsclient.Conn``."""

    def __init__(self) -> None:
        self.rx_time = 100.0
        self.closed = False
        self.ended_by = ""
        self.handler: Any = None
        self.notify: Any = None
        self.raw: Any = None


def server_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    assert len(payload) < 126
    return bytes((0x80 | opcode, len(payload))) + payload


def event(pid: int, seq: int, sent: float) -> bytes:
    return (
        b'{"type":"conversion","payload":{"pay_id":1,"bench":"'
        + f"{pid}:{seq}:{sent:.6f}".encode()
        + b'"}}'
    )


def dashboard() -> tuple[Dashboard, FakeConn, ClassTotals]:
    conn = FakeConn()
    totals = ClassTotals("DASHBOARD", Progress())
    return Dashboard(conn, totals, reading=True, seed=1), conn, totals  # type: ignore[arg-type]


def test_dashboard_counts_markers_across_read_boundaries() -> None:
    d, _, totals = dashboard()
    stream = b"".join(server_frame(event(0, s, 99.5)) for s in range(5))
    second = stream.index(b'"bench":"', stream.index(b'"bench":"') + 1)
    cut = second + 4  # inside the second marker
    d.on_data(stream[:cut])
    d.on_data(stream[cut:])
    assert d.received == totals.delivered == 5
    latency = totals.latency.take()
    assert latency["samples"] == 2
    assert latency["p50_ms"] == pytest.approx(500.0)


def test_dashboard_sees_the_slow_consumer_error_and_the_close_code() -> None:
    d, conn, _ = dashboard()
    error = server_frame(b'{"type":"error","payload":{"error_code":"SLOW_CONSUMER"}}')
    close = server_frame((4001).to_bytes(2, "big") + b"SLOW_CONSUMER", 0x8)
    data = server_frame(event(0, 0, 99.0)) + error + close
    d.on_data(data[:70])
    d.on_data(data[70:])
    assert d.saw_slow_consumer
    assert d.close_code is None  # still open
    conn.closed = True
    d.on_end()
    assert d.close_code == 4001
    assert d.closed_at is not None


def test_the_crowd_counts_each_dashboard_from_the_mark() -> None:
    """A dashboard that missed events (the gateway shed them) stays behind for good;
    counted from the mark, it has everything sent since (the capacity ramp's steps
    once all failed after the first one that shed)."""
    child = _Child({})
    (behind, _, _), (ahead, _, _) = dashboard(), dashboard()
    child.dashboards = [behind, ahead]
    behind.on_data(server_frame(event(0, 0, 99.0)))
    ahead.on_data(b"".join(server_frame(event(0, s, 99.0)) for s in range(3)))
    assert child.stats(False)["min_open_reading"] == 1
    child.mark()
    for d in child.dashboards:
        d.on_data(b"".join(server_frame(event(0, s, 99.0)) for s in range(3, 5)))
    stats = child.stats(False)
    assert (stats["min_open_reading"], stats["min_open_reading_since_mark"]) == (3, 2)


async def test_the_crowd_notes_how_late_its_own_loop_ran() -> None:
    """A loop held up for 50 ms (as 300 dashboards' reads in one round hold it) shows
    in the next latency window; the window after starts afresh."""
    child = _Child({})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(child.watch_lag)
        await trio.sleep(0.02)
        time.sleep(0.05)  # noqa: ASYNC251 -- the point: the whole loop blocked
        await trio.sleep(0.02)
        first = child.stats(True)["latency"]
        nursery.cancel_scope.cancel()
    assert first["reader_lag_max_ms"] >= 40
    assert child.stats(True)["latency"]["reader_lag_max_ms"] == 0


def test_the_reader_lag_is_judged_by_its_90th_percentile() -> None:
    """One late round (a garbage collection, a long stats call) shows in the max
    only; late rounds one in five show in the 90th percentile."""
    child = _Child({})
    child.lags = [0.001] * 19 + [0.3]
    once = child.stats(True)["latency"]
    child.lags = [0.001, 0.001, 0.001, 0.001, 0.2] * 4
    often = child.stats(True)["latency"]
    assert (once["reader_lag_ms"], once["reader_lag_max_ms"]) == (1.0, 300.0)
    assert often["reader_lag_ms"] == 200.0


def test_close_frame_code() -> None:
    assert close_frame_code(b"xx" + server_frame(b"\x03\xe9", 0x8)) == 1001
    assert close_frame_code(b"xx" + server_frame(b"", 0x8)) == 1005
    assert close_frame_code(server_frame(b"no close here")) is None


def test_afad_counts_gaps_duplicates_and_latency() -> None:
    conn = FakeConn()
    totals = ClassTotals("AFAD", Progress())
    afad = Afad(conn, totals, publishers=2)  # type: ignore[arg-type]
    for pid, seq in ((0, 0), (0, 1), (1, 0), (0, 4), (0, 4), (1, 1)):
        payload = event(pid, seq, 99.9)
        afad.on_frame(payload, 0, len(payload))
    afad.on_frame(b'{"type":"pong"}', 0, 15)
    assert afad.received == totals.delivered == 6
    assert afad.gaps == [(0, 2, 3)]
    assert afad.dups == 1
    assert afad.other == 1
    assert afad.expect == [5, 2]
    assert totals.latency.take()["max_ms"] == pytest.approx(100.0)


def test_weighted_percentiles_weigh_by_frames() -> None:
    values = array("d", [1.0, 2.0, 3.0])
    assert weighted_percentiles(values, array("d", [1, 1, 1]), (0.5,)) == [2.0]
    assert weighted_percentiles(values, array("d", [1, 1, 8]), (0.5, 0.99)) == [3.0, 3.0]
    assert weighted_percentiles(values, array("d", [8, 1, 1]), (0.5,)) == [1.0]


def test_latency_window_starts_afresh() -> None:
    window = LatencyWindow()
    assert window.take() == {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    window.add(0.010, 3)
    window.add(0.020)
    window.peak = 0.5  # a dashboard's oldest frame, beyond the sampled ones
    taken = window.take()
    assert taken["samples"] == 2
    assert taken["p50_ms"] == pytest.approx(10.0)
    assert taken["max_ms"] == pytest.approx(500.0)
    assert window.take()["samples"] == 0
