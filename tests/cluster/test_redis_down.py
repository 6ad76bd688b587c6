"""A cluster node whose Redis goes away and comes back (docs/scaling.md, "Failures").

The test stops the real redis-server under a running node: publishes are not
acknowledged (HTTP: 503 with a clear error; WebSocket: held, the publisher's
pong waits behind its publish), connections stay up, ``/health`` says why, and
when redis-server is started again the node recovers by itself: the held publish
is stored once, acknowledged, and delivered.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.catsock.harness import CONVERSION, GatewayFactory, envelope
from tests.catsock.test_delivery import ACKS, ACKS_RESUME, conversion, until_pong
from tests.catsock.test_guard_gateway import wait_until
from tests.catsock.test_http import bearer, http
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer
from tests.cluster.test_two_nodes import accepted


async def test_redis_down_refuses_publishes_keeps_connections_and_recovers(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    (node,) = await cluster_nodes(
        start_gateway, redis, tmp_path, count=1, cluster={"timeout": 1.0}
    )
    delivery = node.gateway.delivery
    with trio.fail_after(60):
        async with (
            node.client("AFAD", "afad", extensions=ACKS_RESUME) as afad,
            node.client("CATS", "cats", extensions=ACKS) as cats,
        ):
            await cats.send(conversion("before"))
            (before,) = await accepted(cats, 1)
            assert json.loads(await afad.recv_text())["message_id"] == "before"

            await redis.stop()
            await wait_until(lambda: delivery.unavailable is not None)
            health = await http(node.port, "GET", "/health")
            assert health.status == 503
            assert health.json()["status"] == "unavailable"
            assert "cannot reach Redis at redis://127.0.0.1" in health.json()["event_log"]

            text = envelope("conversion", CONVERSION, "CATS", "by-http").encode()
            refused = await http(
                node.port, "POST", "/api/publish", headers=bearer(node.tokens["cats"]), body=text
            )
            assert refused.status == 503
            assert "event log is unreachable" in refused.body.decode()

            # Connections stay up: a recipient still answers pings.
            assert await until_pong(afad) == []
            # A WebSocket publish is held, not acknowledged: the pong of the ping
            # sent after it comes only after its answer.
            await cats.send(conversion("during"))
            await cats.send({"type": "ping"})

            await redis.start()
            during = await cats.recv()
            assert during["type"] == "accepted", during
            assert (during["message_id"], during["duplicate"]) == ("during", False)
            assert during["seq"] > before["seq"]
            assert (await cats.recv())["type"] == "pong"
            got = json.loads(await afad.recv_text())
            assert (got["message_id"], got["seq"]) == ("during", during["seq"])
            assert await until_pong(afad) == []

            await wait_until(lambda: delivery.unavailable is None)
            health = await http(node.port, "GET", "/health")
            assert health.status == 200, health.json()
