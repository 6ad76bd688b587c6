"""What travels from the event log to recipients: one ``Entry`` per event, ``Run``s of them.

An ``Entry`` is built once when an event is accepted and shared by everyone who
receives it; its WebSocket frame is encoded once (two variants: as published, and
with the log's ``seq`` as first key). A ``Run`` is a slice of one commit's entries
that go to the same channels: the hub offers it to each recipient as one item,
and its frames are joined once, so fanning a commit out costs each recipient a
few operations however many events the commit holds (docs/architecture.md).

A recipient whose class sees fields stripped (protocol/privacy.py, docs/privacy.md)
asks with its ``Projector``: the projected frame is built once per (event,
projection) and the joined frames once per (run, projector). Without one (None),
the original frames serve, as before.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import Protocol

import attrs
import trio

from protocol.privacy import Projection, Projector, project

from .transport.frames import text_frame

__all__ = [
    "PRIORITIES",
    "PRIORITY_NAMES",
    "Entry",
    "Publisher",
    "Run",
    "Stored",
    "events_json",
    "keys_in_front",
    "with_seq_first",
]

#: Seed 002's levels: a lower number is more important.
PRIORITIES: Mapping[str, int] = {"CRITICAL": 1, "HIGH": 2, "NORMAL": 3, "LOW": 4}
PRIORITY_NAMES: Mapping[int, str] = {v: k for k, v in PRIORITIES.items()}


def keys_in_front(opening: str, body: str) -> str:
    """``body`` (a JSON object's text) with the keys of ``opening`` (an object's text
    without its closing brace, such as ``'{"seq":5'``) put first; the rest byte for
    byte as it was, so recipients get what was published."""
    rest = body.lstrip()[1:]
    return opening + ("" if rest.lstrip().startswith("}") else ",") + rest


def with_seq_first(seq: int, body: str) -> str:
    """The event's JSON object text with ``"seq"`` as its first key (docs/delivery.md)."""
    return keys_in_front(f'{{"seq":{seq}', body)


class Stored(Protocol):
    """An event as read back: an ``Entry``, or a row of ``storage.recent_events``."""

    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def body(self) -> str: ...


def events_json(events: Iterable[Stored], projector: Projector | None) -> bytes:
    """``events`` as the items of a JSON array, each with ``seq`` first, as
    ``projector``'s class is sent them (None: as published). The HTTP long-poll and
    the dashboard's history answer with it; a WebSocket uses ``Entry.view``."""
    return b",".join(
        with_seq_first(
            e.seq, e.body if projector is None else projector.body(e.type, e.body)
        ).encode()
        for e in events
    )


class Publisher(Protocol):
    def accepted(self, entry: Entry) -> None:
        """The entry is committed (or a duplicate of a committed one)."""

    def pump(self) -> None:
        """Write what ``accepted`` queued (called once after a batch)."""


@attrs.define(slots=True, eq=False)
class Entry:
    """One event on its way: committed once, written to many recipients."""

    seq: int
    type: str
    message_id: str
    sender: str  # the publisher's identity
    channels: tuple[str, ...]
    priority: int
    expires_at: float | None
    body: str
    publisher: Publisher | None = None
    connection_id: str | None = None
    created_at: float = 0.0
    # Trio time it was accepted, for the latency histogram (cluster mode: its
    # created_at on this node's trio clock, Delivery._follow).
    appended_at: float = math.nan
    duplicate_of: int | None = None
    committed: trio.Event | None = None
    _frame: bytes | None = None
    _seq_frame: bytes | None = None
    _views: dict[tuple[Projection, bool], bytes] | None = None

    def frame(self, with_seq: bool) -> bytes:
        """The WebSocket frame, built once per entry whoever receives it."""
        if with_seq:
            if self._seq_frame is None:
                self._seq_frame = text_frame(with_seq_first(self.seq, self.body))
            return self._seq_frame
        if self._frame is None:
            self._frame = text_frame(self.body)
        return self._frame

    def view(self, projector: Projector | None, with_seq: bool) -> bytes:
        """The frame as ``projector``'s class is sent it (None: as published), built
        once per projection whoever receives it. Nothing to strip: the original."""
        projection = None if projector is None else projector.projection(self.type)
        if projection is None:
            return self.frame(with_seq)
        key = (projection, with_seq)
        if self._views is None:
            self._views = {}
        elif key in self._views:
            return self._views[key]
        body = project(self.body, projection)
        if body is self.body:
            frame = self.frame(with_seq)
        else:
            frame = text_frame(with_seq_first(self.seq, body) if with_seq else body)
        self._views[key] = frame
        return frame

    @property
    def effective_seq(self) -> int:
        return self.seq if self.duplicate_of is None else self.duplicate_of


#: Different cuts of one run kept at most (``Run.split``).
MAX_SPLITS = 4


@attrs.define(slots=True, eq=False)
class Run:
    """Consecutive committed entries with the same channels, offered as one item."""

    entries: list[Entry]
    #: Publishers' identities: a recipient among them must skip its own events.
    senders: frozenset[str]
    #: The earliest expiry among the entries (None: none of them expires).
    expires_at: float | None
    #: Events by type, for the counters.
    types: dict[str, int]
    size: int
    #: The most important priority among the entries (lowest number).
    priority: int
    #: How many entries of each priority (index 1 to 4), for shedding decisions.
    levels: tuple[int, ...]
    _frames: bytes | memoryview | None = None
    _seq_frames: bytes | memoryview | None = None
    #: Joined projected frames by (projector, with_seq).
    _views: dict[tuple[Projector, bool], bytes | memoryview] | None = None
    #: ``split`` results by (room, with_seq, projector): every recipient of a run cuts
    #: it at the same places, so a thousand dashboards share one cut (and its tail's).
    _splits: dict[tuple[int, bool, Projector | None], tuple[Run, Run | None]] | None = None
    #: Where each entry's frame ends in the joined frames, by (with_seq, projector),
    #: and where each entry's body ends counting bodies: ``Offsets`` into the lists of
    #: the run this one was cut from, so that no cut measures an entry twice.
    _ends: dict[tuple[bool, Projector | None], Offsets] | None = None
    _body_ends: Offsets | None = None

    @classmethod
    def of(cls, entries: list[Entry]) -> Run:
        types: dict[str, int] = {}
        expiries = []
        size = 0
        priority = PRIORITIES["LOW"]
        levels = [0] * (PRIORITIES["LOW"] + 1)
        for entry in entries:
            types[entry.type] = types.get(entry.type, 0) + 1
            size += len(entry.body)
            priority = min(priority, entry.priority)
            levels[entry.priority] += 1
            if entry.expires_at is not None:
                expiries.append(entry.expires_at)
        return cls(
            entries,
            frozenset(e.sender for e in entries),
            min(expiries) if expiries else None,
            types,
            size,
            priority,
            tuple(levels),
        )

    @property
    def first(self) -> int:
        return self.entries[0].seq

    @property
    def last(self) -> int:
        return self.entries[-1].seq

    def frames(self, with_seq: bool, projector: Projector | None = None) -> bytes | memoryview:
        """Every entry's frame, joined once whoever receives them (once per projector
        for projected recipients)."""
        if projector is not None:
            return self._view_frames(projector, with_seq)
        if with_seq:
            if self._seq_frames is None:
                self._seq_frames = b"".join(e.frame(True) for e in self.entries)
            return self._seq_frames
        if self._frames is None:
            self._frames = b"".join(e.frame(False) for e in self.entries)
        return self._frames

    def _view_frames(self, projector: Projector, with_seq: bool) -> bytes | memoryview:
        key = (projector, with_seq)
        if self._views is None:
            self._views = {}
        elif key in self._views:
            return self._views[key]
        joined = b"".join(e.view(projector, with_seq) for e in self.entries)
        self._views[key] = joined
        return joined

    def split(
        self, room: int, with_seq: bool, projector: Projector | None = None
    ) -> tuple[Run, Run | None]:
        """The first entries whose frames fit in ``room`` bytes (at least one), and the
        rest; both share this run's joined frames (no copy).

        Costs what the first part holds, not what the run holds: draining a long run
        in slices must not measure its rest again at every slice. The rest's figures
        are this run's minus the first part's; its senders and earliest expiry stay
        this run's (a superset, and an earlier-or-equal time: both only make a
        recipient look closer, never miss anything).

        The result is kept: the same cut for the next recipient costs nothing (the
        soak's thousand dashboards spent two thirds of the core re-cutting)."""
        key = (room, with_seq, projector)
        if self._splits is None:
            self._splits = {}
        elif key in self._splits:
            return self._splits[key]
        result = self._split(room, with_seq, projector)
        if len(self._splits) < MAX_SPLITS:  # rooms differ only when a reply came first
            self._splits[key] = result
        return result

    def _split(
        self, room: int, with_seq: bool, projector: Projector | None
    ) -> tuple[Run, Run | None]:
        entries = self.entries
        n = len(entries)
        ends = self._frame_ends(with_seq, projector)
        k = max(1, ends.count_within(room, n))
        if k >= n:
            return self, None
        cut = ends.at(k - 1)
        bodies = self._bodies()
        head_size = bodies.at(k - 1)
        head_entries = entries[:k]
        if len(self.types) == 1 and self.levels[self.priority] == n:
            # One type and one priority (the common case): counted without a walk.
            (type_,) = self.types
            head_types, tail_types = {type_: k}, {type_: n - k}
            head_levels = tuple(k if i == self.priority else 0 for i in range(len(self.levels)))
        else:
            head_types, head_levels = _figures(head_entries, len(self.levels))
            tail_types = dict(self.types)
            for type_, count in head_types.items():
                tail_types[type_] -= count
                if not tail_types[type_]:
                    del tail_types[type_]
        # Senders, earliest expiry and priority stay this run's for both parts: a
        # superset, an earlier-or-equal time and a more-or-equal importance only make
        # a recipient look closer (``_frames`` then checks each entry's expiry).
        head = Run(
            head_entries,
            self.senders,
            self.expires_at,
            head_types,
            head_size,
            self.priority,
            head_levels,
        )
        tail = Run(
            entries[k:],
            self.senders,
            self.expires_at,
            tail_types,
            self.size - head_size,
            self.priority,
            tuple(a - b for a, b in zip(self.levels, head_levels, strict=True)),
        )
        variant = (with_seq, projector)
        head._ends, tail._ends = {variant: ends}, {variant: ends.after(k)}
        head._body_ends, tail._body_ends = bodies, bodies.after(k)
        data = memoryview(self.frames(with_seq, projector))
        if projector is not None:
            head._views = {(projector, with_seq): data[:cut]}
            tail._views = {(projector, with_seq): data[cut:]}
        elif with_seq:
            head._seq_frames, tail._seq_frames = data[:cut], data[cut:]
        else:
            head._frames, tail._frames = data[:cut], data[cut:]
        return head, tail

    def _frame_ends(self, with_seq: bool, projector: Projector | None) -> Offsets:
        key = (with_seq, projector)
        if self._ends is None:
            self._ends = {}
        elif key in self._ends:
            return self._ends[key]
        sizes = (len(e.view(projector, with_seq)) for e in self.entries)
        self._ends[key] = ends = Offsets(list(accumulate(sizes)), 0, 0)
        return ends

    def _bodies(self) -> Offsets:
        if self._body_ends is None:
            sizes = (len(e.body) for e in self.entries)
            self._body_ends = Offsets(list(accumulate(sizes)), 0, 0)
        return self._body_ends


@attrs.frozen
class Offsets:
    """Cumulative byte counts of a run's entries, in a list shared with the runs it
    was cut from: entry ``i`` of this run ends ``at(i)`` bytes into it."""

    ends: list[int]
    start: int
    base: int

    def at(self, i: int) -> int:
        return self.ends[self.start + i] - self.base

    def count_within(self, room: int, n: int) -> int:
        """How many of the first ``n`` entries end within ``room`` bytes."""
        return bisect_right(self.ends, self.base + room, self.start, self.start + n) - self.start

    def after(self, k: int) -> Offsets:
        """The offsets of the entries from ``k`` on, counted from there."""
        return Offsets(self.ends, self.start + k, self.base + self.at(k - 1))


def _figures(entries: list[Entry], levels: int) -> tuple[dict[str, int], tuple[int, ...]]:
    types: dict[str, int] = {}
    counts = [0] * levels
    for entry in entries:
        types[entry.type] = types.get(entry.type, 0) + 1
        counts[entry.priority] += 1
    return types, tuple(counts)
