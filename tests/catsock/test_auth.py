"""Auth over real sockets: tokens, AUTH_REQUIRED, the auth deadline, revocation, limits."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

import storage
from catsock.config import RateConfig
from catsock.server import Gateway
from tests.clocks import wait_quiet

from .harness import GatewayFactory, RunningGateway
from .test_http import http


async def test_auth_success_carries_connection_id_and_no_extensions(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(5):
        async with gw.client("CATS") as cats:
            reply = cats.auth_reply
            assert reply is not None
            assert reply["connection_id"].startswith("conn_")
            # A seed client that did not negotiate never sees the extensions key.
            assert "extensions" not in reply


@pytest.mark.parametrize(
    ("token", "client_type"),
    [("", "CATS"), ("cs_unknown", "CATS"), ("<cats>", "AFAD")],
    ids=["empty", "unknown", "wrong-client-type"],
)
async def test_bad_token_gets_auth_failed_then_1008(
    start_gateway: GatewayFactory, token: str, client_type: str
) -> None:
    gw = await start_gateway()
    if token == "<cats>":
        token = gw.token("cats", "CATS")
    with trio.fail_after(5):
        async with gw.connect() as client:
            await client.send({"type": "auth", "token": token, "client_type": client_type})
            error = await client.recv()
            assert error["type"] == "error"
            assert error["payload"]["error_code"] == "AUTH_FAILED"
            assert await client.closed_code() == 1008
    assert gw.gateway.stats.auth_failures == 1


async def test_messages_before_auth_get_auth_required(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(5):
        async with gw.connect() as client:
            await client.send({"type": "ping"})
            reply = await client.recv()
            assert reply["payload"]["error_code"] == "AUTH_REQUIRED"
            # The connection survives a few and is cut after too many.
            for _ in range(5):
                await client.send({"type": "ping"})
            codes = [(await client.recv())["payload"]["error_code"] for _ in range(5)]
            assert codes == ["AUTH_REQUIRED"] * 5
            assert await client.closed_code() == 1008


async def test_auth_deadline_closes_silent_connection(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway(auth_timeout=10.0)
    with trio.fail_after(60):
        async with gw.connect() as client:
            before = trio.current_time()
            error = await client.recv()
            assert error["payload"]["error_code"] == "CONNECTION_TIMEOUT"
            assert await client.closed_code() == 1008
            assert trio.current_time() - before >= 10.0


async def test_token_bound_to_user_subscribes_only_to_user_channel(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(5):
        async with gw.client("DASHBOARD", "aff-500", user_id="500"):
            assert gw.gateway.hub.subscribers("user:500") == 1
            assert gw.gateway.hub.subscribers("type:DASHBOARD") == 0


async def test_per_identity_connection_limit(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits={"per_identity": {"DASHBOARD": 2}})
    token = gw.token("dash", "DASHBOARD")
    with trio.fail_after(5):
        async with (
            gw.client("DASHBOARD", "dash"),
            gw.client("DASHBOARD", "dash"),
            gw.connect() as third,
        ):
            await third.send({"type": "auth", "token": token, "client_type": "DASHBOARD"})
            error = await third.recv()
            assert error["payload"]["error_code"] == "CONNECTION_LIMIT"
            assert await third.closed_code() == 1008
        # Once the others left, the identity may connect again.
        async with gw.client("DASHBOARD", "dash"):
            pass


async def test_revoked_token_is_cut_off_live(start_gateway: GatewayFactory) -> None:
    # Real clock: the refresh runs in a worker thread, and an autojump clock would
    # race past every deadline while the thread works. It takes <= 2 s.
    gw = await start_gateway()
    with trio.fail_after(10):
        async with gw.client("AFAD", "afad-prod") as afad:
            db = storage.open_db(gw.database)
            assert storage.revoke_token(db, "afad-prod")
            db.close()
            assert await afad.closed_code() == 1008


async def test_shared_token_is_off_by_default_and_works_when_allowed(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = "seed-shared-token-0123456789"
    monkeypatch.setenv("SOCKET_AUTH_TOKEN", shared)
    auth = json.dumps({"type": "auth", "token": shared, "client_type": "CATS"})
    with trio.fail_after(5):
        off = await start_gateway()
        async with off.connect() as client:
            await client.send(auth)
            assert (await client.recv())["payload"]["error_code"] == "AUTH_FAILED"
        on = await start_gateway(allow_shared_token=True)
        async with on.connect() as client:
            await client.send(auth)
            assert (await client.recv())["type"] == "auth_success"


async def test_handshake_on_other_path_is_refused(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    request = (
        b"GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(5):
        async with await trio.open_tcp_stream("127.0.0.1", gw.port) as stream:
            await stream.send_all(request)
            response = b""
            while b"\r\n" not in response:
                response += await stream.receive_some(4096)
    assert response.startswith(b"HTTP/1.1 404 ")


async def test_a_revoked_token_is_refused_at_once(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    # lazy_clock stretches the credential poller to a day: only the check that
    # every authentication makes can see the revocation.
    gw = await start_gateway()
    token = gw.token("afad-prod", "AFAD")
    headers = {"authorization": f"Bearer {token}"}
    auth = {"type": "auth", "token": token, "client_type": "AFAD"}
    with trio.fail_after(30):
        assert (await http(gw.port, "GET", "/api/events", headers=headers)).status == 200
        db = storage.open_db(gw.database)
        assert storage.revoke_token(db, "afad-prod")
        db.close()
        reply = await http(gw.port, "GET", "/api/events", headers=headers)
        assert reply.status == 401
        assert reply.json()["error_code"] == "AUTH_FAILED"
        async with gw.connect() as client:
            await client.send(auth)
            assert (await client.recv())["payload"]["error_code"] == "AUTH_FAILED"


async def test_the_token_poller_survives_a_database_error(
    start_gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The disk fails three polls in a row (the outside world, faked); the poller
    # logs once, keeps going, and still cuts a revoked token afterwards.
    monkeypatch.setattr("catsock.server.CREDENTIAL_REFRESH", 0.01)
    real = storage.data_version
    failures = [sqlite3.OperationalError("disk I/O error")] * 3
    failed = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def flaky(db: object) -> int:
        if failures:
            error = failures.pop()
            if not failures:
                trio.from_thread.run_sync(failed.set, trio_token=token)
            raise error
        return real(db)  # type: ignore[arg-type]

    gw = await start_gateway()
    with trio.fail_after(20):
        async with gw.client("AFAD", "afad-prod") as afad:
            monkeypatch.setattr("catsock.auth.storage.data_version", flaky)
            await failed.wait()
            db = storage.open_db(gw.database)
            assert storage.revoke_token(db, "afad-prod")
            db.close()
            assert await afad.closed_code() == 1008
    problems = [r.getMessage() for r in caplog.records if r.name == "catsock.server"]
    assert len([p for p in problems if "cannot read the tokens" in p]) == 1
    assert "reading the tokens again" in problems
    assert gw.gateway.stats.internal_errors == 0


async def test_a_rate_limit_that_makes_no_bucket_refuses_login_without_a_leak(
    start_gateway: GatewayFactory, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # per_minute = 0 (the configuration check may refuse it: built past it here).
    config = start_gateway.config()
    rates = {**config.limits.rate, "CATS": RateConfig(0.0, 10)}
    config = attrs.evolve(config, limits=attrs.evolve(config.limits, rate=rates))
    gateway = Gateway(config)
    _, port = await nursery.start(gateway.serve)
    gw = RunningGateway(gateway, port, Path(config.database), {})
    token = gw.token("cats", "CATS")
    auth = {"type": "auth", "token": token, "client_type": "CATS"}
    with trio.fail_after(10):
        for _ in range(3):
            async with gw.connect() as client:
                await client.send(auth)
                error = await client.recv()
                assert error["payload"]["error_code"] == "PROCESSING_ERROR"
                assert await client.closed_code() == 1008
        # Other client types are not affected.
        async with gw.client("AFAD"):
            pass
        reply = await http(
            gw.port, "GET", "/api/events", headers={"authorization": f"Bearer {token}"}
        )
        assert reply.status == 500
    await wait_quiet()  # the AFAD's close returns before the gateway lets it go
    assert gateway.connections_of("cats") == 0
    assert gateway._identities == {}
    assert gateway.stats.internal_errors == 0
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1
    assert "limits.rate.CATS" in logged[0]


async def test_other_writes_to_the_file_do_not_reload_the_tokens(tmp_path: Path) -> None:
    """The log writers commit to the same file all the time: ``PRAGMA data_version``
    moves with each, so only the tokens' own counter may send a login to a reload."""
    from catsock.auth import SqliteCredentials

    path = tmp_path / "gw.db"
    other = storage.open_db(path)
    storage.create_token(other, name="first", client_type="CATS")
    source = SqliteCredentials(path)
    try:
        loaded = await source.reload()
        assert loaded is not None
        assert [c.name for c in loaded[0].values()] == ["first"]
        assert source.unchanged()
        # Any commit by another connection, as the log writers make all the time.
        other["audit"].insert({"at": "", "actor": "", "remote": "", "action": "x",
                               "target": "", "detail": "", "result": ""})  # fmt: skip
        assert source.unchanged()  # data_version moved, the tokens did not
        assert await source.reload() is None
        storage.create_token(other, name="second", client_type="AFAD")
        assert not source.unchanged()
        loaded = await source.reload()
        assert loaded is not None
        assert sorted(c.name for c in loaded[0].values()) == ["first", "second"]
        storage.revoke_token(other, "first")
        assert not source.unchanged()
    finally:
        source.close()
        other.close()
