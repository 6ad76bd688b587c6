"""Admission: take in no more than the gateway can deliver.

One event read from a publisher fans out to every recipient, so when more is
offered than one core can deliver, reading on only moves the queue from the
publishers' sockets into the gateway, where it costs memory and makes every
recipient wait longer (issue 19). How far behind the gateway runs is measured
every ``TICK`` while events arrive (and while overloaded) as how late a timer
fires: the event loop's lag, one round of everything runnable (a timer catches
any stretch of work longer than a tick, wherever in the round it falls).

Live-only recipients (dashboards) falling behind do not count: they lose
events, lowest priority first, or are shed (docs/delivery.md §3), so that the
durable recipients, whose events cannot be dropped, are not held up by a feed
that can (issue 19: "durable recipients first"). Until 2026-12-05 the oldest
dashboard's wait counted too, and at twice the capacity an AFAD waited seconds
behind a thousand dashboards.

While the lag is over ``delivery.admission_lag``, the gateway is *overloaded*:
publishers are held before their next read (TCP pushes back on them; an HTTP
publish waits, then gets 503 with ``Retry-After``) and the core goes to the
writes already owed. Reads resume once it is under half the limit. Nothing
ticks while no events arrive, and the measure walks no connection.
docs/delivery.md, "Overload", states what it bounds and what it cannot.
"""

from __future__ import annotations

import trio

__all__ = ["TICK", "Admission"]

#: How often the lag is measured while events arrive (seconds).
TICK = 0.01


class Admission:
    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.lag = 0.0  # the last measurement
        self.overloaded = False
        self.episodes = 0  # times it became overloaded
        self.held_seconds = 0.0  # time spent overloaded, ended episodes
        self._since = 0.0
        self._calm = trio.Event()
        self._calm.set()
        self._active = False  # an event arrived since the last tick
        self._ticking = False
        self._wake = trio.Event()

    def poke(self) -> None:
        """An event arrived: measure for the next ``TICK`` at least."""
        self._active = True
        if not self._ticking:
            self._wake.set()

    async def run(self) -> None:
        """Measure every ``TICK`` while events arrive or the gateway is overloaded;
        until cancelled. With a limit of 0 admission is off."""
        if self.limit <= 0:
            return
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._ticking = True
            while self._active or self.overloaded:
                self._active = False
                due = trio.current_time() + TICK
                await trio.sleep_until(due)
                now = trio.current_time()
                self.observe(now - due, now)
            self._ticking = False

    def observe(self, lag: float, now: float) -> None:
        self.lag = lag
        if not self.overloaded and lag > self.limit:
            self.overloaded = True
            self.episodes += 1
            self._since = now
            self._calm = trio.Event()
        elif self.overloaded and lag <= self.limit / 2:
            self.overloaded = False
            self.held_seconds += now - self._since
            self._calm.set()

    async def wait(self) -> None:
        """Return once the gateway is not overloaded."""
        await self._calm.wait()
