"""Hostile HTTP on the one port: huge heads, too many headers, slow clients.

Each is refused or cut within the deadline (``http.request_timeout``, 10 s, on a
fake clock) while a WebSocket client and a ``/health`` client keep working.
"""

from __future__ import annotations

import logging
import struct

import pytest
import trio
import trio.testing

from catsock.transport.frontdoor import MAX_HEAD_BYTES, MAX_HEADERS, MAX_LINE_BYTES

from .harness import GatewayFactory, RunningGateway
from .test_http import body_of, http, publish_head, raw_exchange, status_of

TIMEOUT = 10.0  # http.request_timeout's default


async def _others_work(gw: RunningGateway) -> None:
    """A WebSocket round trip and a /health request both succeed."""
    async with gw.client("AFAD") as afad:
        await afad.send({"type": "ping"})
        assert (await afad.recv())["type"] == "pong"
    reply = await http(gw.port, "GET", "/health")
    assert reply.status == 200


async def _refused_while_others_work(gw: RunningGateway, request: bytes) -> bytes:
    """Send ``request`` from several clients at once, checking others meanwhile."""
    replies: list[bytes] = []

    async def hostile() -> None:
        replies.append(await raw_exchange(gw.port, request))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(hostile)
        await _others_work(gw)
    assert len(set(replies)) == 1, replies
    await _others_work(gw)
    return replies[0]


async def test_two_thousand_headers_are_refused(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    headers = b"".join(b"X-Header-%04d: value\r\n" % i for i in range(2000))
    with trio.fail_after(20):
        reply = await _refused_while_others_work(
            gw, b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        )
    assert status_of(reply) == 431
    assert body_of(reply) == {
        "error_code": "HEADERS_TOO_LARGE",
        "error_message": f"more than {MAX_HEADERS} headers",
    }
    assert gw.gateway.http.front_door.stats.heads_refused == 5


async def test_a_header_line_over_8_kib_is_refused(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    line = b"X-Big: " + b"a" * MAX_LINE_BYTES + b"\r\n"
    with trio.fail_after(20):
        reply = await _refused_while_others_work(
            gw, b"GET /health HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n"
        )
    assert status_of(reply) == 431
    assert "header line" in body_of(reply)["error_message"]


async def test_a_header_line_without_end_is_refused_at_the_limit(
    start_gateway: GatewayFactory,
) -> None:
    # No newline ever comes: the gateway does not wait for one past the limit.
    gw = await start_gateway()
    with trio.fail_after(20):
        async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (MAX_LINE_BYTES + 10))
            reply = await stream.receive_some(65536)
    assert status_of(reply) == 431


async def test_a_request_line_over_8_kib_is_414(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    target = b"/health?" + b"q" * MAX_LINE_BYTES
    with trio.fail_after(20):
        reply = await _refused_while_others_work(
            gw, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    assert status_of(reply) == 414


async def test_a_head_over_16_kib_is_refused(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    # Within the line and header-count limits, over the head limit.
    headers = b"".join(b"X-H%02d: %s\r\n" % (i, b"v" * 400) for i in range(60))
    assert len(headers) > MAX_HEAD_BYTES
    with trio.fail_after(20):
        reply = await _refused_while_others_work(
            gw, b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        )
    assert status_of(reply) == 431


async def test_garbage_is_a_400(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(20):
        reply = await _refused_while_others_work(gw, bytes(range(256)) + b"\r\n\r\n")
    assert status_of(reply) == 400


async def _trickle(port: int, data: bytes) -> tuple[bytes, int]:
    """On a new connection, send ``data`` one byte a second; return the reply and the
    number of bytes sent before the gateway hung up."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        return await _trickle_on(stream, data)


async def _trickle_on(stream: trio.SocketStream, data: bytes) -> tuple[bytes, int]:
    sent = 0
    reply = b""
    async with trio.open_nursery() as nursery:

        async def write() -> None:
            nonlocal sent
            for byte in data:
                try:
                    await stream.send_all(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                sent += 1
                await trio.sleep(1.0)

        nursery.start_soon(write)
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                chunk = b""
            if not chunk:
                break
            reply += chunk
        nursery.cancel_scope.cancel()
    return reply, sent


async def test_a_one_byte_per_second_head_is_cut_at_the_deadline(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway()
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"p" * 100 + b"\r\n\r\n"
    results: list[tuple[bytes, int]] = []

    async def slow() -> None:
        results.append(await _trickle(gw.port, request))

    with trio.fail_after(120):
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(slow)
            # While twenty slow clients hold their connections, others are served.
            await trio.sleep(TIMEOUT / 2)
            await _others_work(gw)
        elapsed = trio.current_time() - start
    for reply, sent in results:
        assert status_of(reply) == 408
        assert body_of(reply)["error_code"] == "REQUEST_TIMEOUT"
        assert sent < len(request)
    assert TIMEOUT <= elapsed <= TIMEOUT + 2
    assert gw.gateway.http.front_door.stats.heads_timed_out == 20


async def test_a_one_byte_per_second_body_is_cut_at_the_deadline(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway()
    head = publish_head(gw.token("cats", "CATS"), "Content-Length: 100")
    with trio.fail_after(120):
        async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
            await stream.send_all(head)
            start = trio.current_time()
            reply, sent = await _trickle_on(stream, b"b" * 100)
            elapsed = trio.current_time() - start
        await _others_work(gw)
    assert status_of(reply) == 408
    assert sent < 100
    assert elapsed <= TIMEOUT + 2
    assert gw.gateway.http.front_door.stats.bodies_timed_out == 1


async def test_head_and_body_share_one_deadline(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    # The head takes 6 s (its last line held back), so the body has the 4 s left of
    # http.request_timeout, not 10 s of its own: it is cut with most of it unsent.
    gw = await start_gateway()
    head = publish_head(gw.token("cats", "CATS"), "Content-Length: 100")
    with trio.fail_after(120):
        async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
            await stream.send_all(head[:-2])
            await trio.sleep(6.0)
            await stream.send_all(head[-2:])
            reply, sent = await _trickle_on(stream, b"b" * 100)
    assert status_of(reply) == 408
    assert sent <= TIMEOUT - 6.0 + 1


async def test_a_silent_connection_is_closed_without_a_reply(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway()
    with trio.fail_after(120):
        async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
            start = trio.current_time()
            assert await stream.receive_some(1024) == b""
            assert TIMEOUT <= trio.current_time() - start <= TIMEOUT + 2
        # An idle keep-alive connection ends the same way, after its last answer.
        async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
            await stream.send_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
            assert reply.count(b"HTTP/1.1") == 1
            assert status_of(reply) == 404
    assert gw.gateway.http.front_door.stats.heads_timed_out == 0


async def test_a_slow_websocket_handshake_is_cut_too(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway()
    handshake = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(120):
        reply, sent = await _trickle(gw.port, handshake)
    assert status_of(reply) == 408
    assert sent < len(handshake)
    assert not gw.gateway.connections
    assert body_of(reply)["error_code"] == "REQUEST_TIMEOUT"


# -- peers that vanish: quiet, counted, never an internal error ------------------------------


async def _reset(stream: trio.SocketStream) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER on, timeout 0)."""
    stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


def _server_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("catsock") and (r.levelno >= logging.WARNING or r.exc_info)
    ]


async def _settled(gw: RunningGateway) -> None:
    """Until every connection the tries opened has ended (their tasks are done)."""
    while gw.gateway.connections or gw.gateway.http.front_door.open_http:
        await trio.testing.wait_all_tasks_blocked(0.05)
    await _others_work(gw)


async def test_a_reset_after_expect_100_continue_is_quiet(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway()
    token = gw.token("cats", "CATS")
    head = publish_head(token, "Content-Length: 5000", "Expect: 100-continue")
    with trio.fail_after(30):
        for _ in range(50):
            stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
            await stream.send_all(head)
            await _reset(stream)
        await _settled(gw)
    assert _server_warnings(caplog) == []
    assert gw.gateway.stats.internal_errors == 0
    door = gw.gateway.http.front_door.stats
    assert door.peer_resets + door.heads_refused >= 50  # each counted somewhere


async def test_a_reset_during_or_after_the_101_is_quiet(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway()
    handshake = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(30):
        for attempt in range(50):
            stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
            await stream.send_all(handshake)
            if attempt % 2:  # after the 101 has arrived, or before
                assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 101 ")
            await _reset(stream)
        await _settled(gw)
    assert _server_warnings(caplog) == []
    stats = gw.gateway.stats
    assert stats.internal_errors == 0
    assert stats.peer_resets.get("websocket", 0) >= 25
