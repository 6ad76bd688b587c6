"""Projections through a real gateway (docs/privacy.md): what each recipient is sent.

A user-bound dashboard must never receive a visitor's personal fields, live,
replayed or long-polled, while AFAD and admin dashboards receive the publisher's
bytes unchanged. Each test runs a gateway on loopback with a real SQLite file.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from click.testing import CliRunner

import storage
from catsock.cli import main

from .harness import CONVERSION, GatewayFactory, envelope
from .test_delivery import until_pong
from .test_http import bearer, http

VISITOR = {
    "ipaddress": "203.0.113.9",
    "useragent": "Mozilla/5.0 (X11; Linux x86_64)",
    "referer": "https://blog.example.org/post",
}
#: The same fields hidden by case and nesting: a projection must find them too.
DODGES = {
    "IPAddress": "203.0.113.10",
    "extra": {"UserAgent": "Mozilla/4.0", "list": [{"REFERER": "https://x.example"}]},
}
SECRETS = ("203.0.113", "Mozilla", "example.org", "x.example")


def click(message_id: str, owner_id: int = 500, **extra: Any) -> str:
    payload = {
        "access_id": 67890,
        "adware_id": 100,
        "owner_id": owner_id,
        "has_reward": True,
        "reward_amount": 50,
        **VISITOR,
        **DODGES,
        "created_at": "2025-10-29T12:34:56Z",
        **extra,
    }
    return envelope("click", payload, "CATS", message_id)


def assert_stripped(text: str, original: str) -> None:
    """``text`` is ``original`` without any personal field, and nothing else changed."""
    for secret in SECRETS:
        assert secret not in text, text
    got, sent = json.loads(text), json.loads(original)
    got.pop("seq", None)
    payload = sent["payload"]
    for key in (*VISITOR, "IPAddress"):
        payload.pop(key, None)
    payload["extra"] = {"list": [{}]}
    assert got == sent


async def test_user_bound_dashboard_gets_clicks_without_visitor_data_live(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    texts = [click("k1"), envelope("conversion", CONVERSION, "CATS", "c1"), click("k2")]
    with trio.fail_after(20):
        async with (
            gw.client("AFAD") as afad,
            gw.client("DASHBOARD", "admin") as admin,
            gw.client("DASHBOARD", "dash-500", user_id="500") as mine,
            gw.client("DASHBOARD", "dash-500b", user_id="500") as also_mine,
            gw.client("CATS") as cats,
        ):
            for text in texts:
                await cats.send(text)
            assert await until_pong(cats) == []
            # Byte for byte what CATS sent, for AFAD and the admin dashboard.
            assert [await afad.recv_text() for _ in texts] == texts
            assert [await admin.recv_text() for _ in texts] == texts
            for dashboard in (mine, also_mine):
                got = [await dashboard.recv_text() for _ in texts]
                assert_stripped(got[0], texts[0])
                assert got[1] == texts[1]  # a conversion has nothing to strip: as sent
                assert_stripped(got[2], texts[2])
                assert await until_pong(dashboard) == []


async def test_user_bound_dashboard_replay_is_stripped_too(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    gw.token("afad", "AFAD")  # durable from now on
    texts = [click(f"k{i}") for i in range(3)]
    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            for text in texts:
                await cats.send(text)
            assert await until_pong(cats) == []
        resume = {"resume": {"since": 0}}
        async with gw.client("DASHBOARD", "dash-500", user_id="500", extensions=resume) as mine:
            got = [await mine.recv_text() for _ in texts]
            assert [json.loads(t)["seq"] for t in got] == [1, 2, 3]
            for text, original in zip(got, texts, strict=True):
                assert_stripped(text, original)
        async with gw.client("AFAD") as afad:  # durable: replayed verbatim
            assert [await afad.recv_text() for _ in texts] == texts


async def test_long_poll_applies_the_same_projection(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    mine = gw.token("dash-500", "DASHBOARD", user_id="500")
    afad = gw.token("afad", "AFAD")
    text = click("k1")
    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            await cats.send(text)
            assert await until_pong(cats) == []
        reply = await http(gw.port, "GET", "/api/events?since=0", headers=bearer(mine))
        (event,) = reply.json()["events"]
        assert_stripped(json.dumps(event), text)
        reply = await http(gw.port, "GET", "/api/events?since=0", headers=bearer(afad))
    # AFAD: the publisher's text after the seq, byte for byte.
    assert reply.body == b'{"events":[{"seq":1,' + text[1:].encode() + b'],"next":1}\n'


async def test_dashboard_history_applies_the_same_projection(
    start_gateway: GatewayFactory,
) -> None:
    """GET /api/history (the dashboard's counters on load) is one more way out."""
    gw = await start_gateway()
    mine = gw.token("dash-500", "DASHBOARD", user_id="500")
    admin = gw.token("admin", "DASHBOARD")
    text = click("k1")
    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            await cats.send(text)
            assert await until_pong(cats) == []
        reply = await http(gw.port, "GET", "/api/history", headers=bearer(mine))
        (event,) = reply.json()["events"]
        assert_stripped(json.dumps(event), text)
        reply = await http(gw.port, "GET", "/api/history", headers=bearer(admin))
    assert reply.body.startswith(b'{"events":[{"seq":1,' + text[1:].encode() + b'],')


async def test_an_operator_allow_list_and_deny_list(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(
        privacy={
            "projections": {
                "DASHBOARD/click": {"allow": ["access_id", "owner_id"], "strip_personal": False},
                "AFAD": {"deny": ["reward_amount"], "strip_personal": False},
            }
        }
    )
    text = click("k1")
    with trio.fail_after(20):
        async with (
            gw.client("AFAD") as afad,
            gw.client("DASHBOARD", "admin") as admin,
            gw.client("CATS") as cats,
        ):
            await cats.send(text)
            conversion = envelope("conversion", CONVERSION, "CATS", "c1")
            await cats.send(conversion)
            got = json.loads(await admin.recv_text())
            assert got["payload"] == {"access_id": 67890, "owner_id": 500}
            assert await admin.recv_text() == conversion  # no rule for conversions
            got = json.loads(await afad.recv_text())
            assert "reward_amount" not in got["payload"]
            assert got["payload"]["ipaddress"] == VISITOR["ipaddress"]  # kept, as configured


async def test_personal_fields_are_redacted_in_the_message_log_in_any_case_and_depth(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(20):
        async with gw.client("DASHBOARD", "admin") as admin:
            # Refused (a dashboard may not send clicks): its text goes to the message log.
            await admin.send(click("refused"))
            assert (await admin.recv())["type"] == "error"
            # Invalid: the error names the fields, never their values.
            bad = json.loads(click("bad"))
            bad["payload"].update(ipaddress=20301139, useragent=["Mozilla/9 bad"])
            await admin.send(json.dumps(bad))
            error = await admin.recv_text()
            assert "20301139" not in error
            assert "Mozilla" not in error
            async with gw.client("CATS") as cats:  # accepted: in the event log, raw for now
                await cats.send(click("accepted"))
                assert await until_pong(cats) == []
            assert json.loads(await admin.recv_text())["message_id"] == "accepted"
            assert await until_pong(admin) == []
        await gw.gateway.log.flush()
        await gw.gateway.delivery.flush()
    db = storage.open_db(gw.database)
    try:
        (payload,) = db.conn.execute(
            "SELECT payload FROM messages WHERE message_id = 'refused'"
        ).fetchone()
        # The ledger holds seqs, names and the gateway's own words, never payload text.
        ledger = repr(db.conn.execute("SELECT * FROM ledger").fetchall())
    finally:
        db.close()
    assert "written" in ledger
    for secret in SECRETS:
        assert secret not in payload
        assert secret not in ledger
    stored = json.loads(payload)["payload"]
    assert stored["IPAddress"] == stored["ipaddress"] == "[redacted]"
    assert stored["extra"] == {"UserAgent": "[redacted]", "list": [{"REFERER": "[redacted]"}]}
    # What `python -m catsock logs` shows of every message, the accepted event included.
    shown = CliRunner().invoke(main, ["logs", "--json", "--db", str(gw.database)])
    assert shown.exit_code == 0, shown.output
    assert "accepted" in shown.output
    assert "refused" in shown.output
    for secret in SECRETS:
        assert secret not in shown.output
