"""The plain-HTTP side of the one port: routing, statuses, keep-alive, health, origin checks.

Every test speaks HTTP over a real loopback socket, with h11 as the client
(``HttpClient``) or raw bytes where the request must be malformed.
"""

from __future__ import annotations

import json
import re
import sqlite3
import ssl
from pathlib import Path
from typing import Any

import attrs
import h11
import pytest
import trio
import trio.testing
import trio_websocket
import trustme
import wsproto.events as ev

from catsock.config import ConfigError

from .harness import ADWARE_UPDATE, GatewayFactory, RawClient, RunningGateway, envelope


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


async def test_body_over_the_limit_is_413_before_it_is_read(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(limits={"max_message_size": 1024})
    head = b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    with trio.fail_after(10):
        reply = await raw_exchange(gw.port, head + b"x" * 10_000)
    assert status_of(reply) == 413
    assert body_of(reply)["error_code"] == "MESSAGE_TOO_LARGE"
    assert b"connection: close" in reply.lower()


async def test_chunked_body_over_the_limit_is_413(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits={"max_message_size": 256})
    chunk = b"800\r\n" + b"x" * 2048 + b"\r\n"
    request = b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk
    with trio.fail_after(10):
        reply = await raw_exchange(gw.port, request + b"0\r\n\r\n")
    assert status_of(reply) == 413


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /health HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nshort",
    ],
    ids=["request-line", "no-host", "header", "short-body"],
)
async def test_malformed_requests_are_400(
    start_gateway: GatewayFactory, request_bytes: bytes
) -> None:
    gw = await start_gateway()
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
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    gw = await start_gateway(tls={"cert": str(cert_file), "key": str(key_file)})
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
