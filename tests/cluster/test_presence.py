"""Presence across nodes: ``limits.per_identity`` counts an identity's connections on
every node (catsock/eventlog/presence.py, docs/scaling.md).

Two in-process nodes over one real redis-server (tests/cluster/nodes.py), and, for
a node killed with SIGKILL, two real ``python -m catsock serve`` processes as in
tests/cluster/test_node_kill.py. Waits for something to happen have generous
deadlines; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import coredis
import trio
import trio_websocket

import storage
from catsock.eventlog.presence import PRESENCE_TTL
from tests.catsock.harness import GatewayFactory, RunningGateway
from tests.catsock.test_delivery import ACKS, conversion, until_pong
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer
from tests.faults.conftest import GatewayProcess
from tests.internal_errors import InternalErrors

ONE_CATS: dict[str, Any] = {"limits": {"per_identity": {"CATS": 1}}}
TWO_DASHBOARDS: dict[str, Any] = {"limits": {"per_identity": {"DASHBOARD": 2}}}


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


async def until_accepted(url: str, token: str, client_type: str = "CATS") -> int:
    """Log in again and again until ``auth_success``; how many were refused first
    (each for the connection limit)."""
    refused = 0
    while True:
        reply = await login(url, token, client_type)
        if reply["type"] == "auth_success":
            return refused
        assert refused_for_the_limit(reply), reply
        refused += 1
        await trio.sleep(0.1)


async def until_refused(url: str, token: str, client_type: str = "CATS") -> None:
    """Log in again and again until a login is refused for the connection limit."""
    while True:
        reply = await login(url, token, client_type)
        if reply["type"] != "auth_success":
            assert refused_for_the_limit(reply), reply
            return
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


async def test_a_durable_identity_online_on_one_node_starts_live_on_the_other(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    # docs/delivery.md: while a connection of a durable identity is open, a new one
    # starts live; it does not replay what the first has not acked yet.
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        async with a.client("AFAD", "afad", extensions=ACKS) as first:
            async with b.client("CATS", "cats", extensions=ACKS) as cats:
                for i in range(3):
                    await cats.send(conversion(f"m{i}"))
                assert [(await cats.recv())["type"] for _ in range(3)] == ["accepted"] * 3
            got = [json.loads(await first.recv_text())["message_id"] for _ in range(3)]
            assert got == ["m0", "m1", "m2"]  # and not acked
            async with b.client("AFAD", "afad", extensions=ACKS) as second:
                assert await until_pong(second) == []
                # What connection.py asked before choosing where ``second`` starts.
                assert b.gateway.connections_of("afad") == 2
            # And once the first has left, a connection replays what it did not ack.
        await until_accepted_and_replayed(b, ["m0", "m1", "m2"])


async def until_accepted_and_replayed(node: RunningGateway, wanted: list[str]) -> None:
    """Connect AFAD to ``node`` until its login is no longer told "start live"
    (the end of the other node's connection reached Redis) and it replays ``wanted``."""
    while True:
        async with node.client("AFAD", "afad", extensions=ACKS) as afad:
            got = [m for m in await until_pong(afad) if "message_id" in m]
            if got:
                assert [m["message_id"] for m in got] == wanted
                return
        await trio.sleep(0.1)


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


async def process_nodes(
    nursery: trio.Nursery, tmp_path: Path, redis: RedisServer, internal_errors: InternalErrors
) -> tuple[GatewayProcess, GatewayProcess, str]:
    """Nodes A and B as ``python -m catsock serve`` processes (started), one CATS
    connection per identity, and the CATS token both know."""
    a, b = nodes = GatewayProcess(nursery, tmp_path / "a"), GatewayProcess(nursery, tmp_path / "b")
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
    await a.start()
    await b.start()
    return a, b, token


async def until_alive_channels(redis: RedisServer, count: int) -> None:
    """Wait until ``count`` nodes are subscribed to their alive channel
    (catsock/eventlog/presence.py)."""
    async with coredis.Redis.from_url(redis.url, decode_responses=True) as client:
        while True:
            if len(await client.pubsub_channels("{catsock}:alive:*")) == count:
                return
            await trio.sleep(0.01)


async def test_a_node_killed_with_sigkill_frees_its_slots_at_once(
    nursery: trio.Nursery, tmp_path: Path, redis: RedisServer, internal_errors: InternalErrors
) -> None:
    # Redis drops the killed process's subscription to its alive channel as its
    # sockets close: the slot is free without waiting for PRESENCE_TTL.
    a, b, token = await process_nodes(nursery, tmp_path, redis, internal_errors)
    try:
        with trio.fail_after(60):
            async with trio_websocket.open_websocket_url(b.url) as held:
                auth = {"type": "auth", "token": token, "client_type": "CATS"}
                await held.send_message(json.dumps(auth))
                assert json.loads(await held.get_message())["type"] == "auth_success"
                assert refused_for_the_limit(await login(a.url, token))
                await until_alive_channels(redis, 2)
                await b.kill()
                # Redis has dropped B's subscription once it saw B's sockets close
                # (B's presence hash lives on for up to PRESENCE_TTL seconds).
                await until_alive_channels(redis, 1)
                reply = await login(a.url, token)
                assert reply["type"] == "auth_success", reply
        assert await a.stop() == 0
        assert not any("Traceback" in line for line in a.stderr), a.stderr
    finally:
        await a.close()
        await b.close()


async def test_a_stopped_node_stops_counting_after_the_presence_ttl_and_counts_again_on_resuming(
    nursery: trio.Nursery, tmp_path: Path, redis: RedisServer, internal_errors: InternalErrors
) -> None:
    # SIGSTOP: the process keeps its sockets (as a machine that vanished does until
    # TCP gives up), so only the expiry of its presence frees its slots.
    a, b, token = await process_nodes(nursery, tmp_path, redis, internal_errors)
    try:
        with trio.fail_after(60):
            async with trio_websocket.open_websocket_url(b.url) as held:
                auth = {"type": "auth", "token": token, "client_type": "CATS"}
                await held.send_message(json.dumps(auth))
                assert json.loads(await held.get_message())["type"] == "auth_success"
                assert refused_for_the_limit(await login(a.url, token))
                os.kill(b.pid, signal.SIGSTOP)
                try:
                    started = trio.current_time()
                    refused = await until_accepted(a.url, token)
                    print(
                        f"\nnode B stopped; A refused {refused} logins, then took B's slot"
                        f" {trio.current_time() - started:.1f} s later (PRESENCE_TTL:"
                        f" {PRESENCE_TTL} s)"
                    )
                finally:
                    os.kill(b.pid, signal.SIGCONT)
                # B's next heartbeat finds its presence gone and writes it again.
                await until_refused(a.url, token)
        assert await a.stop() == 0
        assert await b.stop() == 0
    finally:
        await a.close()
        await b.close()


async def test_with_redis_down_each_node_counts_its_own_and_shares_again_when_it_is_back(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(
        start_gateway, redis, tmp_path, cluster={"timeout": 1.0}, **TWO_DASHBOARDS
    )
    token = a.tokens["dashboard"]
    with trio.fail_after(60):
        await redis.stop()
        # Logins go on (DASHBOARD is not durable: it reads no cursor), each node
        # limiting on its own: two here and two there.
        async with a.client("DASHBOARD", "dashboard"), a.client("DASHBOARD", "dashboard"):
            reply = await login(a.url, token, "DASHBOARD")
            assert refused_for_the_limit(reply), reply
            async with b.client("DASHBOARD", "dashboard"), b.client("DASHBOARD", "dashboard"):
                pass
            await redis.start()
            # A writes what it holds once Redis answers: B counts it again.
            await until_refused(b.url, token, "DASHBOARD")
        await until_accepted(b.url, token, "DASHBOARD")
