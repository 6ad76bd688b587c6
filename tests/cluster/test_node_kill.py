"""A cluster node killed with SIGKILL mid-stream: its recipient moves to another node.

Two real ``python -m catsock serve`` processes (tests/faults/conftest.py
``GatewayProcess``), each with its own SQLite file, share the test's redis-server.
CATS publishes through node A with ``catsock.client`` (outbox, acks); a durable AFAD
(acks + resume, acking every 100) listens on node B. B is killed with SIGKILL
while AFAD is part-way through the stream; AFAD connects to A and must end with
every accepted message: what comes twice is the replay of what it had not acked
(or whose ack B had not written to Redis yet), with the seq it had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import storage
from catsock.client import Accepted, connect
from tests.cluster.redisserver import RedisServer
from tests.faults.conftest import CLIENT_OPTIONS, GatewayProcess, Recipient, publish_stream
from tests.internal_errors import InternalErrors

ACKS_RESUME: dict[str, Any] = {"acks": {}, "resume": {}}


class Failover:
    """What ``Recipient`` asks of "the gateway": the node to connect to now, and a
    count that goes up when there is a (new) node to connect to."""

    def __init__(self, node: GatewayProcess) -> None:
        self.node = node
        self.generation = 1
        self._moved = trio.Event()

    @property
    def url(self) -> str:
        return self.node.url

    def move_to(self, node: GatewayProcess) -> None:
        self.node = node
        self.generation += 1
        self._moved.set()
        self._moved = trio.Event()

    async def wait_started(self, after: int) -> int:
        while self.generation <= after:
            await self._moved.wait()
        return self.generation


#: Ten runs (issue 12), each killing node B at another point of AFAD's stream.
KILL_AFTER = [50 + 190 * run for run in range(10)]


@pytest.mark.parametrize("kill_after", KILL_AFTER)
async def test_kill_9_of_a_node_mid_stream_the_recipient_moves_and_misses_nothing(
    nursery: trio.Nursery,
    tmp_path: Path,
    redis: RedisServer,
    internal_errors: InternalErrors,
    kill_after: int,
) -> None:
    total = 2000
    a, b = nodes = [GatewayProcess(nursery, tmp_path / name) for name in ("a", "b")]
    for name, node in zip("ab", nodes, strict=True):
        node.cwd.mkdir()
        node.settings["CATSOCK_CLUSTER__REDIS"] = redis.url
        internal_errors.watch_stderr(f"node {name}", node.all_stderr)
    cats, afad = a.token("cats", "CATS"), a.token("afad", "AFAD")
    source, target = storage.open_db(a.database), storage.open_db(b.database)
    try:
        target["credentials"].insert_all(source["credentials"].rows)  # tokens: per node
    finally:
        source.close()
        target.close()
    ids = [f"k-{i:05d}" for i in range(total)]
    accepted: dict[str, Accepted] = {}
    try:
        with trio.fail_after(120):
            await a.start()
            await b.start()
            failover = Failover(b)
            async with trio.open_nursery() as inner:
                recipient = Recipient(
                    failover,  # type: ignore[arg-type]
                    afad,
                    extensions=ACKS_RESUME,
                    ack_every=100,
                )
                await inner.start(recipient.run)

                async def kill_b() -> None:
                    await recipient.wait_for(ids[:kill_after])
                    await b.kill()
                    failover.move_to(a)

                inner.start_soon(kill_b)
                async with connect(
                    a.url, cats, "CATS", outbox_path=tmp_path / "cats-outbox.db",
                    **CLIENT_OPTIONS,
                ) as client:
                    await publish_stream(client, ids, accepted)
                await recipient.wait_for(ids)
                await recipient.barrier()
                inner.cancel_scope.cancel()
        redelivered = recipient.redeliveries()
        print(
            f"\n{total} publishes through node A; node B killed after AFAD had"
            f" {kill_after}; {len(redelivered)} redelivered by A over"
            f" {recipient.connections} connections"
        )
        assert set(accepted) == set(ids)
        assert recipient.connections == 2
        assert recipient.auth_replies[1]["extensions"]["resume"]["since"] >= 0
        assert set(recipient.ids) == set(ids), "the recipient lost events"
        recipient.check_order()
        for r in recipient.received:
            assert r.seq == accepted[r.message_id].seq, r
        recipient.check_redeliveries_come_first()
        assert {r.connection for r in recipient.received} == {1, 2}
        assert await a.stop() == 0
        assert not any("Traceback" in line for line in a.stderr), a.stderr
    finally:
        for node in nodes:
            await node.close()
