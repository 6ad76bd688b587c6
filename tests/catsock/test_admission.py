"""Admission (catsock/admission.py): an overloaded gateway holds publishers' reads,
refuses HTTP publishes with 503 after a bounded wait, and lets recipients go on;
and the backlog it reports.

Overload is made by a task that keeps the event loop busy (a blocking sleep
between checkpoints), which is what a saturated core looks like from inside
the loop; everything else is a real gateway on a real socket. The gateway
measures only while events arrive, so each test publishes one first.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import trio
import wsproto.events as ev

from catsock import httpapi
from catsock.admission import Admission
from catsock.entries import PRIORITIES

from .harness import CONVERSION, GatewayFactory, RawClient, RunningGateway, envelope
from .test_http import bearer, http


def test_overloaded_past_the_limit_and_calm_again_under_half_of_it() -> None:
    admission = Admission(0.2)
    admission.observe(0.2, now=1.0)
    assert not admission.overloaded  # at the limit is not past it
    admission.observe(0.25, now=2.0)
    assert admission.overloaded
    admission.observe(0.15, now=3.0)
    assert admission.overloaded  # under the limit, not yet under half of it
    admission.observe(0.1, now=4.5)
    assert not admission.overloaded
    assert admission.episodes == 1
    assert admission.held_seconds == pytest.approx(2.5)


async def _hog(stop: trio.Event) -> None:
    while not stop.is_set():
        time.sleep(0.06)  # the event loop runs nothing else meanwhile  # noqa: ASYNC251
        await trio.lowlevel.checkpoint()


async def _overloaded(gw: RunningGateway) -> None:
    while not gw.gateway.delivery.admission.overloaded:  # noqa: ASYNC110 (no event for it)
        await trio.sleep(0.01)


async def test_a_websocket_publisher_is_held_while_recipients_go_on(
    start_gateway: GatewayFactory, nursery: trio.Nursery
) -> None:
    gw = await start_gateway(
        delivery={"admission_lag": 0.02}, heartbeat={"min_interval": 0.1}
    )
    with trio.fail_after(20):
        async with (
            gw.client("AFAD") as afad,
            gw.client("CATS", extensions={"acks": True, "heartbeat": {"interval": 0.3}}) as cats,
        ):
            stop = trio.Event()
            nursery.start_soon(_hog, stop)
            # An event arriving starts the measuring, which finds the gateway behind.
            await cats.send(envelope("conversion", CONVERSION, "CATS", "e1"))
            assert (await cats.recv())["message_id"] == "e1"
            assert json.loads(await afad.recv_text())["message_id"] == "e1"
            await _overloaded(gw)
            await cats.send(envelope("conversion", CONVERSION, "CATS", "e2"))
            await trio.sleep(2.0)  # six heartbeat intervals: the hold is not silence
            assert gw.gateway.delivery.head == 1
            await afad.send({"type": "ping"})
            assert (await afad.recv())["type"] == "pong"  # a recipient's reads go on
            stop.set()
            accepted = await cats.recv()
            assert (accepted["type"], accepted["message_id"]) == ("accepted", "e2")
            assert json.loads(await afad.recv_text())["message_id"] == "e2"
    assert gw.gateway.delivery.admission.episodes >= 1


async def test_an_http_publish_waits_then_gets_503_with_retry_after(
    start_gateway: GatewayFactory, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpapi, "OVERLOAD_WAIT", 0.5)
    gw = await start_gateway(delivery={"admission_lag": 0.02})
    cats = gw.token("cats", "CATS")
    text = envelope("conversion", CONVERSION, "CATS", "h1").encode()
    with trio.fail_after(20):
        stop = trio.Event()
        nursery.start_soon(_hog, stop)
        first = envelope("conversion", CONVERSION, "CATS", "h0").encode()
        reply = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=first)
        assert reply.status == 202
        await _overloaded(gw)
        reply = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=text)
        assert reply.status == 503
        assert reply.json()["error_code"] == "OVERLOADED"
        assert reply.headers["retry-after"] == "1"
        metrics = (await http(gw.port, "GET", "/metrics")).body.decode()
        assert "catsock_overloaded 1.0" in metrics
        stop.set()
        await gw.gateway.delivery.admission.wait()
        reply = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=text)
        assert reply.status == 202
        assert reply.json()["seq"] == 2  # the refused one was never published


async def test_the_backlog_counts_what_waits_for_a_socket_by_priority(
    start_gateway: GatewayFactory,
) -> None:
    """A DASHBOARD that stops reading holds conversions (HIGH) in its queue: the
    backlog counts them, /metrics shows them, and they leave it with the connection."""
    gw = await start_gateway()
    token = gw.token("dash", "DASHBOARD")
    backlog = gw.gateway.stats.backlog
    high = PRIORITIES["HIGH"]
    with trio.fail_after(30):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", gw.port))
        dash = RawClient(trio.SocketStream(sock))
        await dash.stream.send_all(dash.ws.send(ev.Request(host="127.0.0.1", target="/ws")))
        assert isinstance(await dash.next_event(), ev.AcceptConnection)
        auth = {"type": "auth", "token": token, "client_type": "DASHBOARD"}
        await dash.send_text(json.dumps(auth))
        assert isinstance(await dash.next_event(), ev.TextMessage)  # auth_success; then no reads
        async with gw.client("CATS") as cats:
            n = 0
            while not backlog[high]:
                payload = {**CONVERSION, "pad": "x" * 30_000}
                await cats.send(envelope("conversion", payload, "CATS", f"c{n}"))
                n += 1
                await cats.send({"type": "ping"})
                assert (await cats.recv())["type"] == "pong"
                await trio.sleep(0.2)  # a few rounds of the pacer: what remains waits
            metrics = (await http(gw.port, "GET", "/metrics")).body.decode()
            assert f'catsock_backlog_events{{priority="HIGH"}} {backlog[high]:.1f}' in metrics
            assert 0 < backlog[high] <= n
            await dash.aclose()
            while any(backlog):  # noqa: ASYNC110 (no event for it)
                await trio.sleep(0.01)
