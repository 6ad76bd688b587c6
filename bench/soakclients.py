"""The soak's clients: durable recipients that check every event, dashboards that
count, publishers that keep a schedule, and the per-window latency buffers.

- ``Afad`` parses every frame (like ``loadgen.Subscriber``): per-publisher order,
  gaps, duplicates, and the latency of every delivery.
- ``Dashboard`` parses no frames: a thousand of them would cost the generator
  more than the server. Each read is handed over whole (``Conn.raw``); the
  marker is counted with ``bytes.count`` (deliveries), and the latency of one
  frame per read, chosen at a random offset, is kept with the read's frame
  count as its weight, plus the oldest frame of the read for the window's
  maximum. The tail of the stream tells how it ended: the ``SLOW_CONSUMER``
  error and the close frame (code) if they arrived.
- ``SoakPublisher`` negotiates ``acks`` and counts ``accepted`` and refusals;
  each event carries the time it was *written* (latency is publish → deliver;
  how far the publisher fell behind its schedule is kept apart, as lag). With a
  ``window`` it writes no more than that many events ahead of the answers, as a
  client with acks does; without one it writes on whatever the gateway reads.
"""

from __future__ import annotations

import random
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from .loadgen import Publisher
from .wsclient import Conn

__all__ = [
    "Afad",
    "ClassTotals",
    "Dashboard",
    "LatencyWindow",
    "Progress",
    "SoakPublisher",
    "close_frame_code",
    "weighted_percentiles",
]

perf = time.perf_counter
MARKER = b'"bench":"'
_SLOW = b'"SLOW_CONSUMER"'
#: Bytes of a stream kept to read its close frame (2 + 125 at most) at the end.
TAIL = 160


def weighted_percentiles(
    values: array[float], weights: array[float], quantiles: tuple[float, ...]
) -> list[float]:
    """The smallest value whose cumulative weight reaches each quantile (0..1)."""
    import numpy as np

    v = np.frombuffer(values, dtype=np.float64)
    w = np.frombuffer(weights, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    cumulative = np.cumsum(w[order])
    total = cumulative[-1]
    out = []
    for q in quantiles:
        index = int(np.searchsorted(cumulative, q * total, side="left"))
        out.append(float(v[order[min(index, len(v) - 1)]]))
    return out


class LatencyWindow:
    """Latencies (seconds) of one class since the last ``take``, weighted."""

    __slots__ = ("peak", "values", "weights")

    def __init__(self) -> None:
        self.values: array[float] = array("d")
        self.weights: array[float] = array("d")
        self.peak = 0.0

    def add(self, seconds: float, weight: float = 1.0) -> None:
        self.values.append(seconds)
        self.weights.append(weight)
        if seconds > self.peak:
            self.peak = seconds

    def take(self) -> dict[str, float | int | None]:
        """p50, p99 and max in ms (None without samples), then start afresh."""
        values, weights, peak = self.values, self.weights, self.peak
        self.values, self.weights, self.peak = array("d"), array("d"), 0.0
        if not values:
            return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        p50, p99 = weighted_percentiles(values, weights, (0.5, 0.99))
        return {
            "samples": len(values),
            "p50_ms": 1000 * p50,
            "p99_ms": 1000 * p99,
            "max_ms": 1000 * max(peak, p99),
        }


class Progress:
    """Wakes whoever waits for deliveries (the closed loop, the drain)."""

    def __init__(self) -> None:
        self.lot = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        if len(self.lot):
            self.lot.unpark_all()

    async def wait(self, limit: float) -> None:
        with trio.move_on_after(limit):
            await self.lot.park()


@dataclass
class ClassTotals:
    """What one class of recipients (AFAD, dashboards) received, all together."""

    name: str
    progress: Progress
    delivered: int = 0
    latency: LatencyWindow = field(default_factory=LatencyWindow)


class Afad:
    """A durable recipient: every frame checked, every latency kept."""

    __slots__ = ("conn", "dups", "expect", "gaps", "other", "received", "reorders", "totals")

    def __init__(self, conn: Conn, totals: ClassTotals, publishers: int) -> None:
        self.conn = conn
        self.totals = totals
        self.expect = [0] * publishers
        #: (publisher, first, last) of every range of seqs skipped.
        self.gaps: list[tuple[int, int, int]] = []
        self.dups = 0
        self.reorders = 0
        self.received = 0
        self.other = 0
        conn.handler = self.on_frame
        conn.notify = totals.progress.wake

    def on_frame(self, buf: bytes, start: int, end: int) -> None:
        i = buf.find(MARKER, start, end)
        if i < 0:
            self.other += 1
            return
        i += len(MARKER)
        j = buf.find(b'"', i, end)
        pid, seq, sent = buf[i:j].split(b":")
        p = int(pid)
        if not 0 <= p < len(self.expect):
            self.other += 1
            return
        s = int(seq)
        expected = self.expect[p]
        if s == expected:
            self.expect[p] = s + 1
        elif s > expected:
            self.gaps.append((p, expected, s - 1))
            self.expect[p] = s + 1
        elif s < expected:
            self.dups += 1  # seen before (or out of order: either breaks "exactly once, in order")
        self.received += 1
        totals = self.totals
        totals.delivered += 1
        totals.latency.add(self.conn.rx_time - float(sent))


def close_frame_code(tail: bytes) -> int | None:
    """The status code of a close frame that ends ``tail`` (server frames are unmasked:
    0x88, a length under 126, two code bytes and the reason), or None."""
    n = len(tail)
    for k in range(n - 2, -1, -1):
        if tail[k] == 0x88 and tail[k + 1] == n - k - 2:
            if n - k - 2 >= 2:
                return int.from_bytes(tail[k + 2 : k + 4], "big")
            return 1005  # a close frame without a code (RFC 6455 §7.1.5)
    return None


class Dashboard:
    """A live-only recipient that counts what it gets without parsing frames."""

    __slots__ = (
        "closed_at",
        "conn",
        "reading",
        "received",
        "rng",
        "saw_slow_consumer",
        "tail",
        "totals",
    )

    def __init__(self, conn: Conn, totals: ClassTotals, *, reading: bool, seed: int) -> None:
        self.conn = conn
        self.totals = totals
        self.reading = reading
        self.received = 0
        self.saw_slow_consumer = False
        self.closed_at: float | None = None
        self.tail = b""
        self.rng = random.Random(seed)
        conn.raw = self.on_data
        conn.notify = self.on_end  # with ``raw`` set, called only when reading ends

    def on_data(self, data: bytes) -> None:
        tail = self.tail
        n = data.count(MARKER)
        if tail:  # a marker cut in two by the previous read's end
            n += (tail[-(len(MARKER) - 1) :] + data[: len(MARKER) - 1]).count(MARKER)
        if n:
            self.received += n
            totals = self.totals
            totals.delivered += n
            now = self.conn.rx_time
            first = data.find(MARKER)
            picked = data.find(MARKER, self.rng.randrange(len(data)))
            sample = _stamp(data, picked if picked >= 0 else first)
            if sample is not None:
                totals.latency.add(now - sample, n)
            oldest = _stamp(data, first)
            if oldest is not None and now - oldest > totals.latency.peak:
                totals.latency.peak = now - oldest
            totals.progress.wake()
        if not self.saw_slow_consumer and (
            _SLOW in data or _SLOW in tail[-(len(_SLOW) - 1) :] + data[: len(_SLOW) - 1]
        ):
            self.saw_slow_consumer = True
        self.tail = (tail + data)[-TAIL:] if len(data) < TAIL else data[-TAIL:]

    def on_end(self) -> None:
        if self.conn.closed and self.closed_at is None:
            self.closed_at = perf()

    @property
    def close_code(self) -> int | None:
        return close_frame_code(self.tail) if self.conn.closed else None


def _stamp(buf: bytes, i: int) -> float | None:
    """The write time in the marker at ``i`` (None if the read cut it off)."""
    if i < 0:
        return None
    i += len(MARKER)
    j = buf.find(b'"', i)
    if j < 0:
        return None
    parts = buf[i:j].split(b":")
    if len(parts) != 3:
        return None
    try:
        return float(parts[2])
    except ValueError:
        return None


class SoakPublisher(Publisher):
    """A CATS connection with ``acks``: it counts what it wrote, what was accepted and
    refused, and how far it fell behind the schedule it was given."""

    def __init__(self, conn: Conn, pid: int, progress: Progress, *, window: int = 0) -> None:
        super().__init__(conn, pid)
        self.progress = progress
        #: Events written and not answered yet, at most (0: no bound, open loop).
        self.window = window
        self.accepted = 0
        self.duplicates = 0
        self.refused: set[int] = set()
        self.error_samples: list[str] = []
        self.max_lag = 0.0  # seconds; reset by whoever reads it per window
        #: The schedule being kept (``run_schedule``), and ``seq`` when it began.
        self.rate = 0.0
        self.start = self.stop = 0.0
        self.base = 0
        #: Events schedules had due that were never written (given up at their stop).
        self.unsent = 0
        conn.handler = self.on_frame

    @property
    def answered(self) -> int:
        return self.accepted + len(self.refused)

    def on_frame(self, buf: bytes, start: int, end: int) -> None:
        if buf.find(b'"accepted"', start, min(end, start + 40)) >= 0:
            self.accepted += 1
            if buf.find(b'"duplicate":true', start, end) >= 0:
                self.duplicates += 1
            self.progress.wake()
            return
        try:
            message: Any = orjson.loads(buf[start:end])
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, dict) or message.get("type") != "error":
            return
        payload = message.get("payload") or {}
        if len(self.error_samples) < 5:
            self.error_samples.append(str(payload)[:200])
        message_id = str(payload.get("message_id", ""))
        tail = message_id.rsplit("-", 1)[-1]
        if message_id.startswith("bench-") and tail.isdigit():
            self.refused.add(int(tail))
        self.progress.wake()

    async def send_now(self, n: int) -> bool:
        """Write ``n`` events stamped with now; False once the connection is gone."""
        data = self.build([perf()] * n)
        try:
            await self.conn.send_raw(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def behind(self, now: float) -> int:
        """Events of the current schedule due by ``now`` and not written yet."""
        if self.rate <= 0 or now < self.start:
            return 0
        due = int((min(now, self.stop) - self.start) * self.rate)
        return max(0, due - (self.seq - self.base))

    async def run_schedule(self, rate: float, start: float, stop: float, batch: int = 100) -> None:
        """Open loop: ``rate`` events a second from ``start`` until ``stop``. Events
        that fall due while a write is blocked go out late (their lag is kept) and,
        at ``stop``, whatever is still due is abandoned (``unsent``)."""
        self.rate, self.start, self.stop, self.base = rate, start, stop, self.seq
        interval = 1.0 / rate
        while not self.conn.closed:
            now = perf()
            if now >= stop:
                break
            written = self.seq - self.base
            n = min(int((now - start) * rate) + 1 - written, batch)
            if n <= 0:
                await trio.sleep(max(0.0, start + written * interval - now))
                continue
            if self.window:
                n = min(n, self.window - (self.seq - self.answered))
                if n <= 0:  # the window is full: wait for answers, falling behind
                    await self.progress.wait(0.05)
                    continue
            lag = now - (start + written * interval)
            if lag > self.max_lag:
                self.max_lag = lag
            if not await self.send_now(n):
                break
        self.unsent += max(0, int((stop - start) * rate) - (self.seq - self.base))
