"""Runs (catsock/entries.py): frames joined once, split at frame boundaries without a copy."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catsock.entries import Entry, Run, with_seq_first
from protocol.privacy import Projections


def entry(seq: int, body: str, type_: str = "click") -> Entry:
    return Entry(seq, type_, f"m{seq}", "cats", ("type:AFAD",), 3, None, body)


@given(
    st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=30),
    st.integers(0, 5000),
    st.booleans(),
)
def test_a_split_cuts_between_frames_and_both_halves_keep_the_bytes(
    bodies: list[str], room: int, with_seq: bool
) -> None:
    entries = [
        entry(i + 1, json.dumps({"n": i, "t": b}, ensure_ascii=False)) for i, b in enumerate(bodies)
    ]
    run = Run.of(entries)
    whole = bytes(run.frames(with_seq))
    head, tail = run.split(room, with_seq)
    frames = [e.frame(with_seq) for e in head.entries]
    assert bytes(head.frames(with_seq)) == b"".join(frames)
    # The head is as many whole frames as fit (at least one).
    assert len(head.entries) >= 1
    assert len(head.entries) == 1 or len(bytes(head.frames(with_seq))) <= room
    if tail is None:
        assert head is run
    else:
        assert head.entries + tail.entries == entries
        assert bytes(head.frames(with_seq)) + bytes(tail.frames(with_seq)) == whole
        next_frame = len(tail.entries[0].frame(with_seq))
        assert len(bytes(head.frames(with_seq))) + next_frame > room
        assert (head.first, head.last, tail.first, tail.last) == (
            1, len(head.entries), len(head.entries) + 1, len(entries),
        )  # fmt: skip


def test_a_run_counts_its_types_and_knows_its_senders_and_earliest_expiry() -> None:
    a = entry(1, "{}", "click")
    b = entry(2, "{}", "conversion")
    b.sender, b.expires_at = "other", 50.0
    c = entry(3, "{}", "click")
    c.expires_at = 20.0
    run = Run.of([a, b, c])
    assert run.types == {"click": 2, "conversion": 1}
    assert run.senders == frozenset({"cats", "other"})
    assert run.expires_at == 20.0
    assert run.frames(False) == a.frame(False) + b.frame(False) + c.frame(False)
    assert run.frames(True).startswith(b'\x81\x09{"seq":1}')


def test_seq_goes_first_and_the_rest_is_the_published_text() -> None:
    assert with_seq_first(7, ' {"type":"click","x":1}') == '{"seq":7,"type":"click","x":1}'
    assert with_seq_first(7, "{ }") == '{"seq":7 }'
    assert json.loads(with_seq_first(3, "{}")) == {"seq": 3}


@given(st.lists(st.integers(0, 400), min_size=1, max_size=60), st.integers(1, 3000), st.booleans())
def test_draining_a_run_in_slices_keeps_every_figure_right(
    sizes: list[int], room: int, mixed: bool
) -> None:
    """Mixed types and priorities, or one of each (counted without a walk)."""
    entries = [
        entry(i + 1, json.dumps({"pad": "x" * n}), ("click", "conversion")[n % 2 * mixed])
        for i, n in enumerate(sizes)
    ]
    for e, n in zip(entries, sizes, strict=True):
        e.priority = 1 + n % 4 if mixed else 2
    run: Run | None = Run.of(entries)
    assert run is not None
    whole = bytes(run.frames(False))
    slices = []
    while run is not None:
        head, run = run.split(room, False)
        recount = Run.of(head.entries)
        assert (head.types, head.levels, head.size) == (recount.types, recount.levels, recount.size)
        if run is not None:
            rest = Run.of(run.entries)
            assert (run.types, run.levels, run.size) == (rest.types, rest.levels, rest.size)
        slices.append(bytes(head.frames(False)))
    assert b"".join(slices) == whole


def _measured_run(monkeypatch: pytest.MonkeyPatch) -> tuple[Run, list[int]]:
    """A run of 2,000 entries with its frames joined, and a counter (its one item)
    of the entry frames looked at from now on."""
    run = Run.of([entry(i + 1, json.dumps({"pad": "x" * 100})) for i in range(2000)])
    run.frames(False)
    looked = [0]
    real = Entry.frame

    def counting(self: Entry, with_seq: bool) -> bytes:
        looked[0] += 1
        return real(self, with_seq)

    monkeypatch.setattr(Entry, "frame", counting)
    return run, looked


def test_a_split_measures_only_what_it_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draining a run of n entries in slices of k must not cost n²/k (the soak's
    meltdown, docs/benchmarks.md): each entry's frame is looked at about once."""
    first, looked = _measured_run(monkeypatch)
    run: Run | None = first
    while run is not None:
        _, run = run.split(4096, False)
    assert looked[0] <= 2 * len(first.entries)


def test_recipients_cutting_one_run_at_the_same_room_share_the_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thousand dashboards drain the same committed run in writes of the same size:
    the entries are measured for the first of them only, and every one gets the
    same slices (the soak at 2×, docs/benchmarks.md)."""
    first, looked = _measured_run(monkeypatch)
    drains = []
    for _ in range(100):
        run: Run | None = first
        slices = []
        while run is not None:
            head, run = run.split(4096, False)
            slices.append(bytes(head.frames(False)))
        drains.append(slices)
    assert looked[0] <= 2 * len(first.entries)
    assert all(slices == drains[0] for slices in drains)
    assert b"".join(drains[0]) == bytes(first.frames(False))
    # Other rooms (a reply went first) are cut afresh, and only a few are kept.
    for room in range(1000, 1010):
        head, _ = first.split(room, False)
        assert len(head.frames(False)) <= room


# -- projections (docs/privacy.md) ------------------------------------------------------------

CLICK = '{"type":"click","payload":{"owner_id":5,"IPAddress":"203.0.113.9"}}'
CONVERSION_BODY = '{"type":"conversion","payload":{"owner_id":5}}'


def test_a_projected_frame_is_built_once_per_event_and_projection() -> None:
    projections = Projections()
    dashboard = projections.for_recipient("DASHBOARD", True)
    partner = projections.for_recipient("PARTNER", True)  # the same projection
    assert dashboard is not None
    assert partner is not None
    click = entry(1, CLICK)
    frame = click.view(dashboard, False)
    assert b"203.0.113.9" not in frame
    assert click.view(partner, False) is frame  # shared, not rebuilt
    assert click.view(dashboard, True) is click.view(partner, True)
    assert json.loads(click.view(dashboard, True)[2:])["seq"] == 1
    # No projector: the frame of the bytes as published, the same object.
    assert click.view(None, False) is click.frame(False)
    # Nothing to strip: the original frame, not a re-encoded copy.
    conversion = entry(2, CONVERSION_BODY, "conversion")
    assert conversion.view(dashboard, True) is conversion.frame(True)


@given(st.integers(1, 400), st.booleans())
def test_a_projected_run_is_joined_once_and_splits_at_its_own_frames(
    room: int, with_seq: bool
) -> None:
    dashboard = Projections().for_recipient("DASHBOARD", True)
    assert dashboard is not None
    entries = [entry(i + 1, CLICK if i % 2 else CONVERSION_BODY) for i in range(6)]
    run = Run.of(entries)
    joined = run.frames(with_seq, dashboard)
    assert run.frames(with_seq, dashboard) is joined
    assert bytes(joined) == b"".join(e.view(dashboard, with_seq) for e in entries)
    assert b"203.0.113.9" not in bytes(joined)
    assert b"203.0.113.9" in bytes(run.frames(with_seq))  # the original is untouched
    head, tail = run.split(room, with_seq, dashboard)
    assert run.split(room, with_seq, dashboard) == (head, tail)  # the cut is kept
    rest = b"" if tail is None else bytes(tail.frames(with_seq, dashboard))
    assert bytes(head.frames(with_seq, dashboard)) + rest == bytes(joined)
    assert bytes(head.frames(with_seq, dashboard)) == b"".join(
        e.view(dashboard, with_seq) for e in head.entries
    )
