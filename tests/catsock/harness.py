"""Test harness for the trio runtime: a real gateway on 127.0.0.1:0 and real clients.

``GatewayFactory`` starts ``catsock.server.Gateway`` in the test's nursery with a
real SQLite file; ``Client`` wraps a trio-websocket connection with JSON
helpers; ``RawClient`` speaks WebSocket through wsproto by hand, for tests that
must misbehave at the frame level (ignore pings, send broken frames).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket
import trustme
import wsproto
import wsproto.events as ev

import storage
from catsock.config import Config, load_config
from catsock.server import Gateway
from tests.internal_errors import InternalErrors

CONVERSION: dict[str, Any] = {
    "pay_id": 12345,
    "access_id": 67890,
    "adware_id": 100,
    "adware_name": "商品A",
    "owner_id": 500,
    "owner_name": "アフィリエイターX",
    "cost": 1000,
    "sales": 5000,
    "state": "PENDING",
    "tier_rewards": [
        {"tier_level": 1, "user_id": 499, "user_name": "親", "rate": 10, "amount": 100}
    ],
    "created_at": "2025-10-29T12:34:56Z",
}
ADWARE_UPDATE: dict[str, Any] = {"adware_id": 100, "action": "UPDATE", "data": {"money": 1000}}


def envelope(type_: str, payload: dict[str, Any], sender: str, message_id: str) -> str:
    """A seed 000 §4.2 envelope, as the PHP client's ``send`` builds it."""
    return json.dumps(
        {
            "version": "1.0",
            "type": type_,
            "timestamp": "2025-10-29T12:34:56Z",
            "message_id": message_id,
            "sender": sender,
            "payload": payload,
        },
        ensure_ascii=False,
    )


@attrs.define
class Client:
    ws: trio_websocket.WebSocketConnection
    auth_reply: dict[str, Any] | None = None

    async def send(self, message: dict[str, Any] | str) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        await self.ws.send_message(text)

    async def recv(self) -> dict[str, Any]:
        data = await self.ws.get_message()
        result: dict[str, Any] = json.loads(data)
        return result

    async def recv_text(self) -> str:
        data = await self.ws.get_message()
        assert isinstance(data, str)
        return data

    async def closed_code(self) -> int:
        """Read until the gateway closes the connection; return the close code."""
        try:
            while True:
                await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
        assert reason is not None
        return reason.code


@attrs.define
class RunningGateway:
    gateway: Gateway
    port: int
    database: Path
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def token(self, name: str, client_type: str, user_id: str | None = None) -> str:
        db = storage.open_db(self.database)
        try:
            token = storage.create_token(db, name=name, client_type=client_type, user_id=user_id)
        finally:
            db.close()
        self.tokens[name] = token
        return token

    @asynccontextmanager
    async def connect(self, **kwargs: Any) -> AsyncIterator[Client]:
        async with trio_websocket.open_websocket_url(self.url, **kwargs) as ws:
            yield Client(ws)
        # trio-websocket 0.12 leaves a client's socket open when the server closed
        # first (its aclose returns early once a close reason is set).
        await ws._stream.aclose()

    @asynccontextmanager
    async def client(
        self,
        client_type: str,
        name: str | None = None,
        *,
        user_id: str | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> AsyncIterator[Client]:
        """An authenticated client; creates the token ``name`` on first use."""
        name = name or client_type.lower()
        token = self.tokens.get(name) or self.token(name, client_type, user_id)
        async with self.connect() as client:
            auth: dict[str, Any] = {"type": "auth", "token": token, "client_type": client_type}
            if extensions is not None:
                auth["extensions"] = extensions
            await client.send(auth)
            client.auth_reply = await client.recv()
            assert client.auth_reply["type"] == "auth_success", client.auth_reply
            yield client


class GatewayFactory:
    """``await factory(**overrides)`` starts a gateway with config overrides.

    With ``errors`` (the ``internal_errors`` fixture), each gateway's
    ``stats.internal_errors`` is checked when the test ends."""

    def __init__(
        self, nursery: trio.Nursery, tmp_path: Path, errors: InternalErrors | None = None
    ) -> None:
        self._nursery = nursery
        self._tmp = tmp_path
        self._count = 0
        self._errors = errors

    def config(self, **overrides: Any) -> Config:
        self._count += 1
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "database": str(self._tmp / f"gateway{self._count}.db"),
        }
        return load_config(environ={}, overrides=_deep_merge(base, overrides))

    async def __call__(
        self, *, wall_clock: Callable[[], float] = time.time, **overrides: Any
    ) -> RunningGateway:
        config = self.config(**overrides)
        gateway = Gateway(config, wall_clock=wall_clock)
        if self._errors is not None:
            self._errors.watch_gateway(gateway)
        _, port = await self._nursery.start(gateway.serve)
        return RunningGateway(gateway, port, Path(config.database), {})


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class RawClient:
    """A hand-driven WebSocket client (wsproto) that answers nothing by itself."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list[ev.Event] = []

    @classmethod
    async def connect(cls, port: int, path: str = "/ws") -> RawClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        await stream.send_all(client.ws.send(ev.Request(host="127.0.0.1", target=path)))
        event = await client.next_event()
        assert isinstance(event, ev.AcceptConnection), event
        return client

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(ev.TextMessage(data=text)))

    async def next_event(self) -> ev.Event | None:
        """The next wsproto event, or None at end of stream."""
        while not self.events:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())
        return self.events.pop(0)

    async def aclose(self) -> None:
        await self.stream.aclose()


def tls_config(tmp_path: Path) -> tuple[trustme.CA, dict[str, str]]:
    """A throwaway CA and the gateway's ``tls`` settings for a 127.0.0.1 certificate
    it issued (chain included); clients trust it with ``ca.configure_trust``."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(cert_file, append=True)
    cert.private_key_pem.write_to_path(key_file)
    return ca, {"cert": str(cert_file), "key": str(key_file)}
