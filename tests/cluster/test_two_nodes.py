"""Two real gateway nodes over one real redis-server (cluster mode, docs/scaling.md).

Each node is a ``catsock.server.Gateway`` on 127.0.0.1:0 with its own SQLite file
and ``cluster.redis`` pointing at the test's redis-server. "Nothing else arrived"
is checked with a ping barrier, as in tests/catsock/test_delivery.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from tests.catsock.harness import GatewayFactory
from tests.catsock.test_delivery import ACKS, ACKS_RESUME, conversion, until_pong
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer


async def accepted(client: Any, count: int) -> list[dict[str, Any]]:
    answers = []
    while len(answers) < count:
        message = await client.recv()
        assert message["type"] == "accepted", message
        answers.append(message)
    return answers


async def test_publish_on_a_reaches_a_durable_recipient_on_b(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    texts = [conversion(f"m{i}") for i in range(5)]
    with trio.fail_after(30):
        async with b.client("AFAD", "afad", extensions=ACKS_RESUME) as afad:
            async with a.client("CATS", "cats", extensions=ACKS) as cats:
                for text in texts:
                    await cats.send(text)
                answers = await accepted(cats, len(texts))
            got = [json.loads(await afad.recv_text()) for _ in texts]
            assert [g["message_id"] for g in got] == [f"m{i}" for i in range(5)]
            assert [g["seq"] for g in got] == [x["seq"] for x in answers]
            assert await until_pong(afad) == []
    assert b.gateway.delivery.head == a.gateway.delivery.head == answers[-1]["seq"]


async def test_the_same_message_id_on_both_nodes_at_once_gets_one_seq(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    ids = [f"twice{i}" for i in range(20)]
    answers: dict[str, list[dict[str, Any]]] = {}
    with trio.fail_after(30):
        async with (
            b.client("AFAD", "afad") as afad,
            a.client("CATS", "cats", extensions=ACKS) as on_a,
            b.client("CATS", "cats", extensions=ACKS) as on_b,
        ):

            async def publish(cats: Any) -> None:
                for message_id in ids:
                    await cats.send(conversion(message_id))
                for answer in await accepted(cats, len(ids)):
                    answers.setdefault(answer["message_id"], []).append(answer)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish, on_a)
                nursery.start_soon(publish, on_b)
            # Each id once, in seq order, to the recipient.
            delivered = [json.loads(await afad.recv_text())["message_id"] for _ in ids]
            assert await until_pong(afad) == []
    for message_id in ids:
        pair = answers[message_id]
        assert len({x["seq"] for x in pair}) == 1, pair
        assert sorted(x["duplicate"] for x in pair) == [False, True], pair
    by_seq = sorted(ids, key=lambda i: answers[i][0]["seq"])
    assert delivered == by_seq


async def test_a_durable_recipient_moves_from_b_to_a_and_misses_nothing(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        async with a.client("CATS", "cats", extensions=ACKS) as cats:
            async with b.client("AFAD", "afad", extensions=ACKS_RESUME) as afad:
                for i in range(10):
                    await cats.send(conversion(f"m{i}"))
                seqs = [x["seq"] for x in await accepted(cats, 10)]
                got = [json.loads(await afad.recv_text()) for _ in range(10)]
                assert [g["seq"] for g in got] == seqs
                await afad.send({"type": "ack", "seq": seqs[4]})  # has m0..m4 for sure
                assert await until_pong(afad) == []
            # B writes the cursor to Redis with its next commit (within
            # delivery IDLE_FLUSH); flushed here so the test says exactly what follows.
            await b.gateway.delivery.flush()
            for i in range(10, 20):
                await cats.send(conversion(f"m{i}"))  # while the recipient is away
            seqs += [x["seq"] for x in await accepted(cats, 10)]
            async with a.client("AFAD", "afad", extensions=ACKS_RESUME) as afad:
                assert afad.auth_reply is not None
                assert afad.auth_reply["extensions"]["resume"]["since"] == seqs[4]
                again = [json.loads(await afad.recv_text()) for _ in range(15)]
                assert [g["message_id"] for g in again] == [f"m{i}" for i in range(5, 20)]
                assert [g["seq"] for g in again] == seqs[5:]
                assert await until_pong(afad) == []


async def test_a_recipient_gets_both_nodes_events_once_each_in_seq_order(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    """A node fans its own batch out as soon as Redis answers when nothing of the log
    is unread before it, and skips it when it reads it back: the other node's events,
    numbered in between, must still come in seq order, and nothing twice."""
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    per_node = 200
    with trio.fail_after(60):
        async with (
            a.client("AFAD", "afad", extensions=ACKS_RESUME) as afad,
            a.client("CATS", "cats", extensions=ACKS) as on_a,
            b.client("CATS", "cats", extensions=ACKS) as on_b,
        ):

            async def publish(cats: Any, node: str) -> None:
                for i in range(per_node):
                    await cats.send(conversion(f"{node}{i}"))
                    if i % 20 == 19:  # several batches each, interleaved
                        await accepted(cats, 20)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish, on_a, "a")
                nursery.start_soon(publish, on_b, "b")
            got = [json.loads(await afad.recv_text()) for _ in range(2 * per_node)]
            assert await until_pong(afad) == []
    seqs = [g["seq"] for g in got]
    assert seqs == sorted(set(seqs)), "out of order or twice"
    assert {g["message_id"] for g in got} == {f"{n}{i}" for n in "ab" for i in range(per_node)}
    assert a.gateway.delivery.head == b.gateway.delivery.head == seqs[-1]
