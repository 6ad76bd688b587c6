"""Writes for live-only recipients, coalesced: at most one per recipient per interval.

A durable recipient (an affiliate system, the ad platform) writes after every
commit; a dashboard is a person looking at a feed, for whom 50 ms does not
matter, and a thousand of them writing after every commit would take the core
that the durable ones need. ``Pacer.later`` puts a connection on the list; the
``run`` task pumps everyone on it once per ``interval``, a slice at a time so
that nothing else waits behind a thousand writes (docs/delivery.md, "Who goes
first"). A slice ends after ``SLICE`` recipients or ``SLICE_SECONDS`` of work,
whichever comes first: the rest of the gateway (publishers, durable recipients,
``/health``) runs between two slices, so under overload its rounds stay short
and the dashboards get the core that is left. Live-only writes the kernel does
not take whole go on here too, never in a task of their own (``Link.resume``).

While the gateway runs behind (the event loop's lag, catsock/admission.py, over
half of ``delivery.admission_lag``), live-only recipients get a *budget*: the
bytes each may be written per round, halved every round it stays behind (down to
``MIN_BUDGET``) and grown by a quarter every round it is calm (back to none). A
dashboard that reads fast would otherwise take the whole core, and the durable
recipients and the publishers the rest of it; under the budget what does not fit
its queue is shed for it and recorded, as for any dashboard that falls behind
(docs/delivery.md §3, "Overload").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import trio

__all__ = ["Pacer", "Pumpable"]

#: Recipients pumped between two checkpoints of the pacer's task.
SLICE = 100
#: Seconds of work between two checkpoints of the pacer's task, at most (plus one
#: recipient's writes).
SLICE_SECONDS = 0.005
#: The budget a recipient gets in the first round behind, and the least it falls to.
START_BUDGET = 256 * 1024
MIN_BUDGET = 4 * 1024


class Pumpable(Protocol):
    def pump(self) -> None:
        """Hand what is queued to the socket, as far as it goes without waiting."""


class Pacer:
    def __init__(
        self, interval: float, *, lag: Callable[[], float] = lambda: 0.0, limit: float = 0.0
    ) -> None:
        self.interval = interval
        self._lag = lag
        self._limit = limit
        #: Bytes each live-only recipient may be written per round (None: no limit).
        self.budget: int | None = None
        self._due: dict[Pumpable, None] = {}
        self._wakeup = trio.Event()
        self.rounds = 0
        # When the oldest recipient still waiting was put on the list: of the list
        # being gathered, and of the round being pumped.
        self._gathering_since = math.inf
        self._pumping_since = math.inf

    def later(self, recipient: Pumpable) -> None:
        """Pump ``recipient`` within ``interval`` (at once if the interval is 0)."""
        if self.interval <= 0:
            recipient.pump()
            return
        if not self._due:
            self._wakeup.set()
            self._gathering_since = trio.current_time()
        self._due[recipient] = None

    def __len__(self) -> int:
        return len(self._due)

    def lag(self) -> float:
        """How long past ``interval`` the longest-waiting recipient has waited (0: none)."""
        oldest = min(self._gathering_since, self._pumping_since)
        return max(0.0, trio.current_time() - oldest - self.interval)

    def _adapt(self) -> None:
        if self._limit <= 0:
            return
        lag = self._lag()
        budget = self.budget
        if lag > self._limit / 2:
            self.budget = START_BUDGET if budget is None else max(MIN_BUDGET, budget // 2)
        elif budget is not None and lag < self._limit / 8:
            grown = budget + budget // 4
            self.budget = None if grown > START_BUDGET else grown

    async def run(self) -> None:
        """Pump what is due, once per interval, until cancelled."""
        started = -math.inf
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            # An interval from the last round's start: a round that took longer than
            # the interval (overload) is followed by the next at once.
            await trio.sleep_until(max(started + self.interval, trio.current_time()))
            started = trio.current_time()
            due, self._due = self._due, {}
            self._pumping_since, self._gathering_since = self._gathering_since, math.inf
            self.rounds += 1
            self._adapt()
            try:
                await self._pump(due)
            finally:
                self._pumping_since = math.inf

    @staticmethod
    async def _pump(due: dict[Pumpable, None]) -> None:
        clock = time.perf_counter
        until = clock() + SLICE_SECONDS
        for i, recipient in enumerate(due, 1):
            recipient.pump()
            if i % SLICE == 0 or clock() > until:
                await trio.lowlevel.checkpoint()
                until = clock() + SLICE_SECONDS
