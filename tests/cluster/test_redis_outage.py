"""Redis down for 5 s under load (issue 12): no acknowledged event is lost.

Two in-process nodes share a redis-server with AOF on. CATS streams 3,000 acked
publishes into node A with ``catsock.client`` (outbox, acks) while a durable AFAD
listens on node B. After 1,000 answers redis-server is stopped; both nodes notice,
the outage lasts 5 s while the publisher keeps trying (what node A holds for more
than 2 s is refused with ``OVERLOADED``, and the client sends it again after
``retry_after``), then redis-server starts again on the same data. Every publish
is answered, and AFAD ends with every one of them, in seq order, on the
connection it had all along.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from catsock.client import Accepted, connect
from tests.catsock.harness import GatewayFactory
from tests.catsock.test_guard_gateway import wait_until
from tests.catsock.test_http import http
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer
from tests.cluster.test_node_kill import Failover
from tests.faults.conftest import CLIENT_OPTIONS, Recipient, publish_stream

ACKS_RESUME: dict[str, Any] = {"acks": {}, "resume": {}}
#: How long Redis stays down: the length of the fault, not a wait for a condition.
OUTAGE_SECONDS = 5.0


async def test_redis_down_5_s_under_load_loses_no_acked_event(
    start_gateway: GatewayFactory, redis_aof: RedisServer, tmp_path: Path
) -> None:
    total, stop_after = 3000, 1000
    a, b = await cluster_nodes(
        start_gateway,
        redis_aof,
        tmp_path,
        cluster={"timeout": 1.0},
        limits={"rate_limits_enabled": False},
    )
    ids = [f"o-{i:05d}" for i in range(total)]
    accepted: dict[str, Accepted] = {}
    reached = trio.Event()
    noticed: list[bool] = []
    at_stop: list[int] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            recipient = Recipient(
                Failover(b),  # type: ignore[arg-type]
                b.tokens["afad"],
                extensions=ACKS_RESUME,
                ack_every=100,
            )
            await nursery.start(recipient.run)

            async def outage() -> None:
                await reached.wait()
                await redis_aof.stop()
                at_stop.append(len(accepted))
                nodes = (a.gateway.delivery, b.gateway.delivery)
                await wait_until(lambda: all(d.unavailable is not None for d in nodes))
                noticed.append((await http(a.port, "GET", "/health")).status == 503)
                await trio.sleep(OUTAGE_SECONDS)
                await redis_aof.start()

            nursery.start_soon(outage)

            def progress(n: int) -> None:
                if n >= stop_after:
                    reached.set()

            async with connect(
                a.url, a.tokens["cats"], "CATS", outbox_path=tmp_path / "cats-outbox.db",
                **CLIENT_OPTIONS,
            ) as client:
                await publish_stream(client, ids, accepted, progress=progress)
            await recipient.wait_for(ids)
            await recipient.barrier()
            nursery.cancel_scope.cancel()
    assert noticed == [True]
    # Publishes held past the first UNREACHABLE_HOLD seconds were refused
    # (OVERLOADED) and the client sent them again once Redis was back.
    assert a.gateway.stats.refused.get("OVERLOADED", 0) > 0
    assert at_stop[0] < total  # the outage came in the middle of the stream
    assert set(accepted) == set(ids)
    assert len({x.seq for x in accepted.values()}) == total  # one seq each
    assert set(recipient.ids) == set(ids), "the recipient lost events"
    assert recipient.connections == 1  # its connection stayed up through the outage
    recipient.check_order()
    for r in recipient.received:
        assert r.seq == accepted[r.message_id].seq, r
    assert a.gateway.delivery.unavailable is None
    assert b.gateway.delivery.unavailable is None
