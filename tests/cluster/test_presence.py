"""Presence across nodes: ``limits.per_identity`` counts an identity's connections on
every node (catsock/eventlog/presence.py, docs/scaling.md).

Two in-process nodes over one real redis-server (tests/cluster/nodes.py), and, for
a node killed with SIGKILL, two real ``python -m catsock serve`` processes as in
tests/cluster/test_node_kill.py. Waits for something to happen have generous
deadlines; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
import trio_websocket

import storage
from catsock.eventlog.presence import PRESENCE_TTL
from tests.catsock.harness import GatewayFactory, RunningGateway
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer
from tests.faults.conftest import GatewayProcess
from tests.internal_errors import InternalErrors

ONE_CATS: dict[str, Any] = {"limits": {"per_identity": {"CATS": 1}}}


async def login(url: str, token: str, client_type: str = "CATS") -> dict[str, Any]:
    """The first answer to an ``auth`` on a fresh connection (which is then closed)."""
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message(
            json.dumps({"type": "auth", "token": token, "client_type": client_type})
        )
        reply: dict[str, Any] = json.loads(await ws.get_message())
    return reply


def refused_for_the_limit(reply: dict[str, Any]) -> bool:
    return reply["type"] == "error" and reply["payload"]["error_code"] == "CONNECTION_LIMIT"


async def until_accepted(url: str, token: str) -> int:
    """Log in again and again until ``auth_success``; how many were refused first
    (each for the connection limit)."""
    refused = 0
    while True:
        reply = await login(url, token)
        if reply["type"] == "auth_success":
            return refused
        assert refused_for_the_limit(reply), reply
        refused += 1
        await trio.sleep(0.1)


async def test_a_second_connection_on_the_other_node_is_refused_until_the_first_leaves(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path, **ONE_CATS)
    token = a.tokens["cats"]
    with trio.fail_after(30):
        async with a.client("CATS", "cats"):
            reply = await login(b.url, token)
            assert refused_for_the_limit(reply), reply
            assert reply["payload"]["error_message"] == "this token already holds 1 connections"
            assert b.gateway.connections_of("cats") == 0
        # A's end reaches Redis within presence.HEARTBEAT: B takes the slot then.
        await until_accepted(b.url, token)
        async with b.client("CATS", "cats"):
            assert refused_for_the_limit(await login(a.url, token))


async def test_the_other_nodes_connections_count_for_the_start_live_rule(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        async with (
            a.client("AFAD", "afad"),
            a.client("AFAD", "afad"),
            b.client("AFAD", "afad"),
        ):
            # What connection.py asks before choosing where a login starts.
            assert b.gateway.connections_of("afad") == 3
            assert a.gateway.connections_of("afad") == 2  # as at its latest login


async def test_both_nodes_logging_in_at_once_take_one_slot_between_them(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    nodes = await cluster_nodes(start_gateway, redis, tmp_path, **ONE_CATS)
    token = nodes[0].tokens["cats"]
    replies: list[dict[str, Any]] = []
    answered = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for node in nodes * 3:

                async def hold(node: RunningGateway = node) -> None:
                    async with node.connect() as client:
                        auth = {"type": "auth", "token": token, "client_type": "CATS"}
                        await client.send(auth)
                        reply = await client.recv()
                        replies.append(reply)
                        if len(replies) == 6:
                            answered.set()
                        if reply["type"] == "auth_success":
                            await answered.wait()  # held until every login has its answer
                        else:
                            assert await client.closed_code() == 1008

                nursery.start_soon(hold)
    assert sorted(r["type"] for r in replies) == ["auth_success"] + ["error"] * 5, replies
    assert all(refused_for_the_limit(r) for r in replies if r["type"] == "error")


async def test_a_node_killed_with_sigkill_frees_its_slots_within_the_presence_ttl(
    nursery: trio.Nursery, tmp_path: Path, redis: RedisServer, internal_errors: InternalErrors
) -> None:
    a, b = nodes = [GatewayProcess(nursery, tmp_path / name) for name in ("a", "b")]
    for name, node in zip("ab", nodes, strict=True):
        node.cwd.mkdir()
        node.settings["CATSOCK_CLUSTER__REDIS"] = redis.url
        node.settings["CATSOCK_LIMITS__PER_IDENTITY__CATS"] = "1"
        internal_errors.watch_stderr(f"node {name}", node.all_stderr)
    token = a.token("cats", "CATS")
    source, target = storage.open_db(a.database), storage.open_db(b.database)
    try:
        target["credentials"].insert_all(source["credentials"].rows)  # tokens: per node
    finally:
        source.close()
        target.close()
    try:
        with trio.fail_after(60):
            await a.start()
            await b.start()
            async with trio_websocket.open_websocket_url(b.url) as held:
                auth = {"type": "auth", "token": token, "client_type": "CATS"}
                await held.send_message(json.dumps(auth))
                assert json.loads(await held.get_message())["type"] == "auth_success"
                assert refused_for_the_limit(await login(a.url, token))
                started = trio.current_time()
                await b.kill()
                refused = await until_accepted(a.url, token)
        print(
            f"\nnode B killed; A refused {refused} logins before it took B's slot,"
            f" {trio.current_time() - started:.1f} s later (bound: {PRESENCE_TTL} s)"
        )
        assert await a.stop() == 0
        assert not any("Traceback" in line for line in a.stderr), a.stderr
    finally:
        for node in nodes:
            await node.close()
