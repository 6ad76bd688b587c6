"""The soak's dashboards in a process of their own, and the handle the soak drives them by.

A thousand dashboards reading 1.5 million deliveries a second fill the load
generator's core. In the same event loop as the AFAD recipients, the publishers
and the ``/health`` probes, that backlog was measured as theirs: an AFAD frame
that sat in the generator's socket buffer while the loop read dashboards counted
as gateway latency (docs/benchmarks.md, "Soak", run 3). So the dashboards run in
a child process (``python -m bench.soakcrowd CONFIG``, on the generator's core as
its parent) at a lower priority (``nice`` 10), so the parent, whose clients need
a fraction of the core, runs whenever it has something to do: the instruments
come before the load they measure.

The two talk in JSON lines: the parent writes a request to the child's stdin,
the child answers one line on stdout. Requests: ``stats`` (counters; with
``"latency": true`` also the dashboards' latency window, which starts afresh),
``let_idle_read`` (the non-readers read what their sockets hold: did the close
reach them?), ``losses`` (per-dashboard totals against the ``accepted`` count),
``close``. Latencies stay comparable across the two processes because
``time.perf_counter`` is the system-wide monotonic clock on Linux.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import trio

from .soakclients import ClassTotals, Dashboard, Progress, close_frame_code
from .wsclient import ConnectFailed, authenticate, frame, open_conn

__all__ = ["DashboardCrowd"]

perf = time.perf_counter
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: How often the parent refreshes its view of the counters (seconds).
REFRESH = 0.05
#: The period of the child's own lateness check (``_Child.watch_lag``).
LAG_TICK = 0.01


class _Lines:
    """JSON objects, one per line, from a stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectFailed("the dashboards' process ended")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message


class DashboardCrowd:
    """The parent's handle on the child: counters refreshed every ``REFRESH``
    seconds, requests answered in order."""

    def __init__(
        self, process: trio.Process, lines: _Lines, progress: Progress, ready: dict[str, Any]
    ) -> None:
        self.process = process
        self._lines = lines
        self.progress = progress
        self.count: int = ready["connected"]
        self.idle_count: int = ready["idle"]
        self.reading_count = self.count - self.idle_count
        self._lock = trio.Lock()
        self._calls = 0
        self.delivered = 0
        self.open = self.count
        self.reading_closed = 0
        #: The fewest events any reading dashboard that is still open has had (None: none open).
        self.min_open_reading: int | None = 0
        #: The same, counted since the last ``mark``.
        self.min_open_reading_since_mark: int | None = 0

    @classmethod
    async def start(
        cls,
        port: int,
        token: str,
        *,
        dashboards: int,
        idle: int,
        idle_rcvbuf: int | None,
        progress: Progress,
        nursery: trio.Nursery,
    ) -> DashboardCrowd:
        """Start the child, wait until it has connected everyone, keep the counters
        fresh from ``nursery``. Raises ``ConnectFailed``."""
        config = {
            "port": port, "token": token, "dashboards": dashboards, "idle": idle,
            "idle_rcvbuf": idle_rcvbuf,
        }  # fmt: skip
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.soakcrowd", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        lines = _Lines(process.stdout)
        try:
            with trio.fail_after(120):
                ready = await lines.next()
        except BaseException:
            process.kill()
            raise
        if ready.get("failed"):
            process.kill()
            raise ConnectFailed(
                f"{ready['failed']}/{dashboards} dashboards failed: {ready['failures'][0]}"
            )
        crowd = cls(process, lines, progress, ready)
        nursery.start_soon(crowd._refresh_loop)
        return crowd

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send ``request``, return its answer. A call cancelled while it waited
        leaves its answer in the pipe: answers carry their request's ``id``, and
        older ones are skipped."""
        assert self.process.stdin is not None
        async with self._lock:
            self._calls += 1
            request = {**request, "id": self._calls}
            await self.process.stdin.send_all(json.dumps(request).encode() + b"\n")
            while True:
                answer = await self._lines.next()
                if answer.get("id") == self._calls:
                    return answer

    def _note(self, stats: dict[str, Any]) -> None:
        moved = stats["delivered"] != self.delivered or stats["open"] != self.open
        self.delivered = stats["delivered"]
        self.open = stats["open"]
        self.reading_closed = stats["reading_closed"]
        self.min_open_reading = stats["min_open_reading"]
        self.min_open_reading_since_mark = stats["min_open_reading_since_mark"]
        if moved:
            self.progress.wake()

    async def _refresh_loop(self) -> None:
        while True:
            self._note(await self.call({"op": "stats"}))
            await trio.sleep(REFRESH)

    async def take_latency(self) -> dict[str, Any]:
        stats = await self.call({"op": "stats", "latency": True})
        self._note(stats)
        latency: dict[str, Any] = stats["latency"]
        return latency

    async def let_idle_read(self, limit: float) -> dict[str, Any]:
        return await self.call({"op": "let_idle_read", "limit": limit})

    async def mark(self) -> None:
        """Count from here in ``min_open_reading_since_mark``: a dashboard the gateway
        shed events for never gets them, and without a mark every later count of it
        falls short too (the capacity ramp's steps failed, one after the other, once
        one step had shed)."""
        self._note(await self.call({"op": "mark"}))

    async def losses(self, accepted: int) -> dict[str, Any]:
        return await self.call({"op": "losses", "accepted": accepted})

    def cpu_seconds(self) -> float:
        """The child's CPU time so far (0 once it is gone)."""
        try:
            with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def close(self) -> None:
        """Kill the child: its sockets close with it (the soak is over)."""
        if self.process.returncode is None:
            self.process.kill()


# -- the child -----------------------------------------------------------------------


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[str(value)] = out.get(str(value), 0) + 1
    return out


class _Child:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.totals = ClassTotals("DASHBOARD", Progress())
        self.dashboards: list[Dashboard] = []
        self.failures: list[str] = []
        self.marks: dict[int, int] = {}  # id(dashboard): what it had at the last mark
        self.lags: list[float] = []  # seconds late, each tick since the last window

    @property
    def reading(self) -> list[Dashboard]:
        return [d for d in self.dashboards if d.reading]

    @property
    def idle(self) -> list[Dashboard]:
        return [d for d in self.dashboards if not d.reading]

    async def connect(self, nursery: trio.Nursery) -> None:
        """Every dashboard, 100 at a time; the non-readers paused after ``auth_success``."""
        config = self.config
        limiter = trio.CapacityLimiter(100)

        async def one(i: int) -> None:
            reading = i >= config["idle"]
            async with limiter:
                try:
                    with trio.fail_after(60):
                        conn = await open_conn(
                            config["port"], nursery=nursery,
                            rcvbuf=None if reading else config["idle_rcvbuf"],
                        )  # fmt: skip
                        try:
                            await authenticate(conn, config["token"], "DASHBOARD")
                        except BaseException:
                            conn.abort()
                            raise
                except (ConnectFailed, OSError, trio.TooSlowError) as exc:
                    self.failures.append(str(exc) or type(exc).__name__)
                    return
            if not reading:
                conn.pause()
            self.dashboards.append(Dashboard(conn, self.totals, reading=reading, seed=i))

        async with trio.open_nursery() as setup:
            for i in range(config["dashboards"]):
                setup.start_soon(one, i)

    def mark(self) -> None:
        self.marks = {id(d): d.received for d in self.dashboards}

    def stats(self, latency: bool) -> dict[str, Any]:
        open_reading = [d for d in self.dashboards if d.reading and not d.conn.closed]
        since = [d.received - self.marks.get(id(d), 0) for d in open_reading]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {
            "delivered": self.totals.delivered,
            "open": sum(not d.conn.closed for d in self.dashboards),
            "reading_closed": sum(d.conn.closed for d in self.reading),
            "min_open_reading": min(d.received for d in open_reading) if open_reading else None,
            "min_open_reading_since_mark": min(since) if since else None,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
        if latency:
            lags, self.lags = sorted(self.lags), []
            out["latency"] = {
                **self.totals.latency.take(),
                # The 90th percentile, not the max: one collection of garbage or
                # one long stats call is not a process that cannot keep up.
                "reader_lag_ms": 1000 * lags[int(0.9 * len(lags))] if lags else 0.0,
                "reader_lag_max_ms": 1000 * lags[-1] if lags else 0.0,
            }
        return out

    async def watch_lag(self) -> None:
        """How late this process's event loop runs: a task that asks to wake every
        ``LAG_TICK`` and notes by how much it oversleeps (one note per round of the
        loop when it is busy: the notes are about its round times). A loop busy for 300 ms
        reads each dashboard at most every 300 ms: the gateway's writes then wait
        in the kernel's buffers for the harness, not for the gateway, and the
        dashboards' latencies measure this process (issue 19's soak at 1,137
        events/s: rounds of 100-350 ms here while catsock's stayed under 30 ms)."""
        while True:
            start = perf()
            await trio.sleep(LAG_TICK)
            self.lags.append(perf() - start - LAG_TICK)

    async def let_idle_read(self, limit: float) -> dict[str, Any]:
        idle = self.idle
        before = [d.received for d in idle]
        resumed = perf()
        for d in idle:
            d.conn.resume()
        deadline = perf() + limit
        last, moved = sum(d.received for d in idle), perf()
        answered: set[int] = set()
        while perf() < deadline and not all(d.conn.closed for d in idle):
            await trio.sleep(0.1)
            for i, d in enumerate(idle):
                # A close frame came: answer it, as a browser does, so the gateway
                # ends the connection now rather than at the end of its grace.
                code = None if d.conn.closed else close_frame_code(d.tail)
                if code is not None and i not in answered:
                    answered.add(i)
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await d.conn.send_raw(frame(code.to_bytes(2, "big"), 0x8))
            now = sum(d.received for d in idle)
            if now != last:
                last, moved = now, perf()
            elif perf() - moved > 2.0:
                break
        return {
            "count": len(idle),
            "closed": sum(d.conn.closed for d in idle),
            "saw_slow_consumer": sum(d.saw_slow_consumer for d in idle),
            "close_codes": _count(d.close_code for d in idle if d.conn.closed),
            "ended_by": _count(d.conn.ended_by or "open" for d in idle),
            "events_read_after": sum(d.received - b for d, b in zip(idle, before, strict=True)),
            "events_read": sum(d.received for d in idle),
            "resumed_at": resumed,
        }

    def losses(self, accepted: int) -> dict[str, Any]:
        reading = self.reading
        closed = [d for d in reading if d.conn.closed]
        return {
            "dashboards_reading": len(reading),
            "dashboard_expected": accepted * len(reading),
            "dashboard_delivered": sum(d.received for d in reading),
            "dashboard_missing": sum(max(0, accepted - d.received) for d in reading),
            "reading_dashboards_closed": len(closed),
            "reading_close_codes": _count(d.close_code for d in closed),
            "reading_saw_slow_consumer": sum(d.saw_slow_consumer for d in reading),
        }

    async def serve(self) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        stdout = trio.lowlevel.FdStream(os.dup(1))

        async def answer(message: dict[str, Any], to: Any = None) -> None:
            await stdout.send_all(json.dumps({**message, "id": to}).encode() + b"\n")

        async with trio.open_nursery() as nursery:
            await self.connect(nursery)
            nursery.start_soon(self.watch_lag)
            await answer(
                {
                    "connected": len(self.dashboards),
                    "idle": len(self.idle),
                    "failed": len(self.failures),
                    "failures": self.failures[:3],
                }
            )
            requests = _Lines(stdin)
            while True:
                try:
                    request = await requests.next()
                except ConnectFailed:  # the parent is gone
                    break
                op, to = request["op"], request.get("id")
                if op == "close":
                    break
                if op == "stats":
                    await answer(self.stats(bool(request.get("latency"))), to)
                elif op == "mark":
                    self.mark()
                    await answer(self.stats(False), to)
                elif op == "let_idle_read":
                    await answer(await self.let_idle_read(float(request["limit"])), to)
                elif op == "losses":
                    await answer(self.losses(int(request["accepted"])), to)
                else:
                    await answer({"error": f"unknown op {op!r}"}, to)
            for d in self.dashboards:
                d.conn.abort()
            nursery.cancel_scope.cancel()


#: How much lower the dashboards' process runs than the measuring one.
NICE = 10


def main() -> None:
    os.nice(NICE)
    trio.run(_Child(json.loads(sys.argv[1])).serve)


if __name__ == "__main__":
    main()
