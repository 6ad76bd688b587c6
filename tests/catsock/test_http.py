"""The plain-HTTP side of the one port: routing, statuses, keep-alive, health, origin checks.

Every test speaks HTTP over a real loopback socket, with h11 as the client
(``HttpClient``) or raw bytes where the request must be malformed.
"""

from __future__ import annotations

import json
import re
import sqlite3
import ssl
import tracemalloc
from pathlib import Path
from typing import Any

import attrs
import h11
import pytest
import trio
import trio.testing
import trio_websocket
import wsproto.events as ev

from catsock import static_files
from catsock.config import ConfigError
from catsock.transport.frontdoor import CHUNK_COST
from tests.clocks import wait_quiet

from .harness import (
    ADWARE_UPDATE,
    CONVERSION,
    GatewayFactory,
    RawClient,
    RunningGateway,
    envelope,
    tls_config,
)

STATIC = Path(static_files.__file__).parent / "static"


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


class HttpClient:
    """One HTTP/1.1 connection driven with h11; ``request`` may be called again
    while the server keeps the connection alive."""

    def __init__(self, stream: trio.abc.Stream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> HttpClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        return cls(stream, f"127.0.0.1:{port}")

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = {"host": self.host, **(headers or {})}
        if body or method == "POST":
            all_headers.setdefault("content-length", str(len(body)))
        data = self.conn.send(
            h11.Request(method=method, target=target, headers=list(all_headers.items()))
        )
        if body:
            data = (data or b"") + (self.conn.send(h11.Data(data=body)) or b"")
        data = (data or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        await self.stream.send_all(data)
        return await self.response()

    async def response(self) -> Reply:
        status, headers, chunks = 0, {}, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, headers, b"".join(chunks))
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def at_eof(self) -> bool:
        """Whether the server closed the connection (after its last response)."""
        try:
            return await self.stream.receive_some(1) == b""
        except trio.BrokenResourceError:
            return True

    async def aclose(self) -> None:
        await self.stream.aclose()


async def http(
    port: int,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Reply:
    """One request on a fresh connection."""
    client = await HttpClient.open(port)
    try:
        return await client.request(method, target, headers=headers, body=body)
    finally:
        await client.aclose()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read everything until the server closes."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        reply = b""
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return reply
            if not chunk:
                return reply
            reply += chunk


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def body_of(reply: bytes) -> Any:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


def ws_handshake(path: str = "/ws", origin: str | None = None, host: str = "127.0.0.1") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- health ---------------------------------------------------------------------------------


async def test_health_is_ok_while_the_database_takes_writes(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        reply = await http(gw.port, "GET", "/health")
    assert reply.status == 200
    body = reply.json()
    assert body["status"] == "ok"
    assert body["database"] == "writable"
    assert body["connections"] == 0
    assert reply.headers["cache-control"] == "no-store"


async def test_health_is_503_when_the_database_cannot_be_written(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    gw.gateway.http.probe_timeout = 0.05
    # Another process holds SQLite's write lock: the probe cannot take it.
    blocker = sqlite3.connect(gw.database, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with trio.fail_after(10):
            reply = await http(gw.port, "GET", "/health")
        assert reply.status == 503
        body = reply.json()
        assert body["status"] == "unavailable"
        assert "locked" in body["database"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def test_health_under_load_answers_from_the_last_commit_without_a_probe(
    start_gateway: GatewayFactory,
) -> None:
    """While the log commits, /health takes that as the proof the database is
    writable and answers at once (a probe's thread and its lock wait were seconds
    under overload, issue 19); a second after the last commit it probes again."""
    gw = await start_gateway()
    gw.gateway.http.probe_timeout = 0.05
    cats = gw.token("cats", "CATS")
    body = envelope("conversion", CONVERSION, "CATS", "health-1").encode()
    blocker = sqlite3.connect(gw.database, isolation_level=None)
    try:
        with trio.fail_after(10):
            published = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=body)
            assert published.status == 202  # answered after its commit
            blocker.execute("BEGIN IMMEDIATE")  # a probe now could not take the lock
            reply = await http(gw.port, "GET", "/health")
            assert (reply.status, reply.json()["database"]) == (200, "writable")
            await trio.sleep(1.1)  # past HEALTH_CACHE_SECONDS: no recent commit vouches
            reply = await http(gw.port, "GET", "/health")
            assert reply.status == 503
            assert "locked" in reply.json()["database"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def test_health_is_503_while_shutting_down(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        client = await HttpClient.open(gw.port)
        async with client.stream:
            assert (await client.request("GET", "/health")).status == 200
            gw.gateway.http.shutdown()
            reply = await client.request("GET", "/health")
            assert reply.status == 503
            assert reply.json()["status"] == "shutting_down"
            # Keep-alive ends with shutdown.
            assert reply.headers["connection"] == "close"
            assert await client.at_eof()


# -- routing and every error status -----------------------------------------------------------


async def test_unknown_path_is_404(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        reply = await http(gw.port, "GET", "/nope?x=1")
    assert reply.status == 404
    assert reply.json()["error_code"] == "NOT_FOUND"


@pytest.mark.parametrize(("method", "path"), [("POST", "/health"), ("DELETE", "/metrics")])
async def test_wrong_method_is_405_with_allow(
    start_gateway: GatewayFactory, method: str, path: str
) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        reply = await http(gw.port, method, path)
    assert reply.status == 405
    assert reply.headers["allow"] == "GET"
    assert reply.json() == {
        "error_code": "METHOD_NOT_ALLOWED",
        "error_message": f"{path} allows GET",
    }


async def test_head_gets_its_status_without_a_body(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        client = await HttpClient.open(gw.port)
        async with client.stream:
            reply = await client.request("HEAD", "/health")
            assert reply.status == 405
            assert reply.body == b""
            # The connection is still usable: the body was really left out.
            assert (await client.request("GET", "/health")).status == 200


async def test_ws_without_upgrade_is_426(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        reply = await http(gw.port, "GET", "/ws")
    assert reply.status == 426
    assert reply.headers["upgrade"] == "websocket"
    assert reply.json()["error_code"] == "UPGRADE_REQUIRED"


def publish_head(token: str, *framing: str) -> bytes:
    """A ``POST /api/publish`` head with ``token`` and the given framing headers."""
    lines = ["POST /api/publish HTTP/1.1", "Host: x", f"Authorization: Bearer {token}", *framing]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_body_over_the_limit_is_413_before_it_is_read(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(limits={"max_message_size": 1024})
    head = publish_head(gw.token("cats", "CATS"), "Content-Length: 1000000")
    with trio.fail_after(10):
        reply = await raw_exchange(gw.port, head + b"x" * 10_000)
    assert status_of(reply) == 413
    assert body_of(reply)["error_code"] == "MESSAGE_TOO_LARGE"
    assert b"connection: close" in reply.lower()


async def test_chunked_body_over_the_limit_is_413(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits={"max_message_size": 256})
    chunk = b"800\r\n" + b"x" * 2048 + b"\r\n"
    request = publish_head(gw.token("cats", "CATS"), "Transfer-Encoding: chunked") + chunk
    with trio.fail_after(10):
        reply = await raw_exchange(gw.port, request + b"0\r\n\r\n")
    assert status_of(reply) == 413
    assert gw.gateway.http.front_door.stats.bodies_refused == 1


def chunked(body: bytes, size: int) -> bytes:
    """``body`` in chunks of ``size`` bytes, and the last chunk."""
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def test_tiny_chunks_count_at_least_chunk_cost_each(start_gateway: GatewayFactory) -> None:
    # max_body is 4 x 1024 bytes: five 1-byte chunks count 5 KiB and are refused
    # (they would otherwise be a 5-byte body), while a real event in two chunks passes.
    gw = await start_gateway(limits={"max_message_size": 1024})
    head = publish_head(gw.token("cats", "CATS"), "Transfer-Encoding: chunked", "Connection: close")
    event = envelope(
        "click",
        {
            "access_id": 1,
            "adware_id": 100,
            "owner_id": 500,
            "ipaddress": "192.0.2.1",
            "useragent": "curl",
            "created_at": "2025-10-29T12:34:56Z",
        },
        "CATS",
        "c-1",
    )
    assert 5 * CHUNK_COST > 4 * 1024
    with trio.fail_after(10):
        tiny = await raw_exchange(gw.port, head + chunked(b"{}{}{", 1))
        whole = await raw_exchange(gw.port, head + chunked(event.encode(), len(event) // 2 + 1))
    assert status_of(tiny) == 413
    assert body_of(tiny)["error_code"] == "MESSAGE_TOO_LARGE"
    assert status_of(whole) == 202, whole


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [("POST", "/health", 405), ("GET", "/health", 200), ("POST", "/nope", 404)],
    ids=["post-health", "get-health", "unknown-path"],
)
async def test_a_body_no_endpoint_takes_is_never_read(
    start_gateway: GatewayFactory, method: str, target: str, status: int
) -> None:
    # The body is announced and never sent: the answer comes at once (not after
    # http.request_timeout, 10 s), then the connection is closed.
    gw = await start_gateway()
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    with trio.fail_after(5):
        reply = await raw_exchange(gw.port, head.encode())
    assert status_of(reply) == status
    assert b"connection: close" in reply.lower()
    assert gw.gateway.http.front_door.stats.bodies_timed_out == 0


@pytest.mark.parametrize(
    "authorization", [None, "Bearer cs_nope", "Basic eDp5"], ids=["none", "bad", "basic"]
)
async def test_publish_is_refused_before_its_body_is_read(
    start_gateway: GatewayFactory, authorization: str | None
) -> None:
    # Expect: 100-continue, and the body never comes: the 401 comes instead of
    # "100 Continue", at once, and the connection is closed.
    gw = await start_gateway()
    lines = ["POST /api/publish HTTP/1.1", "Host: x", "Content-Length: 100000"]
    lines += ["Expect: 100-continue"]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    with trio.fail_after(5):
        reply = await raw_exchange(gw.port, ("\r\n".join(lines) + "\r\n\r\n").encode())
    assert reply.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in reply.lower()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /health HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"<publish>Content-Length: 10\r\n\r\nshort",
    ],
    ids=["request-line", "no-host", "header", "short-body"],
)
async def test_malformed_requests_are_400(
    start_gateway: GatewayFactory, request_bytes: bytes
) -> None:
    gw = await start_gateway()
    if request_bytes.startswith(b"<publish>"):
        head = publish_head(gw.token("cats", "CATS"))[:-2]  # without the blank line
        request_bytes = head + request_bytes.removeprefix(b"<publish>")
    async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
        with trio.fail_after(10):
            await stream.send_all(request_bytes)
            if request_bytes.endswith(b"short"):
                await stream.send_eof()
            reply = b""
            while chunk := await stream.receive_some(65536):
                reply += chunk
    assert status_of(reply) == 400
    assert body_of(reply)["error_code"] == "BAD_REQUEST"


# -- keep-alive -----------------------------------------------------------------------------


async def test_keep_alive_serves_several_requests_then_closes(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(http={"keepalive_requests": 3})
    with trio.fail_after(10):
        client = await HttpClient.open(gw.port)
        async with client.stream:
            for _ in range(2):
                reply = await client.request("GET", "/nope")
                assert reply.status == 404
                assert "connection" not in reply.headers
            reply = await client.request("GET", "/health")
            assert reply.status == 200
            assert reply.headers["connection"] == "close"
            assert await client.at_eof()


async def test_pipelined_requests_are_answered_in_order(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    requests = (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with trio.fail_after(10):
        reply = await raw_exchange(gw.port, requests)
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]
    assert statuses == [200, 404, 426]


async def test_client_connection_close_is_honoured(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        client = await HttpClient.open(gw.port)
        async with client.stream:
            reply = await client.request("GET", "/health", headers={"connection": "close"})
            assert reply.status == 200
            assert await client.at_eof()


async def test_http_connections_over_the_limit_get_503(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(http={"max_connections": 1})
    with trio.fail_after(10):
        first = await HttpClient.open(gw.port)
        async with first.stream:
            assert (await first.request("GET", "/health")).status == 200  # held open
            reply = await http(gw.port, "GET", "/health")
            assert reply.status == 503
            assert reply.json()["error_code"] == "CONNECTION_LIMIT"
            # WebSocket connections have their own limit.
            async with gw.client("AFAD") as afad:
                await afad.send({"type": "ping"})
                assert (await afad.recv())["type"] == "pong"
        # Once the first one has gone, the slot is free again.
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert gw.gateway.http.front_door.open_http == 0
        assert (await http(gw.port, "GET", "/health")).status == 200


# -- the WebSocket path through the front door -------------------------------------------


async def test_websocket_clients_still_work_after_http_on_the_same_port(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        assert (await http(gw.port, "GET", "/health")).status == 200
        async with gw.client("AFAD") as afad, gw.client("CATS") as cats:
            await afad.send(envelope("adware_update", ADWARE_UPDATE, "AFAD", "m1"))
            assert (await cats.recv())["message_id"] == "m1"


async def test_upgrade_after_a_keep_alive_request_on_the_same_connection(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        client = await HttpClient.open(gw.port)
        async with client.stream:
            assert (await client.request("GET", "/health")).status == 200
            raw = RawClient(client.stream)
            await client.stream.send_all(raw.ws.send(ev.Request(host="127.0.0.1", target="/ws")))
            assert isinstance(await raw.next_event(), ev.AcceptConnection)
            await raw.send_text('{"type":"ping"}')
            reply = await raw.next_event()
            assert isinstance(reply, ev.TextMessage)
            assert json.loads(reply.data)["payload"]["error_code"] == "AUTH_REQUIRED"


async def test_https_serves_http_and_wss_on_one_port(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    ca, tls = tls_config(tmp_path)
    gw = await start_gateway(tls=tls)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with trio.fail_after(10):
        tcp = await trio.open_tcp_stream("127.0.0.1", gw.port)
        tls = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
        client = HttpClient(tls, f"127.0.0.1:{gw.port}")
        async with tls:
            assert (await client.request("GET", "/health")).status == 200
            assert (await client.request("GET", "/nope")).status == 404
        url = f"wss://127.0.0.1:{gw.port}/ws"
        async with trio_websocket.open_websocket_url(url, ssl_context=context) as ws:
            await ws.send_message('{"type":"ping"}')
            assert json.loads(await ws.get_message())["type"] == "error"


# -- origin checks --------------------------------------------------------------------------


async def _handshake_status(gw: RunningGateway, request: bytes) -> int:
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
            await stream.send_all(request)
            reply = b""
            while b"\r\n" not in reply:
                chunk = await stream.receive_some(4096)
                assert chunk, "closed without a response"
                reply += chunk
    return status_of(reply)


async def test_cross_site_websocket_is_403_and_never_upgraded(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    host = f"127.0.0.1:{gw.port}"
    for origin in ("https://evil.example", "null", f"http://127.0.0.1:{gw.port + 1}"):
        with trio.fail_after(10):
            reply = await raw_exchange(gw.port, ws_handshake(origin=origin, host=host))
        assert status_of(reply) == 403, origin
        assert body_of(reply)["error_code"] == "ORIGIN_NOT_ALLOWED"
        assert b"upgrade" not in reply.lower().split(b"\r\n\r\n")[0]
    assert not gw.gateway.connections
    assert gw.gateway.stats.accepted == 0


async def test_same_origin_listed_origins_and_no_origin_upgrade(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(http={"allowed_origins": ["https://dash.example.com"]})
    host = f"127.0.0.1:{gw.port}"
    for origin in (
        None,  # a server-side client (PHP, Python)
        f"http://{host}",  # the gateway's own page
        "https://dash.example.com",
        "HTTPS://DASH.EXAMPLE.COM:443",  # same origin, spelled differently
    ):
        assert await _handshake_status(gw, ws_handshake(origin=origin, host=host)) == 101, origin
    # trio-websocket's own client sends no Origin and is unaffected.
    async with gw.client("AFAD"):
        pass


async def test_origin_behind_a_proxy_compares_default_ports(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    request = ws_handshake(origin="https://socket.example.com", host="socket.example.com")
    assert await _handshake_status(gw, request) == 101
    request = ws_handshake(origin="https://socket.example.com", host="socket.example.com:8443")
    assert await _handshake_status(gw, request) == 403


async def test_allowed_origins_are_validated(start_gateway: GatewayFactory) -> None:
    for bad in ("example.com", "ftp://example.com", "https://example.com/path"):
        with pytest.raises(ConfigError, match=r"http\.allowed_origins"):
            start_gateway.config(http={"allowed_origins": [bad]})


# -- POST /api/publish ---------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}


async def test_publish_a_seed_envelope_reaches_websocket_recipients(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    cats = gw.token("cats", "CATS")
    text = envelope("conversion", CONVERSION, "CATS", "conv-1")
    with trio.fail_after(10):
        async with gw.client("AFAD") as afad:
            reply = await http(
                gw.port, "POST", "/api/publish", headers=bearer(cats), body=text.encode()
            )
            assert reply.status == 202
            body = reply.json()
            assert body["message_id"] == "conv-1"
            assert body["seq"] == 1
            assert body["duplicate"] is False
            assert await afad.recv_text() == text  # the publisher's text, unchanged
    assert gw.gateway.stats.published == 1


async def test_publish_type_and_payload_only_gets_the_envelope_filled_in(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    cats = gw.token("cats", "CATS")
    payload = json.dumps(CONVERSION, ensure_ascii=False)
    text = '{ "type": "conversion", "payload": ' + payload + " }"
    with trio.fail_after(10):
        async with gw.client("AFAD") as afad:
            reply = await http(
                gw.port, "POST", "/api/publish", headers=bearer(cats), body=text.encode()
            )
            assert reply.status == 202, reply.body
            received = await afad.recv_text()
    event = json.loads(received)
    assert event["version"] == "1.0"
    assert event["sender"] == "CATS"
    assert event["message_id"] == reply.json()["message_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["timestamp"])
    assert event["payload"] == CONVERSION
    assert payload in received  # the payload's own text is forwarded as sent


async def test_publishing_twice_is_idempotent(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    cats = gw.token("cats", "CATS")
    text = envelope("conversion", CONVERSION, "CATS", "conv-dup").encode()
    with trio.fail_after(10):
        async with gw.client("AFAD") as afad:
            first = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=text)
            second = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=text)
            assert first.json()["duplicate"] is False
            assert second.json() == {**first.json(), "duplicate": True}
            assert json.loads(await afad.recv_text())["message_id"] == "conv-dup"
            await afad.send({"type": "ping"})
            assert (await afad.recv())["type"] == "pong"  # and nothing else came


async def test_publish_without_or_with_a_bad_token_is_401(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    text = envelope("conversion", CONVERSION, "CATS", "m").encode()
    with trio.fail_after(10):
        missing = await http(gw.port, "POST", "/api/publish", body=text)
        bad = await http(gw.port, "POST", "/api/publish", headers=bearer("cs_nope"), body=text)
        basic = await http(
            gw.port, "POST", "/api/publish", headers={"authorization": "Basic eDp5"}, body=text
        )
    assert missing.status == bad.status == basic.status == 401
    assert missing.json()["error_code"] == basic.json()["error_code"] == "AUTH_REQUIRED"
    assert bad.json()["error_code"] == "AUTH_FAILED"
    for reply in (missing, bad, basic):
        assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "INVALID_MESSAGE"),
        (b"\xff\xfe", 400, "INVALID_MESSAGE"),
        (b'{"type":"ping"}', 400, "INVALID_MESSAGE"),
        (b'{"type":"no_such_event","payload":{}}', 400, "UNKNOWN_TYPE"),
        (b'{"type":"conversion","payload":{"pay_id":"x"}}', 400, "INVALID_MESSAGE"),
        (b'{"seq":5,"type":"conversion","payload":{}}', 400, "INVALID_MESSAGE"),
        (envelope("conversion", CONVERSION, "AFAD", "m").encode(), 403, "SENDER_MISMATCH"),
        (envelope("adware_update", ADWARE_UPDATE, "CATS", "m").encode(), 403, "EVENT_NOT_ALLOWED"),
    ],
    ids=["json", "utf8", "control", "unknown-type", "payload", "seq", "sender", "not-allowed"],
)
async def test_publish_refusals_map_to_http_statuses(
    start_gateway: GatewayFactory, body: bytes, status: int, code: str
) -> None:
    gw = await start_gateway()
    cats = gw.token("cats", "CATS")
    with trio.fail_after(10):
        reply = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=body)
    assert reply.status == status, reply.body
    assert reply.json()["error_code"] == code
    assert gw.gateway.stats.published == 0


async def test_publish_too_large_is_413(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits={"max_message_size": 1024})
    cats = gw.token("cats", "CATS")
    big = envelope("conversion", {**CONVERSION, "adware_name": "x" * 2000}, "CATS", "m")
    huge = big.replace("x" * 2000, "x" * 5000)
    with trio.fail_after(10):
        reply = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=big.encode())
        assert reply.status == 413
        assert reply.json()["error_code"] == "MESSAGE_TOO_LARGE"
        # Over 4 bytes a character: refused before the body is read.
        reply = await http(
            gw.port, "POST", "/api/publish", headers=bearer(cats), body=huge.encode()
        )
        assert reply.status == 413
        assert reply.json()["error_code"] == "MESSAGE_TOO_LARGE"


async def test_publish_over_the_rate_limit_is_429_with_retry_after(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway(limits={"rate": {"CATS": {"per_minute": 30.0, "burst": 2}}})
    with trio.fail_after(10):
        # The identity's bucket is shared with its WebSocket connections.
        async with gw.client("CATS") as ws:
            await ws.send(envelope("conversion", CONVERSION, "CATS", "ws-1"))
            await ws.send({"type": "ping"})
            assert (await ws.recv())["type"] == "pong"  # the ping took the last token
        cats = gw.tokens["cats"]
        text = envelope("conversion", CONVERSION, "CATS", "http-1").encode()
        reply = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=text)
    assert reply.status == 429
    assert reply.json()["error_code"] == "RATE_LIMIT_EXCEEDED"
    assert reply.headers["retry-after"] == "2"  # 2 s for one token at 30/min, whole seconds


async def test_publish_with_the_shared_token_uses_the_senders_type(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = "seed-shared-token-0123456789"
    monkeypatch.setenv("SOCKET_AUTH_TOKEN", shared)
    gw = await start_gateway(allow_shared_token=True)
    text = envelope("conversion", CONVERSION, "CATS", "shared-1").encode()
    with trio.fail_after(10):
        reply = await http(gw.port, "POST", "/api/publish", headers=bearer(shared), body=text)
    assert reply.status == 202


async def test_get_on_publish_is_405(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        reply = await http(gw.port, "GET", "/api/publish")
    assert reply.status == 405
    assert reply.headers["allow"] == "POST"


# -- GET /api/events -------------------------------------------------------------------------


async def _post(gw: RunningGateway, message_id: str, **payload: Any) -> int:
    cats = gw.tokens.get("cats") or gw.token("cats", "CATS")
    text = envelope("conversion", {**CONVERSION, **payload}, "CATS", message_id).encode()
    reply = await http(gw.port, "POST", "/api/publish", headers=bearer(cats), body=text)
    assert reply.status == 202, reply.body
    seq: int = reply.json()["seq"]
    return seq


async def _events(gw: RunningGateway, token: str, query: str = "") -> Reply:
    return await http(gw.port, "GET", f"/api/events{query}", headers=bearer(token))


async def test_events_since_a_seq_returns_what_followed(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    afad = gw.token("afad", "AFAD")
    with trio.fail_after(10):
        first = await _post(gw, "c1")
        second = await _post(gw, "c2")
        reply = await _events(gw, afad, f"?since={first - 1}")
    assert reply.status == 200
    body = reply.json()
    assert [(e["seq"], e["message_id"]) for e in body["events"]] == [(first, "c1"), (second, "c2")]
    assert next(iter(body["events"][0])) == "seq"  # seq first, then the publisher's envelope
    assert body["next"] == second
    with trio.fail_after(10):
        assert (await _events(gw, afad, f"?since={second}")).json() == {
            "events": [],
            "next": second,
        }


async def test_events_long_poll_returns_when_an_event_arrives(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    afad = gw.token("afad", "AFAD")
    with trio.fail_after(10):
        head = await _post(gw, "c0")
        async with trio.open_nursery() as nursery:
            replies: list[Reply] = []

            async def poll() -> None:
                replies.append(await _events(gw, afad, f"?since={head}&wait=30"))

            nursery.start_soon(poll)
            await wait_quiet()
            assert gw.gateway.http.open_polls == 1  # the gateway holds the poll
            assert not replies
            seq = await _post(gw, "c1")
    (reply,) = replies
    assert [e["message_id"] for e in reply.json()["events"]] == ["c1"]
    assert reply.json()["next"] == seq


async def test_events_long_poll_gives_up_after_wait(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway()
    afad = gw.token("afad", "AFAD")
    with trio.fail_after(120):
        start = trio.current_time()
        reply = await _events(gw, afad, "?since=0&wait=30")
        assert 30 <= trio.current_time() - start <= 32
    assert reply.json() == {"events": [], "next": 0}


async def test_events_follow_the_durable_cursor_without_since(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    afad = gw.token("afad", "AFAD")  # durable: kept every event from now on
    with trio.fail_after(10):
        await _post(gw, "c1")
        two = await _post(gw, "c2")
        reply = (await _events(gw, afad)).json()
        assert [e["message_id"] for e in reply["events"]] == ["c1", "c2"]
        # Not acknowledged yet: asked again, the same events come back.
        assert (await _events(gw, afad)).json() == reply
        three = await _post(gw, "c3")
        # Asking from ``next`` acknowledges what came before it ...
        reply = (await _events(gw, afad, f"?since={two}")).json()
        assert [e["message_id"] for e in reply["events"]] == ["c3"]
        # ... so the stored cursor has moved on.
        reply = (await _events(gw, afad)).json()
        assert [e["message_id"] for e in reply["events"]] == ["c3"]
        assert reply["next"] == three


async def test_events_respect_routing_and_user_bindings(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    mine = gw.token("dash-500", "DASHBOARD", user_id="500")
    other = gw.token("dash-77", "DASHBOARD", user_id="77")
    with trio.fail_after(10):
        seq = await _post(gw, "for-500", owner_id=500)
        await _post(gw, "for-600", owner_id=600, tier_rewards=[])
        got = (await _events(gw, mine, "?since=0")).json()
        none = (await _events(gw, other, "?since=0")).json()
        own = (await _events(gw, gw.tokens["cats"], "?since=0")).json()
    assert [e["message_id"] for e in got["events"]] == ["for-500"]
    assert got["events"][0]["seq"] == seq
    assert none["events"] == []
    assert own["events"] == []  # nobody receives its own events


@pytest.mark.parametrize(
    "query", ["?since=-1", "?since=x", "?wait=abc", "?wait=1000", "?wait=nan", "?limit=0"]
)
async def test_events_bad_parameters_are_400(start_gateway: GatewayFactory, query: str) -> None:
    gw = await start_gateway()
    afad = gw.token("afad", "AFAD")
    with trio.fail_after(10):
        reply = await _events(gw, afad, query)
    assert reply.status == 400
    assert reply.json()["error_code"] == "INVALID_MESSAGE"


async def test_events_without_a_token_is_401(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        reply = await http(gw.port, "GET", "/api/events?since=0")
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")


async def test_shutdown_answers_held_long_polls(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    afad = gw.token("afad", "AFAD")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            replies: list[Reply] = []

            async def poll() -> None:
                replies.append(await _events(gw, afad, "?since=0&wait=60"))

            nursery.start_soon(poll)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            gw.gateway.http.shutdown()
    (reply,) = replies
    assert reply.status == 200
    assert reply.json()["events"] == []
    assert reply.headers["connection"] == "close"


async def test_expect_100_continue_is_answered(start_gateway: GatewayFactory) -> None:
    # curl (and PHP's curl) send a body over 1 KiB only after "100 Continue".
    gw = await start_gateway()
    cats = gw.token("cats", "CATS")
    text = envelope("conversion", {**CONVERSION, "adware_name": "y" * 2000}, "CATS", "big")
    head = (
        f"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {cats}\r\n"
        f"Content-Length: {len(text.encode())}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
        with trio.fail_after(10):
            await stream.send_all(head)
            interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(text.encode())
            reply = b""
            while b"}\n" not in reply:
                reply += await stream.receive_some(65536)
    assert status_of(reply) == 202


# -- static files ---------------------------------------------------------------------------


async def test_asking_for_missing_static_files_costs_no_memory(
    start_gateway: GatewayFactory,
) -> None:
    # Issue 20, bug 4 of the findings: each name asked for used to stay cached.
    gw = await start_gateway()
    with trio.fail_after(20):
        assert (await http(gw.port, "GET", "/static/dashboard.js")).status == 200
        assert (await http(gw.port, "GET", "/static/nope-0.js")).status == 404
    files = static_files.cached_files()
    servable = (".js", ".css", ".html", ".svg")
    assert files == len([p for p in STATIC.iterdir() if p.suffix in servable])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20_000):
            assert static_files.static_response(f"/static/missing-{n}.js") is None
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, f"{grown} bytes kept for 20,000 missing names"
    assert static_files.cached_files() == files
