"""The server frame codec (catsock/transport/frames.py), driven with hypothesis.

Messages go through a client-side encoder written here from RFC 6455 §5.2 (masked,
any key, any fragmentation, control frames between fragments), are fed in random
chunks and read with random budgets; what comes out must be exactly what went in.
Arbitrary bytes must yield events or ``FrameError``, never anything else.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catsock.transport.frames import (
    BINARY,
    CLOSE,
    FRAGMENT_OVERHEAD,
    PING,
    PONG,
    TEXT,
    FrameError,
    FrameReader,
    close_frame,
    frame,
    text_frame,
)
from tests.wsframes import client_frame


def read_all(
    reader: FrameReader, data: bytes, chunks: list[int], budget: int
) -> list[tuple[int, object]]:
    events: list[tuple[int, object]] = []
    pos = 0
    sizes = iter(chunks)
    while pos < len(data):
        size = next(sizes, len(data))
        reader.feed(data[pos : pos + size])
        pos += size
        while True:
            events.extend(reader.read(budget))
            if not reader.more:
                break
    return events


masks = st.binary(min_size=4, max_size=4)
control = st.tuples(st.sampled_from([PING, PONG]), st.binary(max_size=125))


@st.composite
def message(draw: st.DrawFn) -> tuple[list[bytes], tuple[int, object], list[tuple[int, object]]]:
    """Wire frames for one message (maybe fragmented, maybe with control frames
    between its fragments), the message event, and the control events in order."""
    if draw(st.booleans()):
        text = draw(st.text(max_size=300))
        kind, value, payload = TEXT, text, text.encode("utf-8")
    else:
        data = draw(st.binary(max_size=300))
        kind, value, payload = BINARY, data, data
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames: list[bytes] = []
    controls: list[tuple[int, object]] = []
    for i, part in enumerate(parts):
        opcode = kind if i == 0 else 0x0
        frames.append(client_frame(opcode, part, fin=i == len(parts) - 1, mask=draw(masks)))
        if i < len(parts) - 1 and draw(st.booleans()):
            op, body = draw(control)
            frames.append(client_frame(op, body, mask=draw(masks)))
            controls.append((op, body))
    return frames, (kind, value), controls


@given(
    st.lists(message(), max_size=6),
    st.lists(st.integers(1, 200), max_size=50),
    st.integers(1, 5),
)
def test_messages_come_out_as_they_went_in(
    messages: list[tuple[list[bytes], tuple[int, object], list[tuple[int, object]]]],
    chunks: list[int],
    budget: int,
) -> None:
    wire = b"".join(b"".join(frames) for frames, _, _ in messages)
    expected: list[tuple[int, object]] = []
    for _, event, controls in messages:
        expected.extend(controls)  # control frames come out before the message they split
        expected.append(event)
    reader = FrameReader(max_size=1 << 20)
    assert read_all(reader, wire, chunks, budget) == expected
    assert reader.buffered == 0


@given(st.binary(max_size=2000), st.lists(st.integers(1, 64), max_size=40))
def test_arbitrary_bytes_give_events_or_a_frame_error(data: bytes, chunks: list[int]) -> None:
    reader = FrameReader(max_size=4096, max_fragments=8)
    code = None
    try:
        read_all(reader, data, chunks, 3)
    except FrameError as error:
        code = error.code
    assert code in (None, 1002, 1007, 1009)


def test_empty_fragment_flood_fails_at_the_fragment_limit_holding_nothing() -> None:
    reader = FrameReader(max_size=1 << 20, max_fragments=1000)
    reader.feed(client_frame(TEXT, b"x", fin=False))
    assert reader.read() == []
    empty = client_frame(0x0, b"", fin=False)
    reader.feed(empty * 998)
    assert reader.read() == []
    assert reader.buffered < 1000 * FRAGMENT_OVERHEAD
    reader.feed(empty * 2)
    with pytest.raises(FrameError) as caught:
        reader.read()
    assert caught.value.code == 1009


def test_fragments_count_an_overhead_toward_the_size_limit() -> None:
    reader = FrameReader(max_size=100, max_fragments=10_000)
    reader.feed(client_frame(TEXT, b"", fin=False))
    fits = 100 // FRAGMENT_OVERHEAD  # empty continuations, each counting the overhead
    reader.feed(client_frame(0x0, b"", fin=False) * fits)
    assert reader.read() == []
    reader.feed(client_frame(0x0, b"", fin=False))
    with pytest.raises(FrameError) as caught:
        reader.read()
    assert caught.value.code == 1009


def test_an_announced_oversize_frame_fails_before_its_payload_arrives() -> None:
    reader = FrameReader(max_size=1000)
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 40) + b"\x00\x00\x00\x00"
    reader.feed(header)
    with pytest.raises(FrameError) as caught:
        reader.read()
    assert caught.value.code == 1009


def test_the_frame_budget_stops_a_read_and_more_says_so() -> None:
    reader = FrameReader(max_size=1000)
    reader.feed(b"".join(client_frame(PING, b"%d" % i) for i in range(5)))
    assert reader.read(2) == [(PING, b"0"), (PING, b"1")]
    assert reader.more
    assert reader.read(10) == [(PING, b"2"), (PING, b"3"), (PING, b"4")]
    assert not reader.more


def test_good_frames_before_a_bad_one_are_returned_first() -> None:
    reader = FrameReader(max_size=1000)
    unmasked_close = b"\x88\x00"  # the seed PHP client's close
    reader.feed(client_frame(TEXT, b"hello") + unmasked_close)
    assert reader.read() == [(TEXT, "hello")]
    with pytest.raises(FrameError) as caught:
        reader.read()
    assert caught.value.code == 1002


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (client_frame(TEXT, b"\xff"), 1007),
        (client_frame(0x3, b""), 1002),
        (client_frame(PING, b"x" * 126), 1002),
        (client_frame(PING, b"", fin=False), 1002),
        (client_frame(0x0, b"x"), 1002),
        (client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b"), 1002),
        (bytes([0xC1, 0x80]) + b"\x00" * 4, 1002),  # RSV1 without an extension
        (bytes([0x81, 0x80 | 126, 0, 5]) + b"\x00" * 4 + b"hello", 1002),  # not minimal
        (client_frame(CLOSE, b"\x03"), 1002),
        (client_frame(CLOSE, struct.pack("!H", 1005)), 1002),
        (client_frame(CLOSE, struct.pack("!H", 999)), 1002),
        (client_frame(CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
        # Headers that stop before their mask key (or mid-length): the rule break is
        # already in the bytes that came, and the peer may never send the rest.
        (bytes([0x81, 0x80 | 126, 0, 5]), 1002),
        (bytes([0x82, 0x80 | 127]) + (5).to_bytes(8, "big"), 1002),
        (bytes([0x82, 0x80 | 127, 0x80]), 1002),
    ],
    ids=[
        "invalid-utf8",
        "reserved-opcode",
        "long-ping",
        "fragmented-ping",
        "orphan-continuation",
        "message-inside-message",
        "rsv1",
        "non-minimal-length",
        "one-byte-close",
        "close-1005",
        "close-999",
        "close-reason-not-utf8",
        "non-minimal-16-bit-length-without-mask",
        "non-minimal-64-bit-length-without-mask",
        "64-bit-length-top-bit-first-byte-only",
    ],
)
def test_rule_breaks_close_with_the_right_code(wire: bytes, code: int) -> None:
    reader = FrameReader(max_size=1000)
    reader.feed(wire)
    with pytest.raises(FrameError) as caught:
        reader.read()
    assert caught.value.code == code


def test_close_frames_parse_and_end_reading() -> None:
    reader = FrameReader(max_size=1000)
    reader.feed(
        client_frame(CLOSE, struct.pack("!H", 4001) + "ça".encode()) + client_frame(TEXT, b"x")
    )
    assert reader.read() == [(CLOSE, (4001, "ça"))]
    reader.feed(client_frame(TEXT, b"after"))
    assert reader.read() == []


def test_server_frames_are_unmasked_with_minimal_lengths() -> None:
    assert frame(TEXT, b"hi") == b"\x81\x02hi"
    assert frame(BINARY, b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"
    assert frame(BINARY, b"x" * 70000)[:10] == b"\x82\x7f" + struct.pack("!Q", 70000)
    assert text_frame("é") == b"\x81\x02\xc3\xa9"
    assert close_frame(None) == b"\x88\x00"
    long_reason = close_frame(1000, "é" * 100)
    assert len(long_reason) - 2 <= 125
    long_reason[4:].decode("utf-8")  # cut on a character boundary
