"""Per-identity rate buckets across nodes: one identity publishing through two nodes
at once gets about its rate in total, not twice it (catsock/eventlog/rates.py).

Two in-process nodes over one real redis-server. The bound asserted is the one
docs/scaling.md states with room to spare: at most 1.5 × rate × T + burst over
the T seconds the publishers ran (measured, not assumed), which two nodes that
each limit on their own (2 × (burst + rate × T)) exceed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.catsock.harness import GatewayFactory, RunningGateway
from tests.catsock.test_delivery import ACKS, conversion
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer

PER_SECOND = 10
BURST = 10
#: Each node is offered 2.5 × the identity's rate, for this many seconds.
OFFERED = 2.5 * PER_SECOND
SECONDS = 5.0

LIMITS: dict[str, Any] = {
    "limits": {
        "rate": {"CATS": {"per_minute": PER_SECOND * 60, "burst": BURST}},
        # Refusals are expected here: never close the publishers for abuse.
        "abuse_limit": 100_000,
    }
}


async def publish(node: RunningGateway, prefix: str, counts: dict[str, int]) -> None:
    """Publish at ``OFFERED`` a second for ``SECONDS``; count answers by type."""
    total = int(OFFERED * SECONDS)
    async with node.client("CATS", "cats", extensions=ACKS) as cats:

        async def send() -> None:
            for i in range(total):
                await cats.send(conversion(f"{prefix}-{i}"))
                await trio.sleep(1 / OFFERED)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            for _ in range(total):
                answer = await cats.recv()
                if answer["type"] == "accepted":
                    counts["accepted"] += 1
                else:
                    assert answer["payload"]["error_code"] == "RATE_LIMIT_EXCEEDED", answer
                    counts["refused"] += 1


async def test_one_identity_through_two_nodes_gets_about_its_rate_not_twice(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path, **LIMITS)
    counts = {"accepted": 0, "refused": 0}
    with trio.fail_after(60):
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish, a, "a", counts)
            nursery.start_soon(publish, b, "b", counts)
        elapsed = trio.current_time() - started
    allowed = BURST + PER_SECOND * elapsed
    print(
        f"\n{counts['accepted']} accepted, {counts['refused']} refused in {elapsed:.1f} s"
        f" through two nodes; one node alone would allow {allowed:.0f}"
    )
    assert counts["accepted"] + counts["refused"] == 2 * int(OFFERED * SECONDS)
    assert counts["accepted"] <= 1.5 * PER_SECOND * elapsed + BURST
    # Not starved either: the identity gets most of its rate.
    assert counts["accepted"] >= 0.5 * allowed
