"""JWTs and expiring credentials on a real gateway: WebSocket auth, claims, the HTTP
Bearer, expiry closing a live connection on the fake clock, refresh, ``jti``
revocation and opaque tokens with an expiry."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import storage

from .harness import CONVERSION, Client, GatewayFactory, RunningGateway, envelope
from .jwtkit import SECRET, T0, claims, rsa_key, sign, unsigned, write_pem
from .test_http import http


def fake_wall() -> float:
    """Unix time that moves with trio's (fake) clock, starting at ``T0``."""
    return T0 + trio.current_time()


async def jwt_gateway(start_gateway: GatewayFactory, **overrides: Any) -> RunningGateway:
    jwt = {"secret": SECRET, **overrides.pop("jwt", {})}
    return await start_gateway(wall_clock=fake_wall, jwt=jwt, **overrides)


def now_claims(sub: str = "dash-1", client_type: str = "DASHBOARD", **extra: Any) -> dict[str, Any]:
    return claims(sub, client_type, now=fake_wall(), **extra)


async def auth(client: Client, token: str, client_type: str) -> dict[str, Any]:
    await client.send({"type": "auth", "token": token, "client_type": client_type})
    return await client.recv()


async def ping(client: Client) -> None:
    await client.send({"type": "ping"})
    assert (await client.recv())["type"] == "pong"


# -- WebSocket auth ----------------------------------------------------------------------


async def test_a_jwt_authenticates_as_its_sub(start_gateway: GatewayFactory) -> None:
    gw = await jwt_gateway(start_gateway)
    with trio.fail_after(10):
        async with gw.connect() as client:
            reply = await auth(client, sign(now_claims("cats-jwt", "CATS")), "CATS")
            assert reply["type"] == "auth_success", reply
            (conn,) = gw.gateway.connections
            assert conn.principal is not None
            assert (conn.principal.identity, conn.principal.credential) == ("cats-jwt", "jwt")
            await ping(client)


async def test_opaque_tokens_still_work_beside_jwts(start_gateway: GatewayFactory) -> None:
    gw = await jwt_gateway(start_gateway)
    with trio.fail_after(10):
        async with gw.client("AFAD") as afad:
            await ping(afad)


@pytest.mark.parametrize(
    "case",
    ["type-mismatch", "expired", "alg-none", "bad-signature", "no-client-type"],
)
async def test_bad_jwts_get_auth_failed_and_1008(start_gateway: GatewayFactory, case: str) -> None:
    gw = await jwt_gateway(start_gateway)
    token = {
        "type-mismatch": sign(now_claims("dash-1", "DASHBOARD")),  # the auth says CATS
        "expired": sign(now_claims(ttl=-1)),
        "alg-none": unsigned(now_claims(client_type="CATS")),
        "bad-signature": sign(now_claims(client_type="CATS"), SECRET[::-1]),
        "no-client-type": sign(now_claims(client_type=None)),
    }[case]
    with trio.fail_after(10):
        async with gw.connect() as client:
            error = await auth(client, token, "CATS")
            assert error["payload"]["error_code"] == "AUTH_FAILED", error
            if case == "expired":
                assert error["payload"]["error_message"] == "token expired"
            assert await client.closed_code() == 1008


async def test_a_1mb_token_is_refused(start_gateway: GatewayFactory) -> None:
    gw = await jwt_gateway(start_gateway, limits={"max_message_size": 2 << 20})
    token = sign(now_claims(client_type="CATS", padding="x" * (1 << 20)))
    with trio.fail_after(20):
        async with gw.connect(max_message_size=4 << 20) as client:
            error = await auth(client, token, "CATS")
            assert error["payload"]["error_code"] == "AUTH_FAILED"
            assert await client.closed_code() == 1008


async def test_an_rs256_jwt_from_a_public_key(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    pem = write_pem(tmp_path / "issuer.pem", rsa_key())
    gw = await start_gateway(wall_clock=fake_wall, jwt={"public_key": pem, "issuer": "cats"})
    with trio.fail_after(10):
        async with gw.connect() as client:
            token = sign(now_claims("afad-rs", "AFAD", iss="cats"), rsa_key(), "RS256")
            assert (await auth(client, token, "AFAD"))["type"] == "auth_success"


async def test_a_user_bound_jwt_dashboard_sees_only_its_affiliate(
    start_gateway: GatewayFactory,
) -> None:
    gw = await jwt_gateway(start_gateway)
    with trio.fail_after(10):
        async with gw.client("CATS") as cats, gw.connect() as dash:
            reply = await auth(dash, sign(now_claims("aff-500", user_id=500)), "DASHBOARD")
            assert reply["type"] == "auth_success"
            assert gw.gateway.hub.subscribers("user:500") == 1
            assert gw.gateway.hub.subscribers("type:DASHBOARD") == 0
            other = {**CONVERSION, "owner_id": 600, "tier_rewards": []}
            await cats.send(envelope("conversion", other, "CATS", "m-600"))
            await cats.send(envelope("conversion", CONVERSION, "CATS", "m-500"))
            got = await dash.recv()
            assert (got["message_id"], got["payload"]["owner_id"]) == ("m-500", 500)
            # Nothing for affiliate 600 came before it, and nothing comes after.
            await ping(dash)


# -- HTTP Bearer ---------------------------------------------------------------------------


async def test_the_http_api_takes_the_same_jwt(start_gateway: GatewayFactory) -> None:
    gw = await jwt_gateway(start_gateway)
    cats = sign(now_claims("cats-http", "CATS"))
    body = envelope("conversion", CONVERSION, "CATS", "m-http").encode()
    with trio.fail_after(10):
        reply = await http(
            gw.port, "POST", "/api/publish", headers={"authorization": f"Bearer {cats}"}, body=body
        )
        assert reply.status == 202, reply.body
        dash = sign(now_claims("dash-500", user_id="500"))
        reply = await http(
            gw.port,
            "GET",
            "/api/events?since=0&wait=0",
            headers={"authorization": f"Bearer {dash}"},
        )
        assert reply.status == 200, reply.body
        assert [e["message_id"] for e in reply.json()["events"]] == ["m-http"]


@pytest.mark.parametrize("case", ["expired", "alg-none", "tampered-type"])
async def test_the_http_api_refuses_bad_jwts(start_gateway: GatewayFactory, case: str) -> None:
    gw = await jwt_gateway(start_gateway)
    token = {
        "expired": sign(now_claims("cats-http", "CATS", ttl=-5)),
        "alg-none": unsigned(now_claims("cats-http", "CATS")),
        "tampered-type": sign(now_claims("cats-http", "CATS"), SECRET[::-1]),
    }[case]
    body = envelope("conversion", CONVERSION, "CATS", "m-x").encode()
    with trio.fail_after(10):
        reply = await http(
            gw.port, "POST", "/api/publish", headers={"authorization": f"Bearer {token}"}, body=body
        )
    assert reply.status == 401
    error = reply.json()
    assert error["error_code"] == "AUTH_FAILED"
    if case == "expired":
        assert error["error_message"] == "token expired"


# -- expiry and refresh on live connections (fake clock) ---------------------------------


async def test_expiry_closes_a_live_connection_with_token_expired(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await jwt_gateway(start_gateway, jwt={"leeway": 5})
    with trio.fail_after(600):
        async with gw.connect() as client:
            start = trio.current_time()
            reply = await auth(client, sign(now_claims(ttl=120)), "DASHBOARD")
            assert reply["type"] == "auth_success"
            error = await client.recv()
            assert error["payload"]["error_code"] == "TOKEN_EXPIRED"
            assert await client.closed_code() == 4002
            # At exp plus the leeway, not before.
            assert trio.current_time() - start >= 125
    assert gw.gateway.stats.errors.get("TOKEN_EXPIRED") == 1


async def test_refresh_extends_the_deadline_on_the_same_connection(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await jwt_gateway(start_gateway)
    with trio.fail_after(600):
        async with gw.connect() as client:
            start = trio.current_time()
            first = await auth(client, sign(now_claims(ttl=100, jti="a")), "DASHBOARD")
            await trio.sleep(90)
            second = await auth(client, sign(now_claims(ttl=100, jti="b")), "DASHBOARD")
            assert second["type"] == "auth_success", second
            assert second["connection_id"] == first["connection_id"]
            # Past the first token's exp the connection is alive.
            await trio.sleep(30)
            await ping(client)
            (conn,) = gw.gateway.connections
            assert conn.principal is not None
            assert conn.principal.jti == "b"
            error = await client.recv()
            assert error["payload"]["error_code"] == "TOKEN_EXPIRED"
            assert await client.closed_code() == 4002
            assert trio.current_time() - start >= 190


@pytest.mark.parametrize("case", ["other-sub", "other-user", "expired", "garbage"])
async def test_any_other_refresh_is_refused_and_the_old_deadline_stays(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock, case: str
) -> None:
    gw = await jwt_gateway(start_gateway)
    with trio.fail_after(600):
        async with gw.connect() as client:
            start = trio.current_time()
            token = sign(now_claims("dash-1", user_id="500", ttl=100))
            assert (await auth(client, token, "DASHBOARD"))["type"] == "auth_success"
            await trio.sleep(50)
            refresh = {
                "other-sub": sign(now_claims("dash-2", user_id="500", ttl=1000)),
                "other-user": sign(now_claims("dash-1", user_id="600", ttl=1000)),
                "expired": sign(now_claims("dash-1", user_id="500", ttl=-1)),
                "garbage": "cs_not-a-token",
            }[case]
            error = await auth(client, refresh, "DASHBOARD")
            assert error["payload"]["error_code"] == "AUTH_FAILED", error
            await ping(client)  # still open, still the first identity
            (conn,) = gw.gateway.connections
            assert conn.principal is not None
            assert conn.principal.identity == "dash-1"
            assert conn.principal.user_id == "500"
            error = await client.recv()
            assert error["payload"]["error_code"] == "TOKEN_EXPIRED"
            assert await client.closed_code() == 4002
            assert 100 <= trio.current_time() - start < 1000


async def test_a_second_auth_without_expiry_is_still_already_authenticated(
    start_gateway: GatewayFactory,
) -> None:
    gw = await jwt_gateway(start_gateway)
    with trio.fail_after(10):
        async with gw.client("CATS") as cats:
            error = await auth(cats, sign(now_claims("cats", "CATS")), "CATS")
            assert error["payload"]["error_code"] == "ALREADY_AUTHENTICATED"


# -- opaque tokens with an expiry ----------------------------------------------------------


async def test_an_opaque_token_with_an_expiry_closes_its_connection(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await jwt_gateway(start_gateway)
    db = storage.open_db(gw.database)
    try:
        token = storage.create_token(
            db, name="short", client_type="AFAD", expires_in=300, now=fake_wall()
        )
    finally:
        db.close()
    with trio.fail_after(900):
        async with gw.connect() as client:
            assert (await auth(client, token, "AFAD"))["type"] == "auth_success"
            # A JWT for the same identity refreshes it.
            await trio.sleep(200)
            fresh = sign(now_claims("short", "AFAD", ttl=400))
            assert (await auth(client, fresh, "AFAD"))["type"] == "auth_success"
            await trio.sleep(200)
            await ping(client)
            error = await client.recv()
            assert error["payload"]["error_code"] == "TOKEN_EXPIRED"
            assert await client.closed_code() == 4002
        # Once expired, the token is refused at login, and over HTTP.
        async with gw.connect() as client:
            error = await auth(client, token, "AFAD")
            assert error["payload"] == {
                "error_code": "AUTH_FAILED",
                "error_message": "token expired",
            }
        reply = await http(
            gw.port,
            "GET",
            "/api/events?since=0&wait=0",
            headers={"authorization": f"Bearer {token}"},
        )
        assert reply.status == 401


# -- revocation ------------------------------------------------------------------------------


async def test_jti_revocation_cuts_a_live_connection_and_refuses_the_token(
    start_gateway: GatewayFactory,
) -> None:
    # Real clock, as tests/catsock/test_auth.py's revocation test: the poller works
    # in a thread every 2 s.
    gw = await start_gateway(jwt={"secret": SECRET})
    token = sign(claims("cats-j", "CATS", now=time.time(), jti="j-9"))
    other = sign(claims("cats-j", "CATS", now=time.time(), jti="j-10"))
    with trio.fail_after(10):
        async with gw.connect() as kept, gw.connect() as cut:
            assert (await auth(cut, token, "CATS"))["type"] == "auth_success"
            assert (await auth(kept, other, "CATS"))["type"] == "auth_success"
            db = storage.open_db(gw.database)
            try:
                assert storage.revoke_jti(db, "j-9")
                assert not storage.revoke_jti(db, "j-9")
            finally:
                db.close()
            assert await cut.closed_code() == 1008
            await ping(kept)  # another jti of the same sub stays
        async with gw.connect() as again:
            error = await auth(again, token, "CATS")
            assert error["payload"]["error_message"] == "token revoked"


async def test_the_auth_message_never_reaches_the_log(start_gateway: GatewayFactory) -> None:
    gw = await jwt_gateway(start_gateway)
    token = sign(now_claims("cats-log", "CATS"))
    with trio.fail_after(10):
        async with gw.connect() as client:
            assert (await auth(client, token, "CATS"))["type"] == "auth_success"
        await gw.gateway.log.flush()
    db = storage.open_db(gw.database)
    try:
        rows = db.conn.execute("SELECT payload FROM messages").fetchall()
    finally:
        db.close()
    assert token not in json.dumps(rows)
