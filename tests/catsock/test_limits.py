"""Rate limits, size limits, connection limits and slow consumers, over real sockets.

The rate-limit tests run on the lazy fake clock (tests/conftest.py): the
gateway's buckets read ``trio.current_time()``, so tokens come back only as fast
as fake time moves, which is not at all while anything runs, however busy the
machine. What did pass is read from the same clock, so bounds are exact.
"""

from __future__ import annotations

import trio
import trio.testing
import wsproto.events as ev

from .harness import CONVERSION, GatewayFactory, RawClient, envelope


async def test_rate_limit_refuses_with_retry_after_then_closes_abuser(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway(
        limits={"rate": {"CATS": {"per_minute": 60, "burst": 3}}, "abuse_limit": 5}
    )
    with trio.fail_after(10):
        start = trio.current_time()  # before the bucket is made, at CATS's auth
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            for i in range(3):
                await cats.send(envelope("conversion", CONVERSION, "CATS", f"ok-{i}"))
            for _ in range(3):
                assert (await afad.recv())["type"] == "conversion"
            await cats.send(envelope("conversion", CONVERSION, "CATS", "over"))
            error = await cats.recv()
            refilled = (trio.current_time() - start) * 1.0  # one token a second
            assert error["payload"]["error_code"] == "RATE_LIMIT_EXCEEDED"
            # The bucket is empty but for what came back: a whole token is 1 s away.
            assert 1.0 - refilled <= error["payload"]["retry_after"] <= 1.0
            # Keep hammering: after the abuse allowance the gateway hangs up.
            for _ in range(10):
                await cats.send({"type": "ping"})
            assert await cats.closed_code() == 1008
            # The refused message was never routed.
            await afad.send({"type": "ping"})
            assert (await afad.recv())["type"] == "pong"


async def test_identity_bucket_is_shared_across_connections(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway(limits={"rate": {"CATS": {"per_minute": 60, "burst": 2}}})
    with trio.fail_after(10):
        start = trio.current_time()
        async with gw.client("CATS", "cats") as one, gw.client("CATS", "cats") as two:
            await one.send({"type": "ping"})
            await two.send({"type": "ping"})
            assert (await one.recv())["type"] == "pong"
            assert (await two.recv())["type"] == "pong"
            await one.send({"type": "ping"})
            assert (await one.recv())["payload"]["error_code"] == "RATE_LIMIT_EXCEEDED"
    assert trio.current_time() - start < 1.0  # no token came back meanwhile


async def test_oversize_message_gets_error_then_1009(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits={"max_message_size": 1024})
    with trio.fail_after(10):
        async with gw.client("CATS") as cats:
            await cats.send(envelope("conversion", {**CONVERSION, "pad": "x" * 2000}, "CATS", "b"))
            error = await cats.recv()
            assert error["payload"]["error_code"] == "MESSAGE_TOO_LARGE"
            assert await cats.closed_code() == 1009


async def test_huge_message_is_cut_by_the_websocket_layer(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits={"max_message_size": 1024})
    with trio.fail_after(10):
        async with gw.client("CATS") as cats:
            await cats.send("x" * 100_000)
            assert await cats.closed_code() == 1009


async def test_global_connection_limit_answers_503(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits={"max_connections": 1})
    with trio.fail_after(10):
        async with gw.client("CATS"):
            stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
            async with stream:
                raw = RawClient(stream)
                await stream.send_all(raw.ws.send(ev.Request(host="127.0.0.1", target="/ws")))
                event = await raw.next_event()
                assert isinstance(event, ev.RejectConnection)
                assert event.status_code == 503
    assert gw.gateway.stats.refused_full == 1


async def test_allow_list_drops_connections_before_the_handshake(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(allow={"ips": ["10.0.0.0/8"]})
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        async with stream:
            await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            # Dropped without a byte of reply: a clean EOF or a reset.
            try:
                reply = await stream.receive_some(1024)
            except trio.BrokenResourceError:
                reply = b""
            assert reply == b""
    assert gw.gateway.stats.refused_ip == 1
    allowed = await start_gateway(allow={"ips": ["127.0.0.0/8"]})
    with trio.fail_after(10):
        async with allowed.client("CATS"):
            pass


async def test_slow_non_durable_consumer_is_disconnected_with_4001(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(
        limits={"send_queue": 20, "rate_limits_enabled": False},
        delivery={"queue_full_grace": 0},
    )
    big = {**CONVERSION, "pad": "x" * 30_000}
    with trio.fail_after(30):
        async with gw.client("CATS") as cats, gw.client("DASHBOARD") as dashboard:
            # The dashboard stops reading; its socket buffers fill, then its queue.
            i = 0
            while gw.gateway.stats.slow_consumers == 0:
                await cats.send(envelope("conversion", big, "CATS", f"m{i}"))
                i += 1
                await cats.send({"type": "ping"})
                assert (await cats.recv())["type"] == "pong"
            assert await dashboard.closed_code() == 4001
            # The publisher was never slowed down or cut off.
            await cats.send({"type": "ping"})
            assert (await cats.recv())["type"] == "pong"
