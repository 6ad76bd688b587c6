"""A cluster node whose Redis goes away and comes back (docs/scaling.md, "Failures").

The test stops the real redis-server under a running node: publishes are not
acknowledged (HTTP: 503 with a clear error; WebSocket: held for the outage's first
``UNREACHABLE_HOLD`` seconds, then refused with ``OVERLOADED`` and kept as
refused), connections stay up, ``/health`` says why, and when redis-server is
started again the node recovers by itself. A publish held across a short outage
is stored once, acknowledged, and delivered.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from catsock.connection import UNREACHABLE_HOLD
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
            outage = trio.current_time()
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
            # Past the first UNREACHABLE_HOLD seconds of the outage (the HTTP
            # publish above waited 2 s), a WebSocket publish is refused, not held
            # and never acknowledged; the publisher is read on, so its pong comes.
            await trio.sleep_until(outage + UNREACHABLE_HOLD)
            await cats.send(conversion("during"))
            await cats.send({"type": "ping"})
            error = await cats.recv()
            assert error["type"] == "error", error
            assert error["payload"]["error_code"] == "OVERLOADED"
            assert error["payload"]["message_id"] == "during"
            assert "event log is unreachable" in error["payload"]["error_message"]
            assert (await cats.recv())["type"] == "pong"
            # Kept among the refused events (the seed's clients never read errors).
            assert node.gateway.stats.refused.get("OVERLOADED") == 2  # HTTP and WebSocket

            await redis.start()
            await wait_until(lambda: delivery.unavailable is None)
            # Sent again, it is taken: once, after the event before the outage.
            await cats.send(conversion("during"))
            (during,) = await accepted(cats, 1)
            assert (during["message_id"], during["duplicate"]) == ("during", False)
            assert during["seq"] > before["seq"]
            got = json.loads(await afad.recv_text())
            assert (got["message_id"], got["seq"]) == ("during", during["seq"])
            assert await until_pong(afad) == []

            health = await http(node.port, "GET", "/health")
            assert health.status == 200, health.json()
