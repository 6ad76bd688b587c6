"""The soak scenario (issue 19): catsock under a sustained load, sampled over time.

One catsock, started fresh for each step, with ``SoakPlan.dashboards`` DASHBOARD
connections (``idle_dashboards`` of them never read), ``afad`` durable AFAD
recipients (one identity each) and ``publishers`` CATS publishers with ``acks``.
By catsock's default routes every conversion goes to ``type:AFAD`` and
``type:DASHBOARD``, so each event is one delivery per connection.

``measure_capacity`` ramps an open-loop rate up with those recipients until a step
fails (publishers pushed back, events still missing ``capacity_settle`` seconds
after the step, a reading dashboard cut off, a p99 over ``capacity_p99_ms``, or
the dashboards' own process running over ``capacity_reader_lag_ms`` late: with
two cores, past that the harness cannot read what it would measure); the
capacity is the highest rate that passed. ``run_level`` then offers ``load``
times that rate, open loop, for ``duration`` seconds, and samples every
``window`` seconds: offered, written, accepted, per-class deliveries and latency
percentiles, server RSS (its peak, from a sample every 0.5 s) and CPU, the
generator's CPU, everyone else's (noise), ``GET /health`` and ``GET /metrics``
times (``probe_limit`` timeout) and every ``catsock_`` series of the last
``/metrics`` answer. Once catsock counts the non-reading dashboards as shed (or
after the drain), they read what their sockets hold, to see whether the
``SLOW_CONSUMER`` error and the 4001 close reached them. After the drain the
harness reads close codes and AFAD cursors from the database.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from . import httpprobe
from .loadgen import cpu_pressure_us, generator_cpu_seconds
from .soakclients import Afad, ClassTotals, Progress, SoakPublisher
from .soakcrowd import DashboardCrowd
from .soakreport import metric
from .wsclient import Conn, authenticate, open_conn

__all__ = ["Crowd", "SoakPlan", "SoakTokens", "measure_capacity", "run_level"]

perf = time.perf_counter
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: RSS is read this often, so a window's peak is not missed between two rows.
RSS_EVERY = 0.5


@dataclass
class SoakPlan:
    dashboards: int = 1000
    idle_dashboards: int = 10
    afad: int = 10
    publishers: int = 2
    #: Multiples of the measured capacity, one step each.
    loads: list[float] = field(default_factory=lambda: [1.0, 2.0])
    duration: float = 600.0
    #: Seconds per row of the time series.
    window: float = 10.0
    probe_every: float = 2.0
    probe_limit: float = 5.0
    #: The capacity ramp (``measure_capacity``): first rate, factor per step, seconds
    #: per step, seconds for the rest to arrive after it, the p99 both classes must
    #: stay under, and one more step between the last pass and the first failure.
    capacity_start: float = 50.0
    capacity_factor: float = 1.25
    capacity_step: float = 5.0
    capacity_settle: float = 1.0
    capacity_p99_ms: float = 1000.0
    #: A step also fails when the dashboards' process ran this late at its 90th
    #: percentile (``reader_lag_ms``, bench/soakcrowd.py): past it the harness, not
    #: the gateway, is what falls behind, and a rate it cannot read is not one it
    #: can measure. 100 ms: twice catsock's pacer interval; at 180 ms the harness's
    #: own delay was most of what the dashboards' p50 measured (docs/benchmarks.md,
    #: run 12).
    capacity_reader_lag_ms: float = 100.0
    capacity_refine: bool = True
    #: Seconds the rate found is then held (stepping down until a hold passes);
    #: 0: no hold.
    capacity_hold: float = 30.0
    capacity_max: float = 100_000.0
    #: Events a publisher may have written and not had answered (``accepted`` or an
    #: error) before it waits: the bounded window of a publisher that must know
    #: (catsock.client's ``max_in_flight``). 0: open loop, like the seed's PHP
    #: client, which writes on whatever the gateway has read.
    publisher_window: int = 100
    #: Given: skip the capacity ramp and use this many events/s as 1×.
    capacity: float | None = None
    drain_limit: float = 300.0
    drain_idle: float = 10.0
    #: The non-reading dashboards read again this long after catsock counted them all
    #: shed (4001 closes in /metrics), or after the drain if it never did; then they
    #: get ``idle_read_limit`` seconds to read what their sockets hold.
    idle_resume_after: float = 10.0
    idle_read_limit: float = 10.0
    #: ``SO_RCVBUF`` of the non-reading dashboards (None: the kernel's default, which
    #: on loopback here let one hold about 19 MB unread: 38,000 events before catsock
    #: even saw a full socket). 64 KiB, so that they fill, and are shed, within a level.
    idle_rcvbuf: int | None = 64 * 1024

    @classmethod
    def quick(cls) -> SoakPlan:
        return cls(
            dashboards=100,
            idle_dashboards=5,
            afad=3,
            publishers=2,
            duration=10.0,
            window=2.0,
            probe_every=1.0,
            capacity_start=200.0,
            capacity_factor=2.0,
            capacity_step=1.0,
            capacity_settle=1.0,
            capacity_refine=False,
            capacity_hold=2.0,
            # Bounded, so the quick ramp ends in seconds however fast the gateway got
            # (it once ran past its step timeout doubling up to 100,000/s).
            capacity_max=3200.0,
            drain_limit=10.0,
            drain_idle=3.0,
            idle_read_limit=3.0,
        )


@dataclass(frozen=True)
class SoakTokens:
    cats: str
    afad: list[str]
    dashboard: str


def soak_env(dashboards: int) -> dict[str, str]:
    """The limits the soak lifts, on top of catsock's defaults (``Server.start``'s
    ``limits``, instead of the other scenarios' ``CATSOCK_BENCH_ENV``): rate limits
    and the connection caps. ``limits.send_queue`` and ``limits.live_send_queue``
    stay at their defaults (10,000; 2,000 for dashboards): the bounds are what make
    catsock shed dashboards and send durable recipients to the log."""
    return {
        "CATSOCK_LIMITS__RATE_LIMITS_ENABLED": "false",
        "CATSOCK_LIMITS__PER_IDENTITY_DEFAULT": "1000000",
        # One DASHBOARD token for every dashboard (the default allows 3 per token).
        "CATSOCK_LIMITS__PER_IDENTITY__DASHBOARD": str(max(dashboards, 3)),
        "CATSOCK_LIMITS__MAX_CONNECTIONS": "50000",
    }


# -- the clients ---------------------------------------------------------------------


async def _client(
    port: int,
    token: str,
    client_type: str,
    nursery: trio.Nursery,
    extensions: dict[str, Any] | None = None,
    rcvbuf: int | None = None,
) -> Conn:
    conn = await open_conn(port, nursery=nursery, rcvbuf=rcvbuf)
    try:
        await authenticate(conn, token, client_type, extensions)
    except BaseException:
        conn.abort()
        raise
    return conn


@dataclass
class Crowd:
    """Every client of one step: the AFADs and publishers here, the dashboards in
    their own process (bench/soakcrowd.py)."""

    afad: list[Afad]
    publishers: list[SoakPublisher]
    afad_totals: ClassTotals
    progress: Progress
    dash: DashboardCrowd | None = None

    @property
    def dashboards(self) -> DashboardCrowd:
        assert self.dash is not None
        return self.dash

    @classmethod
    async def connect(
        cls, port: int, tokens: SoakTokens, plan: SoakPlan, nursery: trio.Nursery
    ) -> Crowd:
        """AFADs, then dashboards (the non-reading ones paused right after their
        ``auth_success``), then the publishers. Raises ``ConnectFailed``."""
        progress = Progress()
        crowd = cls([], [], ClassTotals("AFAD", progress), progress)
        try:
            for i in range(plan.afad):
                conn = await _client(port, tokens.afad[i], "AFAD", nursery)
                crowd.afad.append(Afad(conn, crowd.afad_totals, plan.publishers))
            crowd.dash = await DashboardCrowd.start(
                port,
                tokens.dashboard,
                dashboards=plan.dashboards,
                idle=plan.idle_dashboards,
                idle_rcvbuf=plan.idle_rcvbuf,
                progress=progress,
                nursery=nursery,
            )
            for pid in range(plan.publishers):
                conn = await _client(port, tokens.cats, "CATS", nursery, {"acks": {}})
                crowd.publishers.append(
                    SoakPublisher(conn, pid, progress, window=plan.publisher_window)
                )
        except BaseException:
            crowd.close()
            raise
        return crowd

    def close(self) -> None:
        for conn in [*(p.conn for p in self.publishers), *(a.conn for a in self.afad)]:
            conn.abort()
        if self.dash is not None:
            self.dash.close()

    def generator_cpu(self) -> float:
        """CPU seconds of the whole load generator: this process and the dashboards'."""
        return generator_cpu_seconds() + (self.dash.cpu_seconds() if self.dash else 0.0)

    def sent(self) -> int:
        return sum(p.seq for p in self.publishers)

    def accepted(self) -> int:
        return sum(p.accepted for p in self.publishers)

    def answered(self) -> int:
        return sum(p.answered for p in self.publishers)


# -- CPU and memory probes ---------------------------------------------------------


def _machine_busy_seconds() -> float:
    """CPU seconds every CPU of the machine spent not idle (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


@dataclass
class _CpuMark:
    at: float
    server: float
    generator: float
    machine: float
    pressure: int | None

    @classmethod
    def now(cls, server_cpu: Callable[[], float], generator_cpu: Callable[[], float]) -> _CpuMark:
        return cls(
            perf(), server_cpu(), generator_cpu(), _machine_busy_seconds(), cpu_pressure_us()
        )

    def since(self, before: _CpuMark) -> dict[str, float | None]:
        wall = max(self.at - before.at, 1e-9)
        server = self.server - before.server
        generator = self.generator - before.generator
        others = max(0.0, self.machine - before.machine - server - generator)
        pressure = None
        if self.pressure is not None and before.pressure is not None:
            pressure = (self.pressure - before.pressure) / wall / 1e4
        return {
            "server_cpu_pct": 100 * server / wall,
            "generator_cpu_pct": 100 * generator / wall,
            "others_cpu_pct": 100 * others / wall,
            "cpu_pressure_pct": pressure,
        }


# -- the capacity ramp ---------------------------------------------------------------


def _settled(crowd: Crowd, accepted_before: int) -> bool:
    """Every write answered; every AFAD has every accepted event, and every open
    reading dashboard every one accepted since the step began (``accepted_before``
    then; the dashboards' counts start at the step's ``mark``)."""
    if crowd.answered() < crowd.sent():
        return False
    accepted = crowd.accepted()
    fewest = crowd.dashboards.min_open_reading_since_mark
    return all(a.received - a.dups >= accepted for a in crowd.afad) and (
        fewest is None or fewest >= accepted - accepted_before
    )


async def _ramp_step(
    crowd: Crowd,
    plan: SoakPlan,
    rate: float,
    server_cpu: Callable[[], float],
    seconds: float | None = None,
) -> dict[str, Any]:
    """``rate`` events/s for ``seconds`` (``capacity_step``), then up to ``capacity_settle``
    for the rest to arrive. Passes if the publishers kept the schedule, everything
    arrived in time, nobody was cut off, both classes' p99 stayed in bounds and the
    dashboards' process kept up (``capacity_reader_lag_ms``)."""
    crowd.afad_totals.latency.take()
    await crowd.dashboards.take_latency()
    await crowd.dashboards.mark()
    sent0, closed0, accepted0 = crowd.sent(), crowd.dashboards.reading_closed, crowd.accepted()
    cpu0 = _CpuMark.now(server_cpu, crowd.generator_cpu)
    start = perf() + 0.01
    seconds = plan.capacity_step if seconds is None else seconds
    stop = start + seconds
    per = rate / max(len(crowd.publishers), 1)
    async with trio.open_nursery() as nursery:
        for k, publisher in enumerate(crowd.publishers):
            nursery.start_soon(publisher.run_schedule, per, start + k / rate, stop)
    ended = perf()
    while not _settled(crowd, accepted0) and perf() - ended < plan.capacity_settle:
        await crowd.progress.wait(0.05)
    settle = perf() - ended
    usage = _CpuMark.now(server_cpu, crowd.generator_cpu).since(cpu0)
    written = crowd.sent() - sent0
    afad, dash = crowd.afad_totals.latency.take(), await crowd.dashboards.take_latency()
    cut = crowd.dashboards.reading_closed - closed0
    limit = plan.capacity_p99_ms
    passed = (
        written >= 0.98 * rate * seconds
        and _settled(crowd, accepted0)
        and not cut
        and all(x["p99_ms"] is not None and x["p99_ms"] <= limit for x in (afad, dash))
        and dash["reader_lag_ms"] <= plan.capacity_reader_lag_ms
    )
    return {
        "rate": rate,
        "seconds": seconds,
        "written_per_s": written / seconds,
        "settle_s": settle,
        "reading_dashboards_cut": cut,
        "afad_latency": afad,
        "dashboard_latency": dash,
        "pass": passed,
        **usage,
    }


async def measure_capacity(
    crowd: Crowd, plan: SoakPlan, server_cpu: Callable[[], float]
) -> dict[str, Any]:
    """An open-loop ramp. One warm-up step at ``capacity_start`` (not judged), then
    ``capacity_start`` times ``capacity_factor`` each step until a step fails
    (``_ramp_step``), or, if the first one fails, divided by it until one passes;
    then, if ``capacity_refine``, one step halfway (geometrically) between the
    highest pass and the lowest failure; then the highest pass is held for
    ``capacity_hold`` seconds, divided by ``capacity_factor`` after each failed
    hold (four at most). The capacity is the rate that held."""
    warmup = await _ramp_step(crowd, plan, plan.capacity_start, server_cpu)
    warmup["warmup"] = True
    steps: list[dict[str, Any]] = [warmup]
    best: float | None = None
    failed: float | None = None
    rate = plan.capacity_start
    floor = plan.capacity_start / plan.capacity_factor**6
    while floor <= rate <= plan.capacity_max:
        if steps[-1].get("pass") is False:
            await _wait_settled(crowd, plan)
        step = await _ramp_step(crowd, plan, rate, server_cpu)
        steps.append(step)
        if step["pass"]:
            best = rate
            if failed is not None:
                break  # coming down: the first pass is the answer
            rate *= plan.capacity_factor
        else:
            failed = rate
            if best is not None:
                break
            rate /= plan.capacity_factor
    if plan.capacity_refine and best is not None and failed is not None:
        await _wait_settled(crowd, plan)
        mid = (best * failed) ** 0.5
        step = await _ramp_step(crowd, plan, mid, server_cpu)
        step["refinement"] = True
        steps.append(step)
        if step["pass"]:
            best = max(best, mid)
    # A short step passes before a backlog has grown enough to hurt: hold the rate
    # for longer, and step down until a hold passes.
    held = True
    if plan.capacity_hold > 0 and best is not None:
        held = False
        for _ in range(MAX_HOLDS):
            await _wait_settled(crowd, plan)
            step = await _ramp_step(crowd, plan, best, server_cpu, plan.capacity_hold)
            step["hold"] = True
            steps.append(step)
            if step["pass"]:
                held = True
                break
            failed = best if failed is None else min(failed, best)
            tried = best
            best /= plan.capacity_factor
        if not held:
            # The levels still run, at the lowest rate tried; the report says so
            # (a machine too busy to hold any rate should not void the whole soak).
            best = tried
    return {
        "capacity_events_per_s": best,
        "capacity_held": held,
        "first_failed_events_per_s": failed,
        "steps": steps,
        "p99_limit_ms": plan.capacity_p99_ms,
        "reader_lag_limit_ms": plan.capacity_reader_lag_ms,
    }


#: Holds tried, each at the last rate divided by ``capacity_factor``.
MAX_HOLDS = 4


async def _wait_settled(crowd: Crowd, plan: SoakPlan) -> None:
    """Let a failed step's backlog drain before the next step starts: as a level's
    drain, it also ends once nothing moved for ``drain_idle`` (events the gateway
    shed for a dashboard never arrive; waiting for them took ``drain_limit``, five
    minutes, per failed step once dashboards shed at 2,000 queued)."""
    await _drain(crowd, plan)


# -- a load level ------------------------------------------------------------------


@dataclass
class _Probes:
    """Answers of /health and /metrics since the last row, and the latest metrics."""

    done: list[httpprobe.Probe] = field(default_factory=list)
    latest: dict[str, float] = field(default_factory=dict)
    latest_at: float = 0.0


async def _probe_loop(port: int, path: str, plan: SoakPlan, probes: _Probes) -> None:
    while True:
        started = perf()
        probe = await httpprobe.get(port, path, plan.probe_limit)
        if path == "/metrics" and probe.ok:
            probes.latest = httpprobe.parse_metrics(probe.body)
            probes.latest_at = perf()
        probes.done.append(
            httpprobe.Probe(
                probe.path, probe.started, probe.seconds, probe.status, probe.timed_out,
                probe.error,
            )
        )  # fmt: skip
        await trio.sleep(max(0.0, started + plan.probe_every - perf()))


def _probe_summary(probes: list[httpprobe.Probe]) -> dict[str, Any]:
    answered = [p.seconds for p in probes if not p.timed_out]
    return {
        "n": len(probes),
        "worst_ms": None if not probes else 1000 * max(p.seconds for p in probes),
        "median_ms": None if not answered else 1000 * sorted(answered)[len(answered) // 2],
        "timeouts": sum(p.timed_out for p in probes),
        "not_ok": sum(not p.timed_out and not p.ok for p in probes),
        "over_1s": sum(p.seconds > 1.0 for p in probes),
    }


class _RssWatch:
    def __init__(self, rss: Callable[[], int]) -> None:
        self.rss = rss
        self.last = rss()
        self.peak = self.last

    async def run(self) -> None:
        while True:
            try:
                self.last = self.rss()
            except OSError:  # the server is gone
                return
            self.peak = max(self.peak, self.last)
            await trio.sleep(RSS_EVERY)

    def take(self) -> tuple[int, int]:
        last, peak = self.last, self.peak
        self.peak = last
        return last, peak


async def run_level(
    crowd: Crowd,
    plan: SoakPlan,
    *,
    rate: float,
    port: int,
    server_cpu: Callable[[], float],
    server_rss: Callable[[], int],
    log: Callable[[str], None],
    label: str,
) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``plan.duration``, drain, check the non-readers."""
    probes = _Probes()
    rss = _RssWatch(server_rss)
    per_publisher = rate / max(len(crowd.publishers), 1)
    idle_rss = rss.last
    t0 = perf() + 0.05
    stop = t0 + plan.duration
    rows: list[dict[str, Any]] = []
    sampling = _Sampler(crowd, probes, rss, server_cpu, rate=rate, t0=t0, stop=stop)

    async def sampler() -> None:
        next_at = perf() + plan.window
        shown = perf()
        while True:
            await trio.sleep(max(0.0, next_at - perf()))
            next_at += plan.window
            rows.append(r := await sampling.row())
            first_drain = r["phase"] == "drain" and rows[-2:-1] and rows[-2]["phase"] == "load"
            if perf() - shown >= 60 or first_drain:
                shown = perf()
                log(_progress_line(label, r))

    idle: dict[str, Any] = {}

    async def resume_idle_once_shed() -> None:
        """Once catsock counts as many 4001 closes as there are non-readers, give it
        ``idle_resume_after`` seconds more (its close grace is 5 s) and let them
        read: does a tab that comes back find the close?"""
        count = crowd.dashboards.idle_count
        while count:
            shed = metric(probes.latest, "catsock_slow_consumer_disconnects")
            if shed is not None and shed >= count:
                break
            await trio.sleep(plan.probe_every)
        shed_at = perf()
        await trio.sleep(plan.idle_resume_after)
        idle.update(await _let_idle_read(crowd, plan.idle_read_limit, t0))
        idle["shed_seen_at_s"] = shed_at - t0

    async with trio.open_nursery() as watchers:
        watchers.start_soon(rss.run)
        watchers.start_soon(_probe_loop, port, "/health", plan, probes)
        watchers.start_soon(_probe_loop, port, "/metrics", plan, probes)
        watchers.start_soon(sampler)
        watchers.start_soon(resume_idle_once_shed)
        async with trio.open_nursery() as senders:
            for k, publisher in enumerate(crowd.publishers):
                offset = k / max(rate, 1e-9)
                senders.start_soon(publisher.run_schedule, per_publisher, t0 + offset, stop)
        drained_in = await _drain(crowd, plan)
        if not idle:  # never counted as shed (or the count was never seen): read now
            idle.update(await _let_idle_read(crowd, plan.idle_read_limit, t0))
            idle["shed_seen_at_s"] = None
        watchers.cancel_scope.cancel()
    rows.append(await sampling.row())
    return {
        "rate": rate,
        "per_publisher_rate": per_publisher,
        "idle_rss_kib": idle_rss,
        "drain_s": drained_in,
        "windows": rows,
        "idle_dashboards": idle,
        **await _losses(crowd),
    }


class _Sampler:
    """One row of the time series per call: what happened since the previous row."""

    def __init__(
        self,
        crowd: Crowd,
        probes: _Probes,
        rss: _RssWatch,
        server_cpu: Callable[[], float],
        *,
        rate: float,
        t0: float,
        stop: float,
    ) -> None:
        self.crowd, self.probes, self.rss, self.server_cpu = crowd, probes, rss, server_cpu
        self.rate, self.t0, self.stop = rate, t0, stop
        self.mark = _CpuMark.now(server_cpu, crowd.generator_cpu)
        self.sent = self.accepted = self.refused = self.afad = self.dash = self.seen = 0

    async def row(self) -> dict[str, Any]:
        crowd, probes = self.crowd, self.probes
        dash_latency = await crowd.dashboards.take_latency()
        mark = _CpuMark.now(self.server_cpu, crowd.generator_cpu)
        now, wall = mark.at, max(mark.at - self.mark.at, 1e-9)
        sent, accepted = crowd.sent(), crowd.accepted()
        refused = sum(len(p.refused) for p in crowd.publishers)
        afad, dash = crowd.afad_totals.delivered, crowd.dashboards.delivered
        new_probes = probes.done[self.seen :]
        rss_last, rss_peak = self.rss.take()
        scheduled = max(0.0, min(now, self.stop) - max(self.mark.at, self.t0))
        lag = max((p.max_lag for p in crowd.publishers), default=0.0)
        for p in crowd.publishers:
            p.max_lag = 0.0
        fresh = probes.latest_at > self.mark.at
        out = {
            "t": now - self.t0,
            # By the clock: a publisher whose write the gateway holds up returns late,
            # but the load (its schedule) ended at ``stop``.
            "phase": "load" if now <= self.stop + 1.0 else "drain",
            "wall_s": wall,
            "offered_per_s": scheduled * self.rate / wall,
            "sent_per_s": (sent - self.sent) / wall,
            "accepted_per_s": (accepted - self.accepted) / wall,
            "refused": refused - self.refused,
            "behind": sum(p.behind(now) for p in crowd.publishers),
            "max_send_lag_ms": 1000 * lag,
            "afad": {
                "delivered_per_s": (afad - self.afad) / wall,
                **crowd.afad_totals.latency.take(),
            },
            "dashboards": {
                "delivered_per_s": (dash - self.dash) / wall,
                **dash_latency,
            },
            "rss_kib": rss_last,
            "rss_peak_kib": rss_peak,
            **mark.since(self.mark),
            "health": _probe_summary([p for p in new_probes if p.path == "/health"]),
            "metrics": _probe_summary([p for p in new_probes if p.path == "/metrics"]),
            "server_metrics": dict(probes.latest) if fresh else {},
            "dashboards_open": crowd.dashboards.open,
        }
        self.mark, self.sent, self.accepted, self.refused = mark, sent, accepted, refused
        self.afad, self.dash, self.seen = afad, dash, len(probes.done)
        return out


async def _drain(crowd: Crowd, plan: SoakPlan) -> float:
    """Wait until every write is answered and every AFAD and every open reading
    dashboard has every accepted event, or nothing moved for ``drain_idle``, or
    ``drain_limit`` passed. Returns seconds."""
    started = perf()
    deadline = started + plan.drain_limit

    def position() -> tuple[int, int, int]:
        return crowd.answered(), crowd.afad_totals.delivered, crowd.dashboards.delivered

    def finished() -> bool:
        if crowd.answered() < crowd.sent():
            return False
        accepted = crowd.accepted()
        # The reading dashboards too: they are written up to a pacer round later
        # than the AFADs, and a drain that ended with the AFADs counted the last
        # window's events as missed for every dashboard (990 × 200 in runs 4 and 5).
        fewest = crowd.dashboards.min_open_reading
        return (fewest is None or fewest >= accepted) and all(
            a.received - a.dups >= accepted or a.conn.closed for a in crowd.afad
        )

    last, moved = position(), perf()
    while not finished() and perf() < deadline:
        await crowd.progress.wait(0.1)
        if position() != last:
            last, moved = position(), perf()
        elif perf() - moved > plan.drain_idle:
            break
    return perf() - started


async def _let_idle_read(crowd: Crowd, limit: float, t0: float) -> dict[str, Any]:
    """Let the non-reading dashboards read what their sockets hold: did the
    ``SLOW_CONSUMER`` error and the close frame reach them?"""
    idle = await crowd.dashboards.let_idle_read(limit)
    idle["resumed_at_s"] = idle.pop("resumed_at") - t0
    return idle


async def _losses(crowd: Crowd) -> dict[str, Any]:
    """AFAD: exactly once, in order, every accepted event (refusals excused).
    Dashboards: how many deliveries of the accepted events never arrived."""
    accepted = crowd.accepted()
    refused = {(p.pid, s) for p in crowd.publishers for s in p.refused}
    afad = []
    for a in crowd.afad:
        unexcused = sum(
            1
            for pid, first, last in a.gaps
            for s in range(first, last + 1)
            if (pid, s) not in refused
        )
        unique = a.received - a.dups
        afad.append(
            {
                "received": a.received,
                "missing": max(0, accepted - unique),
                "gaps": unexcused,
                # Everything received was in order, and only the tail is missing: still
                # queued when the harness stopped waiting, not lost.
                "tail_only": not unexcused and not a.dups and not a.conn.closed,
                "duplicates_or_reordered": a.dups,
                "other_frames": a.other,
                "closed": a.conn.closed,
                "exact": unique == accepted and not unexcused and not a.dups and not a.conn.closed,
            }
        )
    return {
        "sent": crowd.sent(),
        "accepted": accepted,
        "duplicates_answered": sum(p.duplicates for p in crowd.publishers),
        "refused": len(refused),
        "unanswered": crowd.sent() - crowd.answered(),
        "unsent": sum(p.unsent for p in crowd.publishers),
        "publisher_error_samples": [s for p in crowd.publishers for s in p.error_samples][:5],
        "afad_recipients": afad,
        "afad_missing": sum(r["missing"] for r in afad),
        "afad_exact": all(r["exact"] for r in afad),
        **await crowd.dashboards.losses(accepted),
    }


def _progress_line(label: str, r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f}"

    return (
        f"bench       soak {label} t={r['t']:.0f}s {r['phase']}: "
        f"accepted {r['accepted_per_s']:,.0f}/s, AFAD p99 {ms(r['afad']['p99_ms'])} ms, "
        f"dashboards p99 {ms(r['dashboards']['p99_ms'])} ms, "
        f"RSS {r['rss_peak_kib'] / 1024:,.0f} MiB, "
        f"/health {ms(r['health']['worst_ms'])} ms, /metrics {ms(r['metrics']['worst_ms'])} ms"
        f" ({r['metrics']['timeouts']} timeouts), srv {r['server_cpu_pct']:.0f}% "
        f"gen {r['generator_cpu_pct']:.0f}% others {r['others_cpu_pct']:.0f}%"
    )


# -- after the server stopped --------------------------------------------------------


def inspect_database(path: Path, afad_names: list[str]) -> dict[str, Any]:
    """What the gateway recorded: close codes of dashboards, AFAD cursors against the
    newest seq, dropped-event ledger rows. Read-only, after the server stopped."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        codes = dict(
            db.execute(
                "SELECT coalesce(close_code, 'none'), count(*) FROM connections "
                "WHERE client_type = 'DASHBOARD' GROUP BY 1"
            ).fetchall()
        )
        head = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        marks = ",".join("?" * len(afad_names))
        cursors = db.execute(
            f"SELECT identity, min(seq) FROM cursors WHERE identity IN ({marks}) "
            "AND channel = 'type:AFAD' GROUP BY identity",
            afad_names,
        ).fetchall()
        dropped = db.execute(
            "SELECT count(*), coalesce(sum(last_seq - first_seq + 1), 0) FROM ledger "
            "WHERE kind = 'dropped'"
        ).fetchone()
    finally:
        db.close()
    return {
        "dashboard_close_codes": {str(k): v for k, v in codes.items()},
        "head_seq": head,
        "afad_cursors": {name: seq for name, seq in cursors},
        "afad_cursors_at_head": len(cursors) == len(afad_names)
        and all(seq == head for _, seq in cursors),
        "ledger_dropped_rows": dropped[0],
        "ledger_dropped_events": dropped[1],
    }


def log_problems(path: Path, keep: int = 5) -> dict[str, Any]:
    """What catsock wrote to its log besides its own start and stop lines (``serve``
    configures no logging: warnings go out as bare messages): tracebacks, other
    lines, and the first few of them."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"tracebacks": 0, "other_lines": 0, "samples": []}
    other = [line for line in lines if line.strip() and not line.startswith("catsock: ")]
    return {
        "tracebacks": sum(line.startswith("Traceback") for line in lines),
        "other_lines": len(other),
        "samples": [line[:300] for line in other[:keep]],
    }


def plan_dict(plan: SoakPlan) -> dict[str, Any]:
    return asdict(plan)
