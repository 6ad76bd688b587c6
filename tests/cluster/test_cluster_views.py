"""The console's views in cluster mode: any node answers with the cluster's data.

Two real gateway nodes over one real redis-server (tests/cluster/nodes.py). What
one node did (a refusal, a publish, a delivery) is asked of the other node's
``/api/admin/refused``, ``/api/history`` and ``/api/admin/ledger``; with Redis
stopped, a refusal is kept in the node's own file and the views answer 503.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

import storage
from tests.catsock.harness import CONVERSION, GatewayFactory, RunningGateway, envelope
from tests.catsock.test_delivery import ACKS, ACKS_RESUME, conversion, until_pong
from tests.catsock.test_http import Reply, http
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer

#: A dashboard may not publish a conversion: refused with EVENT_NOT_ALLOWED.
NOT_ALLOWED = envelope("conversion", CONVERSION, "DASHBOARD", "not-allowed-1")


async def call(node: RunningGateway, method: str, target: str, body: Any = None) -> Reply:
    return await http(
        node.port,
        method,
        target,
        headers={
            "authorization": f"Bearer {node.tokens['dashboard']}",
            "content-type": "application/json",
        },
        body=b"" if body is None else json.dumps(body).encode(),
    )


async def refuse_on(node: RunningGateway) -> None:
    async with node.client("DASHBOARD", "dashboard") as dashboard:
        await dashboard.send(NOT_ALLOWED)
        (error,) = await until_pong(dashboard)
        assert error["payload"]["error_code"] == "EVENT_NOT_ALLOWED"


async def listed(node: RunningGateway) -> list[dict[str, Any]]:
    """``/api/admin/refused`` of ``node`` once it lists something (the writer
    stores a refusal shortly after it happened)."""
    while True:
        reply = await call(node, "GET", "/api/admin/refused")
        assert reply.status == 200, reply.body
        rows: list[dict[str, Any]] = reply.json()["refused"]
        if rows:
            return rows
        await trio.sleep(0.05)


async def test_a_refusal_on_a_is_listed_and_retried_on_b(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        await refuse_on(a)
        (row,) = await listed(b)
        assert (row["identity"], row["reason"], row["message_id"], row["body"]) == (
            "dashboard", "EVENT_NOT_ALLOWED", "not-allowed-1", NOT_ALLOWED,
        )  # fmt: skip
        assert row["connection_id"].startswith("conn_")
        # B retries A's refusal: refused again (a dashboard still may not publish it),
        # which is a refusal of its own, and the outcome is noted on A's row.
        reply = await call(b, "POST", "/api/admin/refused/retry", {"id": row["id"]})
        assert reply.status == 403, reply.body
        while True:
            rows = await listed(a)
            if len(rows) == 2 and rows[-1]["retry_result"] is not None:
                break
            await trio.sleep(0.05)
        assert [r["id"] for r in rows] == [row["id"] + 1, row["id"]]
        assert (rows[0]["transport"], rows[0]["reason"]) == ("http", "EVENT_NOT_ALLOWED")
        assert rows[1]["retry_result"] == "EVENT_NOT_ALLOWED"
        missing = await call(b, "POST", "/api/admin/refused/retry", {"id": row["id"] + 2})
        assert missing.status == 404
    # Nothing of it in either node's file: the store is Redis.
    for node in (a, b):
        await node.gateway.log.flush()
        db = storage.open_db(node.database)
        try:
            assert storage.list_refused(db) == []
        finally:
            db.close()


async def test_history_on_b_shows_an_event_published_on_a(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        async with a.client("CATS", "cats", extensions=ACKS) as cats:
            await cats.send(conversion("h-1"))
            answer = await cats.recv()
            assert answer["type"] == "accepted", answer
        reply = await call(b, "GET", "/api/history?seconds=60")
    assert reply.status == 200, reply.body
    events = reply.json()["events"]
    assert [(e["message_id"], e["seq"]) for e in events] == [("h-1", answer["seq"])]


async def test_the_ledger_on_a_shows_a_delivery_made_on_b(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        async with b.client("AFAD", "afad", extensions=ACKS_RESUME) as afad:
            async with a.client("CATS", "cats", extensions=ACKS) as cats:
                await cats.send(conversion("l-1"))
                assert (await cats.recv())["type"] == "accepted"
            got = json.loads(await afad.recv_text())
            await afad.send({"type": "ack", "seq": got["seq"]})
            assert await until_pong(afad) == []
        while True:
            reply = await call(a, "GET", "/api/admin/ledger?message_id=l-1&recipient=afad")
            assert reply.status == 200, reply.body
            (story,) = reply.json()["events"]
            kinds = [row["kind"] for row in story["timeline"]]
            if "acked" in kinds:
                break
            await trio.sleep(0.05)
    assert story["event"]["seq"] == got["seq"]
    assert story["event"]["sender"] == "cats"
    assert "written" in kinds
    assert any(fact.startswith("written to conn_") for fact in story["recipients"]["afad"])


async def test_with_redis_down_a_refusal_is_kept_in_the_nodes_file(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path, cluster={"timeout": 0.5})
    with trio.fail_after(60):
        async with a.client("DASHBOARD", "dashboard") as dashboard:
            await redis.stop()
            await dashboard.send(NOT_ALLOWED)
            (error,) = await until_pong(dashboard)
            assert error["payload"]["error_code"] == "EVENT_NOT_ALLOWED"
            while True:
                kept = await _local_refusals(a)
                if kept:
                    break
                await trio.sleep(0.05)
        assert [r["message_id"] for r in kept] == ["not-allowed-1"]
        reply = await call(b, "GET", "/api/admin/refused")
        assert reply.status == 503, reply.body
        assert "cannot reach Redis" in reply.json()["error_message"]
        reply = await call(b, "GET", "/api/history")
        assert reply.status == 503, reply.body
        await redis.start()


async def _local_refusals(node: RunningGateway) -> list[dict[str, Any]]:
    await node.gateway.log.flush()
    db = storage.open_db(node.database)
    try:
        return storage.list_refused(db)
    finally:
        db.close()


async def test_recipients_on_a_shows_how_far_behind_a_recipient_of_b_is(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        async with b.client("AFAD", "afad", extensions=ACKS_RESUME) as afad:
            async with a.client("CATS", "cats", extensions=ACKS) as cats:
                for i in range(3):
                    await cats.send(conversion(f"r-{i}"))
                seqs = [(await cats.recv())["seq"] for _ in range(3)]
            got = [json.loads(await afad.recv_text())["seq"] for _ in range(3)]
            assert got == seqs
            await afad.send({"type": "ack", "seq": seqs[0]})  # the first only
            assert await until_pong(afad) == []
        await b.gateway.delivery.flush()  # its cursor and ledger rows are in Redis
        reply = await call(a, "GET", "/api/admin/recipients")
    assert reply.status == 200, reply.body
    (row,) = [r for r in reply.json()["recipients"] if r["identity"] == "afad"]
    assert (row["cursor"], row["lag_events"], row["lag_capped"]) == (seqs[0], 2, False)
    assert row["last_ack_at"] is not None
    assert row["last_written_at"] is not None
    assert row["online"] is False  # it has left
