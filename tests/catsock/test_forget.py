"""``python -m catsock forget`` and the personal-field lifetime (docs/privacy.md).

``forget`` runs as a real subprocess against the database of a gateway that is
running; afterwards no byte of the forgotten values may be left in the database
file or its write-ahead log, and delivery goes on. The lifetime runs through the
event log's own prune, on a fake wall clock.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import storage

from .harness import GatewayFactory, RunningGateway, envelope
from .test_delivery import until_pong
from .test_serve import TIMEOUT, cli_env, run_cli

VISITOR_IP = "198.51.100.77"
OTHER_IP = "192.0.2.5"
EMAIL = "alice.visitor@example.com"


def click(message_id: str, owner_id: int, ip: str, **extra: Any) -> str:
    payload = {
        "access_id": 1,
        "adware_id": 100,
        "owner_id": owner_id,
        "ipaddress": ip,
        "useragent": "Mozilla/5.0 forget-me",
        "referer": "https://ref.example/forget-me",
        **extra,
    }
    return envelope("click", payload, "CATS", message_id)


def file_bytes(database: Path) -> bytes:
    """Everything SQLite keeps for ``database``: the file, its WAL and shared memory."""
    return b"".join(f.read_bytes() for f in sorted(database.parent.glob(database.name + "*")))


def stored(database: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def _publish(gw: RunningGateway, texts: list[str]) -> None:
    async with gw.client("CATS") as cats:
        for text in texts:
            await cats.send(text)
        assert await until_pong(cats) == []
    # A refused event (a dashboard may not send clicks) lands in the message log instead.
    async with gw.client("DASHBOARD", "refused") as dashboard:
        await dashboard.send(click("refused", 500, VISITOR_IP, Contact={"EMail": EMAIL}))
        assert (await dashboard.recv())["type"] == "error"
    await gw.gateway.delivery.flush()
    await gw.gateway.log.flush()


async def test_forget_a_visitor_leaves_no_byte_of_it_and_delivery_goes_on(
    tmp_path: Path, start_gateway: GatewayFactory
) -> None:
    gw = await start_gateway()
    gw.token("afad", "AFAD")  # durable: everything below waits for it in the log
    texts = [
        click("v1", 500, VISITOR_IP),
        # Long: its text spills onto overflow pages, which a rewrite frees.
        click(
            "v2", 600, VISITOR_IP, notes="n" * 9000, extra={"IPAddress": VISITOR_IP, "email": EMAIL}
        ),
        click("o1", 500, OTHER_IP),
    ]
    with trio.fail_after(TIMEOUT):
        await _publish(gw, texts)
        before = file_bytes(gw.database)
        assert VISITOR_IP.encode() in before
        assert EMAIL.encode() in before
        env = cli_env(gw.database)
        result = await run_cli(
            "forget", "--field", f"IPADDRESS={VISITOR_IP}", "--field", f"email={EMAIL}",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert result.code == 0, result
        assert result.out == (
            "forgot: 2 events, 2 message-log and refused-event rows, 0 connection addresses"
            " redacted\n"
        )
        after = file_bytes(gw.database)
        assert VISITOR_IP.encode() not in after
        assert EMAIL.encode() not in after
        assert b"forget-me" in after  # o1 is another visitor's: kept
        (other,) = stored(gw.database, "SELECT body FROM events WHERE message_id = 'o1'")
        assert json.loads(other[0])["payload"]["ipaddress"] == OTHER_IP
        # Delivery goes on: AFAD gets all three events, the forgotten ones without
        # their personal fields, then a new one as published.
        async with gw.client("AFAD") as afad:
            got = [json.loads(await afad.recv_text()) for _ in texts]
            assert [e["message_id"] for e in got] == ["v1", "v2", "o1"]
            assert "ipaddress" not in got[0]["payload"]
            assert got[1]["payload"]["extra"] == {}
            async with gw.client("CATS") as cats:
                late = click("late", 500, OTHER_IP)
                await cats.send(late)
                assert await afad.recv_text() == late


async def test_forget_a_user(tmp_path: Path, start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    gw.token("dash-500", "DASHBOARD", user_id="500")
    with trio.fail_after(TIMEOUT):
        async with gw.client("DASHBOARD", "dash-500"):
            pass  # its address is in the connection log
        texts = [click("v1", 500, VISITOR_IP, owner_name="Aff500"), click("o", 600, OTHER_IP)]
        await _publish(gw, texts)
        env = cli_env(gw.database)
        result = await run_cli("forget", "--user-id", "500", cwd=tmp_path, env=env)
        assert result.code == 0, result
        assert result.out == (
            "forgot: 1 events, 2 message-log and refused-event rows, 1 connection addresses"
            " redacted\n"
        )
        after = file_bytes(gw.database)
        assert VISITOR_IP.encode() not in after
        assert b"Aff500" not in after
        assert OTHER_IP.encode() in after
        addresses = "SELECT remote_addr FROM connections WHERE identity = 'dash-500'"
        assert stored(gw.database, addresses) == [("[redacted]",)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "say whom to forget"),
        (("--field", "ipaddress"), "expected NAME=VALUE"),
        (("--field", "=1.2.3.4"), "expected NAME=VALUE"),
        (("--user-id", " "), "must not be empty"),
    ],
)
async def test_forget_refuses_bad_input_with_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    with trio.fail_after(TIMEOUT):
        result = await run_cli("forget", *args, cwd=tmp_path, env=cli_env(tmp_path / "x.db"))
    assert result.code == 1
    assert "Traceback" not in result.err
    assert result.err.startswith("Error: ")
    assert message in result.err


async def test_personal_fields_are_stripped_after_their_lifetime(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    now = [1_000_000.0]
    gw = await start_gateway(wall_clock=lambda: now[0])
    gw.token("afad", "AFAD")
    nested = click("v1", 500, VISITOR_IP, deep=[{"UserAgent": "nested-agent"}])
    lifetime = gw.gateway.config.privacy.personal_retention_hours * 3600
    with trio.fail_after(300):  # fake seconds
        async with gw.client("CATS") as cats:
            await cats.send(nested)
            assert await until_pong(cats) == []
        await gw.gateway.delivery.flush()
        now[0] += lifetime - 1
        await trio.sleep(61)  # the event log's next prune: younger than its lifetime
        (body,) = stored(gw.database, "SELECT body FROM events")[0]
        assert body == nested  # kept as published (AFAD may need it for fraud checks)
        now[0] += 2
        await trio.sleep(60)  # the prune after that: past it
        (body,) = stored(gw.database, "SELECT body FROM events")[0]
        payload = json.loads(body)["payload"]
        assert payload["deep"] == [{}]
        assert not {"ipaddress", "useragent", "referer"} & set(payload)
        assert payload["owner_id"] == 500  # the event stays, for delivery and the ledger
        assert VISITOR_IP.encode() not in file_bytes(gw.database)
        async with gw.client("AFAD") as afad:
            assert json.loads(await afad.recv_text())["payload"] == payload


def test_strip_personal_looks_at_each_event_once(tmp_path: Path) -> None:
    db = storage.open_db(tmp_path / "s.db")
    try:
        rows = [
            storage.EventRow(
                seq, f"m{seq}", "cats", None, "click", ("type:AFAD",), 3, float(seq), None,
                click(f"m{seq}", 500, VISITOR_IP),
            )
            for seq in (1, 2, 3)
        ]  # fmt: skip
        storage.commit_events(db, rows, {}, [])
        fields = ["ipaddress"]
        assert storage.strip_personal(db, fields, before=1.0) == 0  # none older than 1.0
        assert storage.strip_personal(db, fields, before=2.5, batch=1) == 1  # seq 1
        assert storage.strip_personal(db, fields, before=2.5) == 1  # seq 2
        assert storage.strip_personal(db, fields, before=2.5) == 0
        assert storage.strip_personal(db, fields, before=10.0) == 1  # seq 3 (the newest)
        bodies = [json.loads(r[0]) for r in db.conn.execute("SELECT body FROM events")]
        assert all("ipaddress" not in b["payload"] for b in bodies)
        assert all(b["payload"]["useragent"] for b in bodies)  # not asked for
    finally:
        db.close()
