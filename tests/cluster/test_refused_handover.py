"""Refusals a node kept in its own file while Redis was down are handed over to
Redis when it answers again, and at start-up (catsock/refused_handover.py), with
every column, once each, even when an earlier handover stopped half-way."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import storage
from catsock.refused_store import COLUMNS, RedisRefusedStore
from storage import EventRefused, RefusedRetried
from storage.refused import write_refused
from tests.catsock.harness import CONVERSION, GatewayFactory, envelope
from tests.catsock.test_delivery import until_pong
from tests.catsock.test_http import bearer, http
from tests.catsock.test_serve import cli_env, run_cli
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer
from tests.cluster.test_cluster_views import NOT_ALLOWED


def local_rows(database: str | Path) -> list[dict[str, Any]]:
    db = storage.open_db(database)
    try:
        return storage.list_refused(db, limit=1000)
    finally:
        db.close()


async def emptied(database: str | Path) -> None:
    while True:
        if not local_rows(database):
            return
        await trio.sleep(0.05)


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    async with coredis.Redis.from_url(redis.url, decode_responses=True) as client:
        yield client


def cluster_store(client: coredis.Redis[str]) -> RedisRefusedStore:
    """The store as a node with the default ``cluster.key_prefix`` sees it."""
    return RedisRefusedStore(
        lambda: client,
        lambda name: "{catsock}:" + name,
        body_of=lambda body: body,
        max_age=3600.0,
        max_rows=1000,
        timeout=2.0,
        where="test",
    )


async def test_refusals_kept_during_an_outage_move_to_redis_when_it_returns(
    start_gateway: GatewayFactory,
    redis: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (node,) = await cluster_nodes(start_gateway, redis, tmp_path, count=1, cluster={"timeout": 0.5})
    caplog.set_level(logging.WARNING, "catsock.refused")
    by_http = envelope("conversion", CONVERSION, "DASHBOARD", "not-allowed-http")
    with trio.fail_after(60):
        async with node.client("DASHBOARD", "dashboard") as dashboard:
            await redis.stop()
            await dashboard.send(NOT_ALLOWED)
            (error,) = await until_pong(dashboard)
            assert error["payload"]["error_code"] == "EVENT_NOT_ALLOWED"
        reply = await http(
            node.port,
            "POST",
            "/api/publish",
            headers=bearer(node.tokens["dashboard"]),
            body=by_http.encode(),
        )
        assert reply.status == 403, reply.body
        while len(kept := local_rows(node.database)) < 2:
            await node.gateway.log.flush()
            await trio.sleep(0.05)
        assert {r["transport"] for r in kept} == {"websocket", "http"}

        await redis.start()
        env = cli_env(node.database, CATSOCK_CLUSTER__REDIS=redis.url)
        while True:
            result = await run_cli("refused", "--json", cwd=tmp_path, env=env)
            assert result.code == 0, result
            rows = [json.loads(line) for line in result.out.splitlines()]
            if len(rows) == 2:
                break
            await trio.sleep(0.1)
        await emptied(node.database)  # just after Redis took them
        local = await run_cli("refused", "--local", "--json", cwd=tmp_path, env=env)
        assert (local.code, local.out) == (0, "")

    def by_message(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {r["message_id"]: {c: r[c] for c in COLUMNS if c != "id"} for r in found}

    assert by_message(rows) == by_message(kept)  # every column as the file had it
    assert by_message(rows)["not-allowed-1"]["body"] == NOT_ALLOWED
    assert sorted(r["id"] for r in rows) == [1, 2]  # the cluster's ids
    moved = [r.getMessage() for r in caplog.records if "are now in Redis" in r.getMessage()]
    assert len(moved) == 1, moved
    assert moved[0].startswith(f"refused events: 2 kept in this node's file {node.database}")
    assert node.gateway.refusals is not None
    stats = node.gateway.refusals.statistics()
    assert (stats.kept_locally, stats.handed_over) == (2, 2)


#: When the refusals below were made: recent, so the node's retention keeps them.
T0 = time.time() - 3000


def refusal(i: int) -> EventRefused:
    return EventRefused(
        at=T0 + i, identity="cats", client_type="CATS", user_id=None,
        connection_id=f"conn_{i}", transport="http", reason="RATE_LIMIT_EXCEEDED",
        detail="too fast", type="conversion", message_id=f"m-{i}", size=10, body=f"body {i}",
    )  # fmt: skip


async def test_a_handover_cut_short_is_finished_at_start_and_stores_each_row_once(
    start_gateway: GatewayFactory,
    redis: RedisServer,
    tmp_path: Path,
    client: coredis.Redis[str],
) -> None:
    # An earlier run kept three refusals (one retried since) and had moved them
    # to Redis, but stopped before deleting them from its file.
    database = str(tmp_path / "node0.db")
    db = storage.open_db(database)
    with db.conn:
        write_refused(db.conn, [refusal(i) for i in range(3)], lambda body: body)
        write_refused(db.conn, [RefusedRetried(2, T0 + 100, "accepted", 7)], lambda b: b)
    db.close()
    before = local_rows(database)
    store = cluster_store(client)
    now = T0 + 200
    assert await store.move(before, now=now) == 3
    assert len(local_rows(database)) == 3

    (node,) = await cluster_nodes(start_gateway, redis, tmp_path, count=1)
    assert str(node.database) == database
    with trio.fail_after(30):
        await emptied(database)
    after = await store.find(limit=100)
    assert sorted(r["id"] for r in after) == [1, 2, 3]  # no second copy
    moved = {r["message_id"]: r for r in after}
    for row in before:
        assert {c: moved[row["message_id"]][c] for c in COLUMNS if c != "id"} == {
            c: row[c] for c in COLUMNS if c != "id"
        }
    assert (moved["m-1"]["retry_result"], moved["m-1"]["retry_seq"]) == ("accepted", 7)
    assert node.gateway.refusals is not None
    assert node.gateway.refusals.statistics().handed_over == 0  # Redis had them all


async def test_a_moved_row_lives_for_what_is_left_of_its_retention(
    tmp_path: Path, client: coredis.Redis[str]
) -> None:
    database = str(tmp_path / "file.db")
    db = storage.open_db(database)
    with db.conn:
        write_refused(db.conn, [refusal(0)], lambda body: body)
    db.close()
    (row,) = local_rows(database)
    store = cluster_store(client)  # max_age one hour
    assert await store.move([row], now=T0 + 600) == 1
    assert 2990 <= await client.ttl("{catsock}:refused:1") <= 3000
    assert await store.move([row], now=T0 + 600) == 0  # marked: once
    assert await client.zcard("{catsock}:refused") == 1
