"""Per-address limits and failed-auth throttling on a live gateway, over real sockets.

Clients come from other loopback addresses (127.0.0.2, 127.0.0.3, ...; Linux
routes all of 127/8 to ``lo``), since 127.0.0.1 is exempt by default
(``guard.exempt``). Time-driven parts run on ``lazy_clock``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import attrs
import pytest
import trio
import trio.testing
import wsproto.events as ev

from .harness import GatewayFactory, RawClient, tls_config
from .test_http import HttpClient, Reply, http
from .test_metrics import scrape, value


async def connect_from(port: int, source: str) -> trio.SocketStream:
    """A TCP connection to the gateway on 127.0.0.1 from the address ``source``."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


@attrs.frozen
class Refused:
    status: int
    headers: dict[str, str]
    body: bytes


async def handshake(
    port: int, source: str, headers: dict[str, str] | None = None
) -> RawClient | Refused:
    """A WebSocket handshake from ``source``: the open client, or the refusal."""
    client = RawClient(await connect_from(port, source))
    extra = list((headers or {}).items())
    request = ev.Request(host="127.0.0.1", target="/ws", extra_headers=extra)
    await client.stream.send_all(client.ws.send(request))
    event = await client.next_event()
    if isinstance(event, ev.AcceptConnection):
        return client
    assert isinstance(event, ev.RejectConnection), event
    status = event.status_code
    names = {k.decode().lower(): v.decode() for k, v in event.headers}
    body = b""
    while True:
        data = await client.next_event()
        if data is None:
            break
        assert isinstance(data, ev.RejectData)
        body += data.data
        if data.body_finished:
            break
    await client.aclose()
    return Refused(status, names, body)


def assert_address_refusal(refused: RawClient | Refused, message: str) -> None:
    assert isinstance(refused, Refused), "the handshake was accepted"
    assert refused.status == 503
    assert refused.headers["retry-after"] == "5"
    assert json.loads(refused.body) == {"error_code": "CONNECTION_LIMIT", "error_message": message}


async def auth_from(
    port: int, source: str, token: str, headers: dict[str, str] | None = None
) -> tuple[str, int | None]:
    """Authenticate as CATS from ``source``: the reply's type (an error's code), and
    the close code that followed an error."""
    client = await handshake(port, source, headers)
    assert isinstance(client, RawClient), client
    try:
        await client.send_text(json.dumps({"type": "auth", "token": token, "client_type": "CATS"}))
        event = await client.next_event()
        assert isinstance(event, ev.TextMessage), event
        reply = json.loads(event.data)
        if reply["type"] != "error":
            return reply["type"], None
        closing = await client.next_event()
        assert isinstance(closing, ev.CloseConnection), closing
        return reply["payload"]["error_code"], closing.code
    finally:
        await client.aclose()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Until the gateway's tasks have made ``condition`` true (no sleeping on time)."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked(0.01)


async def http_from(
    port: int, source: str, method: str, target: str, headers: dict[str, str] | None = None
) -> Reply:
    client = HttpClient(await connect_from(port, source), f"127.0.0.1:{port}")
    try:
        return await client.request(method, target, headers=headers)
    finally:
        await client.aclose()


def warnings_about(caplog: pytest.LogCaptureFixture, address: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "catsock.guard" and r.levelno == logging.WARNING and address in r.getMessage()
    ]


# -- connections per address ------------------------------------------------------------------


async def test_an_address_holds_at_most_its_share_of_unauthenticated_websockets(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(guard={"max_unauthenticated_per_address": 2})
    token = gw.token("cats", "CATS")
    opened: list[RawClient] = []
    with trio.fail_after(20):
        try:
            for _ in range(2):
                client = await handshake(gw.port, "127.0.0.2")
                assert isinstance(client, RawClient)
                opened.append(client)
            for _ in range(4):
                assert_address_refusal(
                    await handshake(gw.port, "127.0.0.2"),
                    "too many unauthenticated WebSockets from your address",
                )
            # Another address has a share of its own.
            other = await handshake(gw.port, "127.0.0.3")
            assert isinstance(other, RawClient)
            opened.append(other)
            # A connection that authenticated no longer counts.
            await opened[0].send_text(
                json.dumps({"type": "auth", "token": token, "client_type": "CATS"})
            )
            event = await opened[0].next_event()
            assert isinstance(event, ev.TextMessage)
            assert json.loads(event.data)["type"] == "auth_success"
            again = await handshake(gw.port, "127.0.0.2")
            assert isinstance(again, RawClient)
            opened.append(again)
            samples = await scrape(gw)
        finally:
            for client in opened:
                await client.aclose()
    refused = value(samples, "catsock_connections_refused_total", reason="address_unauthenticated")
    assert refused == 4
    assert len(warnings_about(caplog, "127.0.0.2")) == 1
    assert gw.gateway.stats.internal_errors == 0


async def test_an_address_holds_at_most_its_share_of_connections(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(guard={"max_connections_per_address": 3})
    guard = gw.gateway.guard
    with trio.fail_after(20):
        idle = [await connect_from(gw.port, "127.0.0.2") for _ in range(2)]
        ws = await handshake(gw.port, "127.0.0.2")
        assert isinstance(ws, RawClient)
        await wait_until(lambda: guard.held("127.0.0.2")[0] == 3)
        # The fourth, HTTP or WebSocket, is answered at once, before it is read.
        refused = await handshake(gw.port, "127.0.0.2")
        assert_address_refusal(refused, "too many connections from your address")
        reply = await http_from(gw.port, "127.0.0.2", "GET", "/health")
        assert reply.status == 503
        assert reply.headers["retry-after"] == "5"
        # Other addresses, and 127.0.0.1 (exempt), are served.
        assert (await http_from(gw.port, "127.0.0.3", "GET", "/health")).status == 200
        assert (await http(gw.port, "GET", "/health")).status == 200
        # A connection that leaves gives its slot back.
        await idle[0].aclose()
        await wait_until(lambda: guard.held("127.0.0.2")[0] == 2)
        assert (await http_from(gw.port, "127.0.0.2", "GET", "/health")).status == 200
        samples = await scrape(gw)
        await idle[1].aclose()
        await ws.aclose()
    assert value(samples, "catsock_connections_refused_total", reason="address_connections") == 2
    assert len(warnings_about(caplog, "127.0.0.2")) == 1


async def test_a_tls_connection_over_the_share_is_closed_unanswered(
    start_gateway: GatewayFactory, tmp_path: object
) -> None:
    _, tls = tls_config(tmp_path)  # type: ignore[arg-type]
    gw = await start_gateway(tls=tls, guard={"max_connections_per_address": 1})
    with trio.fail_after(20):
        async with await connect_from(gw.port, "127.0.0.2"):
            await wait_until(lambda: gw.gateway.guard.held("127.0.0.2")[0] == 1)
            async with await connect_from(gw.port, "127.0.0.2") as second:
                # No TLS handshake is spent on it: it is closed at once.
                assert await second.receive_some(1024) == b""
    assert gw.gateway.guard.statistics().refused_connections == 1


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_share(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(
        guard={"trusted_proxies": ["127.0.0.2"], "max_unauthenticated_per_address": 1}
    )
    opened: list[RawClient] = []
    with trio.fail_after(20):
        try:
            for client in ("198.51.100.7", "198.51.100.8"):
                forwarded = {"X-Forwarded-For": f"203.0.113.66, {client}"}
                first = await handshake(gw.port, "127.0.0.2", forwarded)
                assert isinstance(first, RawClient)
                opened.append(first)
                assert_address_refusal(
                    await handshake(gw.port, "127.0.0.2", forwarded),
                    "too many unauthenticated WebSockets from your address",
                )
            # A peer that is not a trusted proxy cannot borrow someone else's share.
            spoofed = await handshake(gw.port, "127.0.0.3", {"X-Forwarded-For": "198.51.100.9"})
            assert isinstance(spoofed, RawClient)
            opened.append(spoofed)
            assert_address_refusal(
                await handshake(gw.port, "127.0.0.3", {"X-Forwarded-For": "198.51.100.10"}),
                "too many unauthenticated WebSockets from your address",
            )
        finally:
            for client in opened:
                await client.aclose()


# -- failed authentication ------------------------------------------------------------------

THROTTLE = {
    "auth_free_failures": 1,
    "auth_delay": 1.0,
    "auth_max_delay": 2.0,
    "auth_lockout_after": 3,
    "auth_lockout": 60.0,
}


async def test_failed_auths_slow_down_then_lock_the_address_out(
    start_gateway: GatewayFactory,
    lazy_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await start_gateway(guard=THROTTLE)
    token = gw.token("cats", "CATS")
    events = {"authorization": f"Bearer {token}"}
    with trio.fail_after(300):
        for _ in range(3):
            assert await auth_from(gw.port, "127.0.0.2", "cs_" + "x" * 43) == ("AUTH_FAILED", 1008)
        # Locked out: from there not even the good token is checked, on either path.
        assert await auth_from(gw.port, "127.0.0.2", token) == ("RATE_LIMIT_EXCEEDED", 1008)
        locked = await http_from(gw.port, "127.0.0.2", "GET", "/api/events", events)
        assert locked.status == 429
        assert locked.json()["error_code"] == "RATE_LIMIT_EXCEEDED"
        assert 1 <= int(locked.headers["retry-after"]) <= 60
        # The token's owner elsewhere is never locked out.
        assert await auth_from(gw.port, "127.0.0.3", token) == ("auth_success", None)
        assert (await http_from(gw.port, "127.0.0.3", "GET", "/api/events", events)).status == 200
        samples = await scrape(gw)
        await trio.sleep(60)  # the lockout passes (fake time)
        assert await auth_from(gw.port, "127.0.0.2", token) == ("auth_success", None)
    stats = gw.gateway.guard.statistics()
    assert (stats.auth_delayed, stats.auth_lockouts, stats.auth_refused_locked) == (2, 1, 2)
    assert value(samples, "catsock_auth_lockouts_total") == 1
    assert value(samples, "catsock_auth_locked_out_total") == 2
    assert value(samples, "catsock_auth_delayed_total") == 2
    assert value(samples, "catsock_auth_locked_addresses") == 1
    assert value(samples, "catsock_auth_failures_total") == 3
    assert warnings_about(caplog, "127.0.0.2") == [
        "locking out 127.0.0.2 for 60s after 3 failed authentications "
        "(logged once a minute per address)"
    ]


async def test_failed_bearer_tokens_count_per_forwarded_client(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway(guard={**THROTTLE, "trusted_proxies": ["127.0.0.2"]})
    token = gw.token("afad", "AFAD")
    good = {"authorization": f"Bearer {token}"}
    with trio.fail_after(300):
        for _ in range(3):
            bad = {"authorization": "Bearer cs_wrong", "x-forwarded-for": "198.51.100.7"}
            reply = await http_from(gw.port, "127.0.0.2", "GET", "/api/events", bad)
            assert reply.status == 401
        as_guesser = {**good, "x-forwarded-for": "198.51.100.7"}
        assert (
            await http_from(gw.port, "127.0.0.2", "GET", "/api/events", as_guesser)
        ).status == 429
        as_other = {**good, "x-forwarded-for": "198.51.100.8"}
        assert (await http_from(gw.port, "127.0.0.2", "GET", "/api/events", as_other)).status == 200


async def test_no_throttle_on_exempt_addresses(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(guard=THROTTLE)
    token = gw.token("cats", "CATS")
    with trio.fail_after(20):
        for _ in range(5):
            assert await auth_from(gw.port, "127.0.0.1", "cs_nope") == ("AUTH_FAILED", 1008)
        assert await auth_from(gw.port, "127.0.0.1", token) == ("auth_success", None)
    assert gw.gateway.guard.statistics().auth_delayed == 0
