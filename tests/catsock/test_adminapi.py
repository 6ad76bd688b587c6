"""The operator's console API (catsock/adminapi.py, issue 15): admin tokens only,
recipients and their lag, the ledger, refused events and their retry, live
connections, tokens, and the audit of every write. Real gateway, real sockets,
real SQLite; wall time is the test's own so lag in seconds is exact.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket

import storage
from catsock.adminapi import AdminApi

from .harness import CONVERSION, GatewayFactory, RunningGateway, envelope
from .test_delivery import ACKS_RESUME, publish_all, until_pong
from .test_http import Reply, http
from .test_refused import TIGHT, errors

T0 = 1_800_000_000.0


class Wall:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def call(
    gw: RunningGateway, token: str, method: str, target: str, body: Any = None
) -> Reply:
    return await http(
        gw.port,
        method,
        target,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        body=b"" if body is None else json.dumps(body).encode(),
    )


async def audit(gw: RunningGateway) -> list[tuple[str, str, str, str]]:
    db = storage.open_db(gw.database)
    try:
        rows = storage.list_audit(db, limit=100)
    finally:
        db.close()
    return [(r["actor"], r["action"], r["target"], r["result"]) for r in reversed(rows)]


def conversion(message_id: str) -> str:
    return envelope("conversion", CONVERSION, "CATS", message_id)


async def test_only_an_admin_token_reaches_any_admin_endpoint(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    affiliate = gw.token("dash-500", "DASHBOARD", "500")
    cats = gw.token("cats", "CATS")
    admin = gw.token("admin", "DASHBOARD")
    routes = AdminApi(gw.gateway.http).routes
    with trio.fail_after(30):
        for path, methods in routes.items():
            if path == "/api/history":  # any DASHBOARD token's own events
                continue
            for method in methods:
                for token in (affiliate, cats):
                    reply = await call(gw, token, method, path, {"id": 1, "name": "cats"})
                    assert reply.status == 403, (path, method, reply.body)
                    assert reply.json()["error_code"] == "EVENT_NOT_ALLOWED"
                    assert "admin token" in reply.json()["error_message"]
                reply = await call(gw, "cs_not_a_token", method, path)
                assert reply.status == 401, (path, method)
        # The affiliate's token was not revoked by its attempt, nor anything written.
        async with gw.client("DASHBOARD", "dash-500", user_id="500"):
            pass
        reply = await call(gw, admin, "GET", "/api/admin/tokens")
        assert reply.status == 200
        assert all(t["revoked_at"] is None for t in reply.json()["tokens"])
    assert await audit(gw) == []


async def test_lag_appears_while_a_recipient_is_offline_and_clears_when_it_returns(
    start_gateway: GatewayFactory,
) -> None:
    wall = Wall()
    gw = await start_gateway(wall_clock=wall)
    admin = gw.token("admin", "DASHBOARD")
    gw.token("afad", "AFAD")
    with trio.fail_after(30):
        async with gw.client("CATS") as cats:
            await publish_all(cats, [conversion(f"m{i}") for i in range(3)])
        wall.now += 90.0
        reply = await call(gw, admin, "GET", "/api/admin/recipients?threshold=60")
        assert reply.status == 200, reply.body
        answer = reply.json()
        rows = {r["identity"]: r for r in answer["recipients"]}
        assert set(rows) == {"afad", "cats"}
        afad = rows["afad"]
        assert (afad["lag_events"], afad["lag_seconds"], afad["lagging"]) == (3, 90.0, True)
        assert (afad["online"], afad["connections"], afad["cursor"]) == (False, 0, 0)
        assert answer["recipients"][0]["identity"] == "afad"  # the worst first
        async with gw.client("AFAD", extensions=ACKS_RESUME) as client:
            seqs = [json.loads(await client.recv_text())["seq"] for _ in range(3)]
            await client.send({"type": "ack", "seq": seqs[-1]})
            assert await until_pong(client) == []
            reply = await call(gw, admin, "GET", "/api/admin/recipients?sort=identity")
            afad = reply.json()["recipients"][0]
            assert afad["identity"] == "afad"
            assert (afad["lag_events"], afad["lag_seconds"], afad["lagging"]) == (0, None, False)
            assert (afad["online"], afad["cursor"]) == (True, seqs[-1])
        await gw.gateway.delivery.flush()
        reply = await call(gw, admin, "GET", "/api/admin/recipients?sort=identity&limit=1")
        (afad,) = reply.json()["recipients"]
        assert afad["last_ack_at"] == storage.iso(wall.now)
        assert (afad["online"], afad["lag_events"]) == (False, 0)
        for bad in ("limit=0", "limit=x", "threshold=-1", "sort=nope"):
            reply = await call(gw, admin, "GET", f"/api/admin/recipients?{bad}")
            assert reply.status == 400, bad
            assert reply.json()["error_code"] == "INVALID_MESSAGE"


async def test_ledger_search_tells_what_became_of_an_event(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    admin = gw.token("admin", "DASHBOARD")
    with trio.fail_after(30):
        async with gw.client("AFAD", extensions=ACKS_RESUME) as afad:
            async with gw.client("CATS") as cats:
                await publish_all(cats, [conversion("x-1")])
            seq = json.loads(await afad.recv_text())["seq"]
            await afad.send({"type": "ack", "seq": seq})
            assert await until_pong(afad) == []
        await gw.gateway.delivery.flush()
        reply = await call(gw, admin, "GET", "/api/admin/ledger?message_id=x-1")
        assert reply.status == 200, reply.body
        (story,) = reply.json()["events"]
        assert story["event"]["seq"] == seq
        assert story["event"]["sender"] == "cats"
        assert story["lines"][0].startswith(f"seq {seq}: conversion from cats")
        assert [f.split()[0] for f in story["recipients"]["afad"]] == ["written", "acked"]
        kinds = [(t["identity"], t["kind"]) for t in story["timeline"]]
        assert kinds == [("afad", "written"), ("afad", "acked")]
        reply = await call(gw, admin, "GET", "/api/admin/ledger?message_id=x-1&recipient=nobody")
        (story,) = reply.json()["events"]
        assert list(story["recipients"]) == ["nobody"]
        assert story["timeline"] == []
        reply = await call(gw, admin, "GET", "/api/admin/ledger?message_id=never")
        assert reply.json() == {"message_id": "never", "refusals": [], "events": []}
        reply = await call(gw, admin, "GET", "/api/admin/ledger")
        assert (reply.status, reply.json()["error_code"]) == (400, "INVALID_MESSAGE")


async def test_a_refused_event_is_listed_retried_delivered_and_audited(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway(limits=TIGHT)
    admin = gw.token("admin", "DASHBOARD")
    texts = [conversion(f"r-{i}") for i in range(3)]
    with trio.fail_after(30):
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            for text in texts:
                await cats.send(text)
            assert await errors(cats, 1) == ["RATE_LIMIT_EXCEEDED"]
            await gw.gateway.log.flush()
            reply = await call(gw, admin, "GET", "/api/admin/refused?reason=RATE_LIMIT_EXCEEDED")
            (row,) = reply.json()["refused"]
            assert (row["identity"], row["message_id"], row["body"]) == ("cats", "r-2", texts[2])
            got = [m["message_id"] for m in await until_pong(afad)]
            assert got in (["r-0", "r-1"], ["r-0"])
            if got == ["r-0"]:
                assert json.loads(await afad.recv_text())["message_id"] == "r-1"
            await trio.sleep(1.0)  # the bucket has a token again
            reply = await call(gw, admin, "POST", "/api/admin/refused/retry", {"id": row["id"]})
            assert reply.status == 202, reply.body
            assert await afad.recv_text() == texts[2]
            reply = await call(gw, admin, "POST", "/api/admin/refused/retry", {"id": 999})
            assert reply.status == 404
            reply = await call(gw, admin, "POST", "/api/admin/refused/retry", {"id": "1"})
            assert reply.status == 400
    assert await audit(gw) == [
        ("admin", "retry", str(row["id"]), "accepted"),
        ("admin", "retry", "999", "INVALID_MESSAGE"),
    ]


async def closed(client: Any) -> tuple[int, str]:
    """Read until the gateway closes; its close code and reason."""
    reason = None
    try:
        while True:
            await client.ws.get_message()
    except trio_websocket.ConnectionClosed as exc:
        reason = exc.reason
    assert reason is not None
    return reason.code, reason.reason or ""


async def test_connections_are_listed_and_closed_and_tokens_created_and_revoked(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    admin = gw.token("admin", "DASHBOARD")
    with trio.fail_after(30):
        async with gw.client("AFAD") as afad:
            reply = await call(gw, admin, "GET", "/api/admin/connections")
            (listed,) = [c for c in reply.json()["connections"] if c["identity"] == "afad"]
            assert (listed["client_type"], listed["transport"]) == ("AFAD", "websocket")
            assert listed["remote"].startswith("127.0.0.1")
            reply = await call(
                gw, admin, "POST", "/api/admin/connections/close",
                {"id": listed["id"], "reason": "testing the console"},
            )
            assert reply.status == 200, reply.body
            closed_id = listed["id"]
            assert await closed(afad) == (1008, "closed by an operator: testing the console")
        reply = await call(gw, admin, "POST", "/api/admin/connections/close", {"id": "nope"})
        assert reply.status == 404
        reply = await call(
            gw, admin, "POST", "/api/admin/tokens", {"name": "new-afad", "client_type": "AFAD"}
        )
        assert reply.status == 201, reply.body
        token = reply.json()["token"]
        assert token.startswith("cs_")
        reply = await call(gw, admin, "GET", "/api/admin/tokens")
        listed = [t for t in reply.json()["tokens"] if t["name"] == "new-afad"]
        assert len(listed) == 1
        assert "token" not in listed[0]  # shown once, at creation
        gw.tokens["new-afad"] = token
        async with gw.client("AFAD", "new-afad") as fresh:
            reply = await call(gw, admin, "POST", "/api/admin/tokens/revoke", {"name": "new-afad"})
            assert reply.json() == {"name": "new-afad", "revoked": True, "connections_closed": 1}
            assert await closed(fresh) == (1008, "token revoked")
        reply = await call(gw, admin, "POST", "/api/admin/tokens/revoke", {"name": "new-afad"})
        assert reply.status == 404
        reply = await call(
            gw, admin, "POST", "/api/admin/tokens", {"name": "admin", "client_type": "AFAD"}
        )
        assert (reply.status, reply.json()["error_code"]) == (409, "INVALID_MESSAGE")
        for body in ([], {"name": 5, "client_type": "AFAD"}, {"name": "a", "client_type": "x y"}):
            reply = await call(gw, admin, "POST", "/api/admin/tokens", body)
            assert reply.status == 400, body
        audit_a = reply.json()["error_message"]
        reply = await call(gw, admin, "GET", "/api/admin/audit?limit=3")
        assert [r["action"] for r in reply.json()["audit"]] == [
            "create_token", "create_token", "revoke"
        ]
    assert await audit(gw) == [
        ("admin", "close", closed_id, "afad"),
        ("admin", "create_token", "new-afad", "created"),
        ("admin", "revoke", "new-afad", "revoked"),
        ("admin", "revoke", "new-afad", "not found"),
        ("admin", "create_token", "admin", "a credential named 'admin' already exists"),
        ("admin", "create_token", "a", audit_a),
    ]


@pytest.mark.parametrize("limit", ["0", "1001", "x"])
async def test_every_list_is_bounded(start_gateway: GatewayFactory, limit: str) -> None:
    gw = await start_gateway()
    admin = gw.token("admin", "DASHBOARD")
    with trio.fail_after(20):
        for path in ("recipients", "refused", "connections", "tokens", "audit"):
            reply = await call(gw, admin, "GET", f"/api/admin/{path}?limit={limit}")
            assert reply.status == 400, (path, reply.body)
            assert "limit must be" in reply.json()["error_message"]


async def test_metrics_show_the_worst_recipients_lag_and_totals(
    start_gateway: GatewayFactory,
) -> None:
    wall = Wall()
    gw = await start_gateway(wall_clock=wall)
    for i in range(12):
        gw.token(f"afad-{i:02}", "AFAD")
    with trio.fail_after(30):
        async with gw.client("CATS") as cats:
            await publish_all(cats, [conversion("lag-1")])
        wall.now += 30.0
        async with gw.client("CATS") as cats:
            await publish_all(cats, [conversion("lag-2")])
        reply = await http(gw.port, "GET", "/metrics")
    text = reply.body.decode()
    series = [line for line in text.splitlines() if line.startswith("catsock_recipient_lag_")]
    assert len(series) == 2 * 10  # the 10 worst of 12, not one series each
    assert 'catsock_recipient_lag_events{recipient="afad-00"} 2.0' in series
    assert 'catsock_recipient_lag_seconds{recipient="afad-00"} 30.0' in series
    assert "catsock_recipients_lag_events 24.0" in text
    assert "catsock_recipients_behind 12.0" in text
    assert "catsock_recipients_max_lag_seconds 30.0" in text


async def test_history_is_the_recent_window_of_the_callers_own_channels(
    start_gateway: GatewayFactory,
) -> None:
    wall = Wall()
    gw = await start_gateway(wall_clock=wall)
    admin = gw.token("admin", "DASHBOARD")
    affiliate = gw.token("dash-501", "DASHBOARD", "501")
    cats = gw.token("cats", "CATS")
    other_owner = {**CONVERSION, "owner_id": 501, "tier_rewards": []}
    with trio.fail_after(30):
        async with gw.client("CATS") as client:
            await publish_all(client, [conversion("old")])
            wall.now += 600.0
            await publish_all(
                client,
                [conversion("h-1"), envelope("conversion", other_owner, "CATS", "h-2")],
            )
        wall.now += 10.0
        reply = await call(gw, admin, "GET", "/api/history?seconds=60")
        assert reply.status == 200, reply.body
        answer = reply.json()
        assert [e["message_id"] for e in answer["events"]] == ["h-1", "h-2"]
        assert [e["seq"] for e in answer["events"]] == [2, 3]
        assert answer["at"] == [T0 + 600.0, T0 + 600.0]
        assert (answer["now"], answer["more"]) == (T0 + 610.0, False)
        reply = await call(gw, admin, "GET", "/api/history?seconds=3600&limit=2")
        assert [e["message_id"] for e in reply.json()["events"]] == ["h-1", "h-2"]
        assert reply.json()["more"] is True
        reply = await call(gw, admin, "GET", "/api/history")
        assert [e["message_id"] for e in reply.json()["events"]] == ["old", "h-1", "h-2"]
        reply = await call(gw, affiliate, "GET", "/api/history")
        assert [e["message_id"] for e in reply.json()["events"]] == ["h-2"]  # user:501 only
        assert (await call(gw, cats, "GET", "/api/history")).status == 403
        assert (await call(gw, admin, "GET", "/api/history?seconds=0")).status == 400
