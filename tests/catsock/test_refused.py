"""The refused-event store (issue 11): every event refused from a publisher is
kept with why and by whom, listed by ``python -m catsock refused``, counted in
/metrics, explained by ``ledger`` and submitted again by ``refused retry``.

The publishers here never read their errors, like the seed's PHP client.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import trio
import trio.testing
from click.testing import CliRunner, Result

import storage
from catsock.cli import main

from .harness import CONVERSION, Client, GatewayFactory, RunningGateway, envelope
from .test_delivery import until_pong
from .test_http import http

TIGHT = {"rate": {"CATS": {"per_minute": 60.0, "burst": 2}}}


async def kept(gw: RunningGateway) -> list[dict[str, Any]]:
    """The refused store, oldest first, once the log writer has written it."""
    await gw.gateway.log.flush()
    db = storage.open_db(gw.database)
    try:
        return list(reversed(storage.list_refused(db, limit=100)))
    finally:
        db.close()


async def errors(client: Client, n: int) -> list[str]:
    """The codes of the next ``n`` errors (a rate-limited client cannot ping)."""
    codes = []
    while len(codes) < n:
        message = await client.recv()
        if message["type"] == "error":
            codes.append(message["payload"]["error_code"])
    return codes


async def cli(*args: str) -> Result:
    # In a thread: `refused retry` talks to the gateway this test's loop serves.
    return await trio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, list(args), catch_exceptions=False)
    )


async def test_refusals_of_every_kind_are_kept_and_nothing_else(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(limits=TIGHT)
    texts = [envelope("conversion", CONVERSION, "CATS", f"c-{i}") for i in range(3)]
    bad_payload = envelope("conversion", {"pay_id": "1"}, "CATS", "bad-payload")
    not_allowed = envelope("conversion", CONVERSION, "DASHBOARD", "not-allowed")
    with trio.fail_after(20):
        async with gw.connect() as early:
            await early.send(texts[0])  # before auth: its sender is unknown, not kept
            assert (await early.recv())["payload"]["error_code"] == "AUTH_REQUIRED"
        async with gw.client("CATS") as cats, gw.client("DASHBOARD", "admin") as admin:
            for text in texts:  # burst 2: the third is rate limited
                await cats.send(text)
            await cats.send(bad_payload)
            await cats.send({"type": "auth", "token": "x", "client_type": "CATS"})  # not an event
            await cats.send('{"type":"conversion","message_id":"cut-off",')  # unreadable
            await admin.send(not_allowed)
            assert await errors(cats, 4) == ["RATE_LIMIT_EXCEEDED"] * 4
            await until_pong(admin)
    rows = await kept(gw)
    got = [
        (r["identity"], r["transport"], r["reason"], r["type"], r["message_id"]) for r in rows
    ]
    assert got == [
        ("cats", "websocket", "RATE_LIMIT_EXCEEDED", "conversion", "c-2"),
        ("cats", "websocket", "RATE_LIMIT_EXCEEDED", "conversion", "bad-payload"),
        ("cats", "websocket", "RATE_LIMIT_EXCEEDED", None, None),
        ("admin", "websocket", "EVENT_NOT_ALLOWED", "conversion", "not-allowed"),
    ]
    assert rows[0]["body"] == texts[2]
    assert rows[0]["client_type"] == "CATS"
    assert rows[0]["connection_id"].startswith("conn_")
    metrics = (await http(gw.port, "GET", "/metrics")).body.decode()
    assert 'catsock_refused_events_total{reason="RATE_LIMIT_EXCEEDED"} 3.0' in metrics
    assert 'catsock_refused_events_total{reason="EVENT_NOT_ALLOWED"} 1.0' in metrics


async def test_an_invalid_payload_and_an_http_refusal_are_kept(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    token = gw.token("cats", "CATS")
    bad = envelope("conversion", {"pay_id": 1}, "CATS", "bad-1")
    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            await cats.send(bad)
            await until_pong(cats)
        reply = await http(
            gw.port,
            "POST",
            "/api/publish",
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            body=envelope("no_such_type", {}, "CATS", "http-1").encode(),
        )
    assert reply.status == 400
    rows = await kept(gw)
    assert [(r["transport"], r["reason"], r["message_id"]) for r in rows] == [
        ("websocket", rows[0]["reason"], "bad-1"),
        ("http", "UNKNOWN_TYPE", "http-1"),
    ]
    assert rows[0]["reason"] in {"INVALID_MESSAGE", "INVALID_PAYLOAD"}
    assert rows[1]["connection_id"] is None


async def test_refused_lists_and_retry_delivers_as_the_original_sender(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    gw = await start_gateway(limits=TIGHT)
    admin = gw.token("admin", "DASHBOARD")
    texts = [envelope("conversion", CONVERSION, "CATS", f"r-{i}") for i in range(3)]
    with trio.fail_after(30):
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            for text in texts:
                await cats.send(text)
            assert await errors(cats, 1) == ["RATE_LIMIT_EXCEEDED"]
            assert [(await afad.recv())["message_id"] for _ in range(2)] == ["r-0", "r-1"]
            (row,) = await kept(gw)
            listed = await cli("refused", "--db", str(gw.database))
            assert listed.exit_code == 0, listed.output
            header, line = listed.output.splitlines()
            assert header.split() == [
                "ID", "AT", "REASON", "IDENTITY", "TRANSPORT", "TYPE", "MESSAGE_ID", "RETRIED"
            ]
            assert line.split()[2:] == [
                "RATE_LIMIT_EXCEEDED", "cats", "websocket", "conversion", "r-2", "-"
            ]
            http_url = f"http://127.0.0.1:{gw.port}"
            await trio.sleep(1.0)  # the cause is fixed: the bucket has a token again
            retried = await cli("refused", "retry", str(row["id"]), "--url", http_url,
                                "--token", admin)
            assert retried.exit_code == 0, retried.output
            assert retried.output == f"refused event {row['id']}: accepted as seq 3\n"
            delivered = await afad.recv_text()
            assert delivered == texts[2]  # the bytes the publisher sent, as its own
            await trio.sleep(1.0)
            again = await cli("refused", "retry", str(row["id"]), "--url", http_url,
                              "--token", admin)
            assert again.output == f"refused event {row['id']}: a duplicate of seq 3\n"
    (row,) = await kept(gw)
    assert (row["retry_result"], row["retry_seq"]) == ("duplicate", 3)
    explained = await cli("ledger", "--db", str(gw.database), "r-2")
    assert explained.exit_code == 0, explained.output
    lines = explained.output.splitlines()
    assert lines[0] == "message r-2"
    assert lines[1].startswith(f"  refused {row['at']} from cats ({row['connection_id']}):"
                               " RATE_LIMIT_EXCEEDED: ")
    assert lines[1].endswith(f"(refused event {row['id']}); retried {row['retried_at']}:"
                             " duplicate as seq 3")
    assert "  seq 3: conversion from cats (HTTP), accepted " in explained.output


async def test_retry_needs_an_admin_token_and_a_kept_event(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    tokens = {
        "cats": gw.token("cats", "CATS"),
        "bound": gw.token("dash-500", "DASHBOARD", "500"),
        "admin": gw.token("admin", "DASHBOARD"),
    }

    async def retry(token: str, body: bytes) -> tuple[int, dict[str, Any]]:
        reply = await http(
            gw.port,
            "POST",
            "/api/refused/retry",
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            body=body,
        )
        return reply.status, orjson.loads(reply.body)

    with trio.fail_after(20):
        assert (await retry(tokens["cats"], b'{"id": 1}'))[0] == 403
        assert (await retry(tokens["bound"], b'{"id": 1}'))[0] == 403
        status, answer = await retry(tokens["admin"], b'{"id": 1}')
        assert (status, answer["error_code"]) == (404, "INVALID_MESSAGE")
        assert "no refused event 1" in answer["error_message"]
        assert (await retry(tokens["admin"], b'{"id": "1"}'))[0] == 400
        assert (await retry(tokens["admin"], b"[]"))[0] == 400
        assert (await retry("not-a-token", b'{"id": 1}'))[0] == 401


async def test_a_retry_refused_again_says_why_and_exits_1(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(limits=TIGHT)
    admin = gw.token("admin", "DASHBOARD")
    with trio.fail_after(30):
        async with gw.client("CATS") as cats:
            for i in range(3):
                await cats.send(envelope("conversion", CONVERSION, "CATS", f"x-{i}"))
            assert await errors(cats, 1) == ["RATE_LIMIT_EXCEEDED"]
            (row,) = await kept(gw)
            # The bucket is still empty: the retry is refused as the original was.
            retried = await cli("refused", "retry", str(row["id"]), "--url",
                                f"ws://127.0.0.1:{gw.port}/ws", "--token", admin)
    assert retried.exit_code == 1
    assert retried.output.startswith(
        f"refused event {row['id']}: HTTP 429 RATE_LIMIT_EXCEEDED: "
    )
    first, second = await kept(gw)
    assert (first["retry_result"], first["retry_seq"]) == ("RATE_LIMIT_EXCEEDED", None)
    assert (second["transport"], second["message_id"]) == ("http", "x-2")
    assert json.loads(second["body"])["message_id"] == "x-2"
