"""Attacks below the JSON: fragment floods, huge frame headers, oversize messages,
ping floods and invalid UTF-8, each on raw sockets while the canary runs."""

from __future__ import annotations

import json

import pytest
import trio

from .conftest import Arena
from .tools import Wire, auth_frame, authenticate, frame, text_frame, ws_from

#: How long a flooding attacker keeps at it (reconnecting when cut).
FLOOD_SECONDS = 1.5
MAX_SIZE = 64 * 1024  # limits.max_message_size's default
TEXT, BINARY, CONTINUATION, PING = 0x1, 0x2, 0x0, 0x9


async def flood(wire: Wire, first: bytes, block: bytes, seconds: float) -> None:
    """Send ``first``, then ``block`` again and again, until the gateway ends the
    connection or ``seconds`` pass; the gateway's frames are read meanwhile."""
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                try:
                    await wire.stream.send_all(first)
                    while True:
                        await wire.stream.send_all(block)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the gateway hung up; the reader sees how

            nursery.start_soon(send)
            await wire.wait_ended()
            nursery.cancel_scope.cancel()


# -- fragment floods (issue 16, failure 1) ---------------------------------------------------

EMPTY_FRAGMENTS = frame(CONTINUATION, b"", fin=False) * (64 * 1024 // 6)


@pytest.mark.parametrize(
    ("connections", "with_token"),
    [(1, False), (1, True), (10, False)],
    ids=["one-without-token", "one-with-token", "ten-without-token"],
)
async def test_empty_fragment_flood_is_cut_at_the_fragment_limit(
    arena: Arena, connections: int, with_token: bool
) -> None:
    """A text frame with FIN=0, then empty continuations that never end: the frame
    reader counts them (``limits.max_fragments``) and closes 1009."""
    codes: list[int | None] = []
    async with arena.attack() as target:
        token = await target.token("mallory", "CATS") if with_token else None

        async def attacker() -> None:
            with trio.move_on_after(FLOOD_SECONDS):
                while True:
                    wire = await ws_from(target.port)
                    async with wire.stream:
                        if token is not None:
                            await authenticate(wire, token, "CATS")
                        await flood(wire, frame(TEXT, b"x", fin=False), EMPTY_FRAGMENTS, 5.0)
                    codes.append(wire.close_code if wire.ended else -1)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(connections):
                    nursery.start_soon(attacker)
    assert codes, "no attacking connection was cut within the flood"
    assert set(codes) == {1009}, codes


# -- huge frame headers -------------------------------------------------------------------

HUGE_LENGTHS = {2**62: 1009, 2**63 - 1: 1009, 2**63: 1002, 4 * MAX_SIZE + 1: 1009}


async def test_a_huge_64_bit_length_is_refused_before_its_payload(arena: Arena) -> None:
    """Frame headers announcing 2^62, 2^63 - 1 and 2^63 (the top bit RFC 6455 keeps
    clear) bytes, and just over 4 x max_message_size, anonymous and authenticated:
    each closes at once (1009, or 1002 for the top bit), the payload never awaited."""
    codes: dict[tuple[int, bool], int | None] = {}
    async with arena.attack() as target:
        token = await target.token("mallory", "CATS")

        async def one(length: int, authenticated: bool) -> None:
            wire = await ws_from(target.port)
            async with wire.stream:
                if authenticated:
                    await authenticate(wire, token, "CATS")
                # The header and a little payload: the gateway must not wait for the rest.
                await wire.stream.send_all(frame(TEXT, b"", length=length, width=64) + b"{" * 100)
                await wire.wait_ended()
            codes[length, authenticated] = wire.close_code

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for length in HUGE_LENGTHS:
                    for authenticated in (False, True):
                        nursery.start_soon(one, length, authenticated)
    assert codes == {(n, a): code for n, code in HUGE_LENGTHS.items() for a in (False, True)}


# -- oversize messages ----------------------------------------------------------------------

#: (size of the message, fragments it comes in, whether an error precedes the 1009)
OVERSIZE = {
    "over-whole": (MAX_SIZE + 100, 1, True),
    "over-in-100-fragments": (MAX_SIZE + 100, 100, True),
    "over-4x-whole": (5 * MAX_SIZE, 1, False),
    "over-4x-in-500-fragments": (5 * MAX_SIZE, 500, False),
    "4-MiB-whole": (64 * MAX_SIZE, 1, False),
}


def _fragmented(size: int, fragments: int) -> bytes:
    data = json.dumps({"type": "ping", "pad": "x" * size}).encode()
    step = -(-len(data) // fragments)
    parts = [data[i : i + step] for i in range(0, len(data), step)]
    return b"".join(
        frame(TEXT if i == 0 else CONTINUATION, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    )


async def test_an_oversize_message_closes_1009(arena: Arena) -> None:
    """Over ``max_message_size``: MESSAGE_TOO_LARGE and 1009; over 4 times that, the
    frame reader closes 1009 by itself; whole or in fragments alike."""
    outcomes: dict[str, tuple[int | None, list[str]]] = {}
    async with arena.attack() as target:
        token = await target.token("mallory", "CATS")

        async def one(name: str, size: int, fragments: int) -> None:
            wire = await ws_from(target.port)
            async with wire.stream:
                await authenticate(wire, token, "CATS")
                await flood(wire, _fragmented(size, fragments), b"", 10.0)
                await wire.wait_ended()
            errors = [json.loads(t)["payload"]["error_code"] for t in wire.texts]
            outcomes[name] = (wire.close_code, errors)

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                for name, (size, fragments, _) in OVERSIZE.items():
                    nursery.start_soon(one, name, size, fragments)
    assert outcomes == {
        name: (1009, ["MESSAGE_TOO_LARGE"] if error else [])
        for name, (_, _, error) in OVERSIZE.items()
    }


# -- ping floods ----------------------------------------------------------------------------


async def test_a_ping_frame_flood_that_never_reads_its_pongs(arena: Arena) -> None:
    """125-byte pings as fast as the socket takes them, no pong read: the gateway
    stops reading once the unread pongs pass their bound (TCP pushes back on the
    attacker), and the connection still works once the attacker reads again."""
    pings = frame(PING, b"p" * 125) * 400  # 52 KiB
    async with arena.attack() as target:
        token = await target.token("mallory", "CATS")
        sent = at = 0
        with trio.fail_after(20):
            wire = await ws_from(target.port)
            async with wire.stream:
                # Raw sends, so the flood's end never cuts a frame in two.
                with trio.move_on_after(FLOOD_SECONDS):
                    while True:
                        n = await wire.stream.socket.send(memoryview(pings)[at:])
                        sent += n
                        at = (at + n) % len(pings)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wire.stream.send_all, pings[at:] + auth_frame(token, "CATS"))
                    while not wire.texts and not wire.ended:
                        await wire._pump()
    assert sent > len(pings)
    assert not wire.ended, wire.close_code
    assert json.loads(wire.texts[0])["type"] == "auth_success"


async def test_a_json_ping_flood_is_rate_limited_then_closed(arena: Arena) -> None:
    async with arena.attack() as target:
        with trio.fail_after(15):
            wire = await ws_from(target.port)
            await authenticate(wire, await target.token("mallory", "CATS"), "CATS")
            await flood(wire, b"", text_frame('{"type":"ping"}') * 1000, 10.0)
    assert wire.close_code == 1008
    codes = {json.loads(t).get("payload", {}).get("error_code") for t in wire.texts}
    assert "RATE_LIMIT_EXCEEDED" in codes


async def test_a_json_ping_flood_before_auth_ends_at_the_sixth_message(arena: Arena) -> None:
    async with arena.attack() as target:
        with trio.fail_after(10):
            wire = await ws_from(target.port)
            await flood(wire, b"", text_frame('{"type":"ping"}') * 100, 5.0)
    assert wire.close_code == 1008
    errors = [json.loads(t)["payload"]["error_code"] for t in wire.texts]
    assert set(errors) == {"AUTH_REQUIRED"}
    assert 5 <= len(errors) <= 6


# -- invalid UTF-8 --------------------------------------------------------------------------

#: name: (frames, close code, the error sent before it)
BAD_UTF8: dict[str, tuple[list[bytes], int, str | None]] = {
    "text": ([frame(TEXT, b'{"type":"ping","x":"\xff\xfe"}')], 1007, None),
    "text-split-in-a-character": (
        [frame(TEXT, b'{"type":"ping","x":"\xe3\x81', fin=False), frame(CONTINUATION, b'x"}')],
        1007,
        None,
    ),
    "surrogate": ([frame(TEXT, b'{"type":"ping","x":"\xed\xa0\x80"}')], 1007, None),
    "overlong": ([frame(TEXT, b'{"type":"ping","x":"\xc0\xaf"}')], 1007, None),
    "binary": ([frame(BINARY, b'{"type":"ping","x":"\xff"}')], 1007, "INVALID_MESSAGE"),
}


async def test_invalid_utf8_closes_1007(arena: Arena) -> None:
    """Text that is not UTF-8 (a bad byte, a character cut across fragments, a
    surrogate, an overlong form) closes 1007 without an error; a binary frame that
    is not UTF-8 gets INVALID_MESSAGE first. Anonymous and authenticated alike."""
    outcomes: dict[tuple[str, bool], tuple[int | None, list[str]]] = {}
    async with arena.attack() as target:
        token = await target.token("mallory", "CATS")

        async def one(name: str, authenticated: bool) -> None:
            wire = await ws_from(target.port)
            async with wire.stream:
                if authenticated:
                    await authenticate(wire, token, "CATS")
                await wire.stream.send_all(b"".join(BAD_UTF8[name][0]))
                await wire.wait_ended()
            errors = [json.loads(t)["payload"]["error_code"] for t in wire.texts]
            outcomes[name, authenticated] = (wire.close_code, errors)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for name in BAD_UTF8:
                    for authenticated in (False, True):
                        nursery.start_soon(one, name, authenticated)
    assert outcomes == {
        (name, a): (code, [error] if error else [])
        for name, (_, code, error) in BAD_UTF8.items()
        for a in (False, True)
    }
