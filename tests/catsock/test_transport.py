"""Heartbeats, TLS and keepalive: the transport-level behaviour of a connection."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from pathlib import Path

import trio
import trio.testing
import trio_websocket
import wsproto.events as ev

from tests.clocks import wait_quiet

from .harness import GatewayFactory, RawClient, tls_config


async def _raw_auth(gw_port: int, token: str, extensions: dict[str, object] | None) -> RawClient:
    raw = await RawClient.connect(gw_port)
    auth: dict[str, object] = {"type": "auth", "token": token, "client_type": "AFAD"}
    if extensions is not None:
        auth["extensions"] = extensions
    await raw.send_text(json.dumps(auth))
    reply = await raw.next_event()
    assert isinstance(reply, ev.TextMessage)
    assert json.loads(reply.data)["type"] == "auth_success"
    return raw


async def test_negotiated_heartbeat_pings_and_closes_a_silent_peer(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway()
    token = gw.token("afad", "AFAD")
    with trio.fail_after(120):
        raw = await _raw_auth(gw.port, token, {"heartbeat": {"interval": 5}})
        start = trio.current_time()
        pings = 0
        while True:
            event = await raw.next_event()
            if isinstance(event, ev.Ping):
                pings += 1  # deliberately never answered
            elif isinstance(event, ev.CloseConnection):
                break
        assert event.code == 4000
        assert pings == 1  # at 5 s; unanswered, and nothing else came
        assert trio.current_time() - start == 10  # two silent intervals
        await raw.aclose()


async def test_negotiated_heartbeat_keeps_a_responsive_peer(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway()
    with trio.fail_after(600):
        async with gw.client("AFAD", extensions={"heartbeat": {"interval": 1}}) as afad:
            # Clamped to the configured minimum (5 s).
            assert afad.auth_reply == {
                **afad.auth_reply,
                "extensions": {"heartbeat": {"interval": 5.0}},
            }
            # trio-websocket answers pings by itself; 100 s is 20 intervals.
            await trio.sleep(100)
            await afad.send({"type": "ping"})
            assert (await afad.recv())["type"] == "pong"


async def test_legacy_client_gets_no_protocol_pings_and_may_idle_for_hours(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    # Seed 000's PHP client answers a protocol ping with an unmasked pong, which
    # breaks the connection; its receiver idles for hours. Neither may hurt it.
    gw = await start_gateway()
    token = gw.token("afad", "AFAD")
    with trio.fail_after(4 * 3600):
        raw = await _raw_auth(gw.port, token, None)
        with trio.move_on_after(3 * 3600):
            event = await raw.next_event()
            raise AssertionError(f"a legacy client received {event!r}")
        await raw.send_text('{"type":"ping"}')
        reply = await raw.next_event()
        assert isinstance(reply, ev.TextMessage)
        assert json.loads(reply.data)["type"] == "pong"
        await raw.aclose()


async def test_tcp_keepalive_is_set_on_accepted_sockets(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(keepalive={"idle": 42, "interval": 7, "count": 3})
    with trio.fail_after(10):
        async with gw.client("AFAD"):
            (conn,) = gw.gateway.connections
            # A duplicate of the gateway's descriptor: the options are the socket's.
            with socket.fromfd(conn.link.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 42
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


async def test_tls_serves_wss_and_refuses_plain_text(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    ca, tls = tls_config(tmp_path)
    gw = await start_gateway(tls=tls)
    token = gw.token("cats", "CATS")
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    url = f"wss://127.0.0.1:{gw.port}/ws"
    with trio.fail_after(10):
        async with trio_websocket.open_websocket_url(url, ssl_context=client_context) as ws:
            await ws.send_message(
                json.dumps({"type": "auth", "token": token, "client_type": "CATS"})
            )
            assert json.loads(await ws.get_message())["type"] == "auth_success"
        # A client that does not speak TLS gets no WebSocket.
        async with await trio.open_tcp_stream("127.0.0.1", gw.port) as plain:
            await plain.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                reply = await plain.receive_some(1024)
            except trio.BrokenResourceError:
                reply = b""
            assert b"101" not in reply


async def test_concurrent_handshakes_never_exceed_max_connections(
    start_gateway: GatewayFactory,
) -> None:
    """Issue 20, bug 5: the limit was checked before the handshake's await and the
    connection counted after it, so handshakes arriving together all passed."""
    gw = await start_gateway(limits={"max_connections": 5})
    request = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(20):
        streams = [await trio.open_tcp_stream("127.0.0.1", gw.port) for _ in range(30)]
        statuses: list[bytes] = []

        async def handshake(stream: trio.SocketStream) -> None:
            await stream.send_all(request)
            head = b""
            while b"\r\n" not in head:
                data = await stream.receive_some(4096)
                if not data:
                    break
                head += data
            statuses.append(head.split(b" ", 2)[1] if head else b"closed")

        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(handshake, stream)
        for stream in streams:
            await stream.aclose()
    assert statuses.count(b"101") == 5, statuses
    assert statuses.count(b"503") == 25, statuses


async def test_a_handshake_that_completes_during_shutdown_does_not_join(
    start_gateway: GatewayFactory,
) -> None:
    """Issue 20, bug 6: a handshake finishing after shutdown() had closed everyone
    joined without its 1001 and made shutdown wait out ``shutdown_timeout``. Half a
    handshake is in the front door when shutdown starts; the rest comes after."""
    gw = await start_gateway(shutdown_timeout=30)
    head = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
            await stream.send_all(head[:40])
            await wait_quiet()  # the front door holds the half head
            async with trio.open_nursery() as nursery:
                nursery.start_soon(gw.gateway.shutdown)
                await wait_quiet()
                await stream.send_all(head[40:])
                reply = b""
                with contextlib.suppress(trio.BrokenResourceError):
                    while data := await stream.receive_some(4096):
                        reply += data
        # Refused, not joined; and shutdown did not wait for it (fail_after above).
        assert not reply.startswith(b"HTTP/1.1 101"), reply
    assert not gw.gateway.connections


async def test_a_heartbeat_never_pings_a_connection_that_is_closing(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    """Issue 20, bug 7: a heartbeat ping during the close handshake raised
    ConnectionClosed and was logged as an internal error (the suite fails on those).
    Here the gateway shuts down and the client never answers the close: the
    heartbeat's next ping time passes during the close grace."""
    gw = await start_gateway(heartbeat={"min_interval": 1})
    token = gw.token("afad", "AFAD")
    with trio.fail_after(120):
        raw = await _raw_auth(gw.port, token, {"heartbeat": {"interval": 3}})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gw.gateway.shutdown)
            events = []
            while (event := await raw.next_event()) is not None:
                events.append(event)
        closes = [e for e in events if isinstance(e, ev.CloseConnection)]
        assert [c.code for c in closes] == [1001]
        after = events[events.index(closes[0]) + 1 :]
        assert not any(isinstance(e, ev.Ping) for e in after)
        assert trio.current_time() > 3  # a ping was due while it closed (5 s of grace)
        await raw.aclose()
