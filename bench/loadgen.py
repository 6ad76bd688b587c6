"""The load generator: publishers, subscribers, loss and latency tracking, connection storms.

Everything runs in the harness's own trio process (pinned to its own CPU), one task
per connection. A published ``conversion`` carries ``"bench":"<publisher>:<seq>:<t>"``
in its payload, ``t`` being the generator's ``perf_counter`` when the message was
due (open loop) or sent (closed loop); a subscriber reads it back with one
``bytes.find`` — no JSON decode — to count the delivery, check the per-publisher
sequence (gaps and duplicates mean loss) and, when asked, record the latency.
"""

from __future__ import annotations

import itertools
import resource
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .wsclient import Conn, ConnectFailed, authenticate, frame, open_conn, sio_event

__all__ = [
    "Publisher",
    "Subscriber",
    "Target",
    "Tracker",
    "connect_many",
    "cpu_pressure_us",
    "generator_cpu_seconds",
    "open_client",
    "preflight",
    "run_closed_loop",
    "run_open_loop",
    "storm",
]

perf = time.perf_counter
#: Most messages one publisher writes in one ``send_all``.
MAX_BATCH = 500
#: The same in the open loop, kept small so a blocked write overruns the schedule little.
OPEN_LOOP_BATCH = 100
#: How long past its duration an open-loop publisher may go on catching up.
OPEN_LOOP_GRACE = 0.5
#: After publishing stops, give up waiting for deliveries once none came for this long
#: (and in any case after max(15 s, 3 x the step's duration)).
DRAIN_IDLE = 3.0

# The seed's example conversion (protocol.md §3.3), with a unique message_id and
# the benchmark's marker as an extra payload field (unknown fields are allowed).
_TEMPLATE = (
    '{{"version":"1.0","type":"conversion","timestamp":"2025-10-29T12:34:56Z",'
    '"message_id":"bench-{run}-{pid}-{seq}","sender":"CATS","payload":{{"pay_id":{seq},'
    '"access_id":67890,"adware_id":100,"adware_name":"商品A","owner_id":500,'
    '"owner_name":"アフィリエイターX","cost":1000,"sales":5000,"state":"PENDING",'
    '"tier_rewards":[{{"tier_level":1,"user_id":499,"user_name":"親アフィリエイター",'
    '"rate":10,"amount":100}}],"created_at":"2025-10-29T12:34:56Z",'
    '"bench":"{pid}:{seq}:{t:.6f}"}}}}'
)
_run_ids = itertools.count(1)
#: Each step's publishers are numbered from a base of their own, so an event of an
#: earlier step is recognised when it arrives again: catsock re-sends to a durable
#: identity (all AFAD subscribers share one) what its TCP had not confirmed when its
#: connections left (docs/delivery.md), and the next step's first subscriber of that
#: identity gets it.
_pid_bases = itertools.count(0, 1000)


def generator_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Target:
    """Where clients connect and what they say: port, socket.io or not, the two tokens."""

    port: int
    sio: bool
    cats_token: str
    afad_token: str


class Tracker:
    """Shared counters of one step: what was published, what arrived, latencies."""

    def __init__(self, publishers: int, record_latency: bool) -> None:
        self.publishers = publishers
        #: The first publisher number of this step (``_pid_bases``).
        self.base = next(_pid_bases)
        self.published = 0
        self.delivered = 0
        self.last_delivery = 0.0
        self.latencies: array[float] | None = array("d") if record_latency else None
        self.max_send_lag = 0.0
        self.lot = trio.lowlevel.ParkingLot()

    def wake(self) -> None:
        if len(self.lot):
            self.lot.unpark_all()

    async def wait_progress(self, limit: float) -> None:
        with trio.move_on_after(limit):
            await self.lot.park()


class Subscriber:
    """An AFAD connection that checks every conversion it receives."""

    __slots__ = (
        "base",
        "conn",
        "dups",
        "expect",
        "gaps",
        "other",
        "received",
        "replayed",
        "tracker",
    )

    def __init__(self, conn: Conn, tracker: Tracker) -> None:
        self.conn = conn
        self.tracker = tracker
        self.expect = [0] * tracker.publishers
        self.received = 0
        self.gaps = 0
        self.dups = 0
        self.other = 0
        self.replayed = 0
        self.base = tracker.base
        conn.handler = self.on_frame
        conn.notify = tracker.wake

    def on_frame(self, buf: bytes, start: int, end: int) -> None:
        i = buf.find(b'"bench":', start, end)
        if i < 0:
            self.other += 1
            return
        i = buf.find(b'"', i + 8, end) + 1
        j = buf.find(b'"', i, end)
        pid, seq, sent = buf[i:j].split(b":")
        p = int(pid) - self.base
        if not 0 <= p < len(self.expect):
            self.replayed += 1  # an earlier step's event, sent again (see _pid_bases)
            return
        s = int(seq)
        expected = self.expect[p]
        if s == expected:
            self.expect[p] = s + 1
        elif s > expected:
            self.gaps += s - expected
            self.expect[p] = s + 1
        else:
            self.dups += 1
        self.received += 1
        tracker = self.tracker
        tracker.delivered += 1
        now = self.conn.rx_time
        tracker.last_delivery = now
        if tracker.latencies is not None:
            tracker.latencies.append(now - float(sent))

    def complete(self, sent: list[int]) -> bool:
        return not self.gaps and not self.dups and self.expect == sent and not self.conn.closed


class Publisher:
    """A CATS connection that builds and writes batches of conversions."""

    def __init__(self, conn: Conn, pid: int) -> None:
        self.conn = conn
        self.pid = pid
        self.seq = 0
        self.run = next(_run_ids)

    def build(self, times: list[float]) -> bytes:
        out = []
        pid, run, seq = self.pid, self.run, self.seq
        sio = self.conn.sio
        for t in times:
            body = _TEMPLATE.format(run=run, pid=pid, seq=seq, t=t).encode()
            out.append(frame(sio_event("conversion", body) if sio else body))
            seq += 1
        self.seq = seq
        return b"".join(out)


async def open_client(target: Target, client_type: str, nursery: trio.Nursery) -> Conn:
    conn = await open_conn(target.port, sio=target.sio, nursery=nursery)
    token = target.cats_token if client_type == "CATS" else target.afad_token
    try:
        await authenticate(conn, token, client_type)
    except BaseException:
        conn.abort()
        raise
    return conn


async def connect_many(
    target: Target,
    count: int,
    client_type: str,
    nursery: trio.Nursery,
    *,
    concurrency: int = 200,
    setup_limit: float = 60.0,
) -> list[Conn]:
    """``count`` authenticated connections, at most ``concurrency`` setting up at once.
    Raises ``ConnectFailed`` (after closing the others) if any fails."""
    conns: list[Conn] = []
    failures: list[str] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            try:
                with trio.fail_after(setup_limit):
                    conns.append(await open_client(target, client_type, nursery))
            except (ConnectFailed, trio.TooSlowError, OSError) as exc:
                failures.append(str(exc) or type(exc).__name__)

    async with trio.open_nursery() as setup:
        for _ in range(count):
            setup.start_soon(one)
    if failures:
        for conn in conns:
            conn.abort()
        raise ConnectFailed(f"{len(failures)}/{count} {client_type} clients failed: {failures[0]}")
    return conns


async def preflight(target: Target) -> float:
    """One AFAD client: auth, ``ping`` → ``pong``. Returns the round trip in seconds."""
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            conn = await open_client(target, "AFAD", nursery)
            started = perf()
            if conn.sio:
                await conn.emit("ping", b'{"type":"ping"}')
            else:
                await conn.send_text(b'{"type":"ping"}')
            kind, _ = await conn.next_message()
            elapsed = perf() - started
        conn.abort()
    if kind != "pong":
        raise ConnectFailed(f"ping was answered with {kind!r}, not pong")
    return elapsed


@dataclass
class StepClients:
    publishers: list[Publisher]
    subscribers: list[Subscriber]
    tracker: Tracker

    def close(self) -> None:
        for p in self.publishers:
            p.conn.abort()
        for s in self.subscribers:
            s.conn.abort()


async def _setup(
    target: Target, publishers: int, subscribers: int, record_latency: bool, nursery: trio.Nursery
) -> StepClients:
    tracker = Tracker(publishers, record_latency)
    subs = await connect_many(target, subscribers, "AFAD", nursery)
    step = StepClients([], [Subscriber(c, tracker) for c in subs], tracker)
    try:
        pubs = await connect_many(target, publishers, "CATS", nursery)
    except BaseException:
        step.close()
        raise
    step.publishers = [Publisher(c, tracker.base + i) for i, c in enumerate(pubs)]
    return step


async def _drain(step: StepClients, idle_timeout: float, hard_timeout: float) -> None:
    """Wait until every subscriber has every message, or no progress for ``idle_timeout``."""
    tracker = step.tracker
    expected = tracker.published * len(step.subscribers)
    deadline = perf() + hard_timeout
    last, last_change = tracker.delivered, perf()
    while tracker.delivered < expected and perf() < deadline:
        await tracker.wait_progress(0.1)
        if tracker.delivered != last:
            last, last_change = tracker.delivered, perf()
        elif perf() - last_change > idle_timeout:
            break
        if all(s.conn.closed for s in step.subscribers):
            break


def _loss(step: StepClients) -> dict[str, Any]:
    sent = [p.seq for p in step.publishers]
    tracker = step.tracker
    expected = sum(sent) * len(step.subscribers)
    incomplete = sum(not s.complete(sent) for s in step.subscribers)
    # What the server said to the publishers (catsock answers a refused event with an
    # error naming its message_id): the first few, to explain a step that was not lossless.
    refusals = [
        str(body.get("payload", body) if isinstance(body, dict) else body)[:200]
        for p in step.publishers
        for kind, body in p.conn.inbox
        if kind == "error"
    ]
    return {
        "published": sum(sent),
        "publisher_errors": len(refusals),
        "publisher_error_samples": refusals[:3],
        "unexpected_frames": sum(s.other for s in step.subscribers),
        "replayed_from_earlier_steps": sum(s.replayed for s in step.subscribers),
        "expected_deliveries": expected,
        "delivered": tracker.delivered,
        "lost": max(0, expected - tracker.delivered),
        "gaps": sum(s.gaps for s in step.subscribers),
        "duplicates": sum(s.dups for s in step.subscribers),
        "subscribers_incomplete": incomplete,
        "subscribers_closed": sum(s.conn.closed for s in step.subscribers),
        "lossless": incomplete == 0 and expected > 0,
    }


CpuProbe = Callable[[], float]


def cpu_pressure_us() -> int | None:
    """Microseconds some runnable task waited for a CPU, machine-wide (Linux PSI)."""
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as f:
            first = f.readline().split()
    except OSError:
        return None
    for item in first:
        if item.startswith("total="):
            return int(item[6:])
    return None


@dataclass
class Window:
    """CPU and wall time over a measured interval, for the server and the generator,
    and how much of it anything on the machine waited for a CPU (noise from others)."""

    server_cpu: CpuProbe
    started: float = 0.0
    server0: float = 0.0
    gen0: float = 0.0
    pressure0: int | None = None
    result: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.started = perf()
        self.server0 = self.server_cpu()
        self.gen0 = generator_cpu_seconds()
        self.pressure0 = cpu_pressure_us()

    def stop(self) -> dict[str, float]:
        wall = max(perf() - self.started, 1e-9)
        self.result = {
            "wall_s": wall,
            "server_cpu_pct": 100 * (self.server_cpu() - self.server0) / wall,
            "generator_cpu_pct": 100 * (generator_cpu_seconds() - self.gen0) / wall,
        }
        pressure = cpu_pressure_us()
        if pressure is not None and self.pressure0 is not None:
            self.result["cpu_pressure_pct"] = (pressure - self.pressure0) / wall / 1e4
        return self.result


async def run_closed_loop(
    target: Target,
    *,
    publishers: int,
    subscribers: int,
    duration: float,
    server_cpu: CpuProbe,
    window: int | None = None,
) -> dict[str, Any]:
    """Saturation fan-out: publishers keep ``window`` messages in flight (a message
    counts as done once delivered to every subscriber, on average) for ``duration``."""
    if window is None:
        window = max(16, min(512, 20_000 // max(subscribers, 1)))
    async with trio.open_nursery() as nursery:
        step = await _setup(target, publishers, subscribers, False, nursery)
        tracker = step.tracker
        cpu = Window(server_cpu)
        try:
            cpu.start()
            first_send = perf()
            stop_at = first_send + duration

            async def publish(pub: Publisher) -> None:
                while perf() < stop_at and not pub.conn.closed:
                    outstanding = tracker.published - tracker.delivered // subscribers
                    room = window - outstanding
                    if room <= 0:
                        await tracker.wait_progress(0.05)
                        continue
                    n = min(room, MAX_BATCH)
                    data = pub.build([perf()] * n)
                    tracker.published += n
                    try:
                        await pub.conn.send_raw(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return

            async with trio.open_nursery() as senders:
                for pub in step.publishers:
                    senders.start_soon(publish, pub)
            await _drain(step, idle_timeout=DRAIN_IDLE, hard_timeout=max(15.0, 3 * duration))
            usage = cpu.stop()
            # From the first send to the last delivery; with nothing delivered (a server
            # that died), the whole step, so msgs/s is not published / 0.
            if tracker.last_delivery > first_send:
                elapsed = tracker.last_delivery - first_send
            else:
                elapsed = usage["wall_s"]
            result = _loss(step)
            result.update(
                {
                    "publishers": publishers,
                    "subscribers": subscribers,
                    "window": window,
                    "duration_s": elapsed,
                    "msgs_per_s": result["published"] / elapsed,
                    "deliveries_per_s": tracker.delivered / elapsed,
                    **usage,
                }
            )
        finally:
            step.close()
    return result


async def run_open_loop(
    target: Target,
    *,
    publishers: int,
    subscribers: int,
    rate: float,
    duration: float,
    server_cpu: CpuProbe,
) -> dict[str, Any]:
    """Fixed offered load: ``rate`` messages a second in all, each stamped with the time
    it was due (so a stalled server or generator shows as latency, not as a lower rate)."""
    async with trio.open_nursery() as nursery:
        step = await _setup(target, publishers, subscribers, True, nursery)
        tracker = step.tracker
        cpu = Window(server_cpu)
        per_pub = rate / publishers
        total = int(per_pub * duration)
        last_send = [0.0]
        try:
            cpu.start()
            t0 = perf() + 0.01

            stop_at = t0 + duration + OPEN_LOOP_GRACE

            async def publish(pub: Publisher, offset: float) -> None:
                # A server that cannot keep up pushes back through TCP: send_all blocks,
                # messages go out late (their latency counts from when they were due), and
                # at stop_at the rest of the schedule is abandoned and reported as unsent.
                start = t0 + offset
                interval = 1.0 / per_pub
                sent = 0
                while sent < total and not pub.conn.closed:
                    now = perf()
                    if now >= stop_at:
                        break
                    due = min(total, int((now - start) * per_pub) + 1) - sent
                    if due <= 0:
                        await trio.sleep(max(0.0, start + sent * interval - now))
                        continue
                    due = min(due, OPEN_LOOP_BATCH)
                    times = [start + (sent + k) * interval for k in range(due)]
                    tracker.max_send_lag = max(tracker.max_send_lag, now - times[0])
                    data = pub.build(times)
                    tracker.published += due
                    sent += due
                    try:
                        await pub.conn.send_raw(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    last_send[0] = perf()

            async with trio.open_nursery() as senders:
                for k, pub in enumerate(step.publishers):
                    senders.start_soon(publish, pub, k / rate)
            await _drain(step, idle_timeout=DRAIN_IDLE, hard_timeout=max(15.0, 3 * duration))
            usage = cpu.stop()
            result = _loss(step)
            latencies = tracker.latencies if tracker.latencies is not None else array("d")
            send_span = max(last_send[0] - t0, duration)
            result.update(
                {
                    "publishers": publishers,
                    "subscribers": subscribers,
                    "offered_msgs_per_s": rate,
                    "unsent": total * publishers - result["published"],
                    "achieved_msgs_per_s": result["published"] / send_span,
                    "deliveries_per_s": tracker.delivered / max(tracker.last_delivery - t0, 1e-9),
                    "max_send_lag_ms": 1000 * tracker.max_send_lag,
                    **_percentiles(latencies),
                    **usage,
                }
            )
        finally:
            step.close()
    return result


def _percentiles(latencies: array[float]) -> dict[str, Any]:
    import numpy as np

    if not latencies:
        return {"samples": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    ms = np.frombuffer(latencies, dtype=np.float64) * 1000.0
    levels = np.linspace(0, 100, 201)
    # Dense near the tail, for the CDF plot: 0..99 by 0.5, then 99..99.99.
    tail = 100 - np.logspace(0, -2, 41)
    quantiles = np.percentile(ms, np.concatenate([levels[levels < 99], tail, [100.0]]))
    points = np.concatenate([levels[levels < 99], tail, [100.0]])
    return {
        "samples": int(ms.size),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "p999_ms": float(np.percentile(ms, 99.9)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "cdf": [
            [round(float(q), 4), round(float(p), 3)] for q, p in zip(quantiles, points, strict=True)
        ],
    }


async def storm(
    target: Target,
    *,
    clients: int,
    wave: int | None,
    per_client_limit: float,
    server_cpu: CpuProbe,
    after: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """``clients`` connect and authenticate — all at once, or ``wave`` at a time — each
    timed from ``connect()`` to ``auth_success``. ``after`` runs while they are all open."""
    times: list[float] = []
    failures: Counter[str] = Counter()
    conns: list[Conn] = []
    extra: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            started = perf()
            try:
                with trio.fail_after(per_client_limit):
                    conn = await open_conn(target.port, sio=target.sio, nursery=nursery)
                    conns.append(conn)
                    await authenticate(conn, target.afad_token, "AFAD")
                times.append(perf() - started)
            except trio.TooSlowError:
                failures["timeout"] += 1
            except (ConnectFailed, OSError) as exc:
                failures[(str(exc) or type(exc).__name__)[:100]] += 1

        cpu = Window(server_cpu)
        try:
            cpu.start()
            started = perf()
            size = wave or clients
            for first in range(0, clients, size):
                async with trio.open_nursery() as batch:
                    for _ in range(min(size, clients - first)):
                        batch.start_soon(one)
            elapsed = perf() - started
            usage = cpu.stop()
            if after is not None:
                extra = await after()
        finally:
            for conn in conns:
                conn.abort()
    import numpy as np

    ms = np.array(times) * 1000.0 if times else np.array([0.0])
    return {
        "clients": clients,
        "wave": wave,
        "ok": len(times),
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "elapsed_s": elapsed,
        "connections_per_s": len(times) / elapsed if elapsed > 0 else 0.0,
        "setup_p50_ms": float(np.percentile(ms, 50)),
        "setup_p99_ms": float(np.percentile(ms, 99)),
        "setup_max_ms": float(ms.max()),
        **usage,
        **extra,
    }
