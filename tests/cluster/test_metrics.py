"""/metrics of cluster nodes: every series carries the node's ``node`` label
(``cluster.node_name``, default ``hostname:port``); embedded gateways carry none.
Every node times what it writes of every node's events from their acceptance."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.catsock.harness import GatewayFactory, RunningGateway
from tests.catsock.test_delivery import ACKS, ACKS_RESUME, conversion, until_pong
from tests.catsock.test_http import http
from tests.catsock.test_metrics import scrape, value
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer


async def node_labels(gw: RunningGateway) -> list[str | None]:
    """The ``node`` label of every sample /metrics shows (None: no such label)."""
    reply = await http(gw.port, "GET", "/metrics")
    assert reply.status == 200
    labels = [
        sample.labels.get("node")
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    ]
    assert len(labels) > 50  # every family of the collector, not a few
    return labels


async def test_every_series_of_a_node_says_which_node(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        async with a.client("CATS", "cats"), b.client("AFAD", "afad"):
            for node in (a, b):
                assert set(await node_labels(node)) == {f"{socket.gethostname()}:{node.port}"}


async def test_cluster_node_name_sets_the_label(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    (node,) = await cluster_nodes(
        start_gateway, redis, tmp_path, count=1, cluster={"node_name": "eu-1"}
    )
    with trio.fail_after(30):
        assert set(await node_labels(node)) == {"eu-1"}


async def test_an_embedded_gateway_has_no_node_label(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(30):
        assert set(await node_labels(gw)) == {None}


async def deliveries_timed(node: RunningGateway) -> float:
    """The count of the node's publish-to-deliver histogram, scraped over HTTP."""
    name = f"{socket.gethostname()}:{node.port}"
    samples = await scrape(node)
    count = value(samples, "catsock_publish_to_deliver_seconds_count", node=name)
    assert value(samples, "catsock_publish_to_deliver_seconds_bucket", le="+Inf", node=name) == (
        count
    )
    return count


async def test_every_node_times_the_events_it_writes_whoever_published_them(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        async with (
            b.client("AFAD", "afad", extensions=ACKS_RESUME) as on_b,
            a.client("AFAD", "afad", extensions=ACKS_RESUME) as on_a,
            a.client("CATS", "cats", extensions=ACKS) as cats,
        ):
            for recipient in (on_a, on_b):  # live, past any replay
                assert await until_pong(recipient) == []
            before = [await deliveries_timed(node) for node in (a, b)]
            for i in range(3):
                await cats.send(conversion(f"timed-{i}"))
                assert (await cats.recv())["type"] == "accepted"
                for recipient in (on_a, on_b):  # one write each
                    assert json.loads(await recipient.recv_text())["message_id"] == f"timed-{i}"
            after = [await deliveries_timed(node) for node in (a, b)]
    assert [x - y for x, y in zip(after, before, strict=True)] == [3, 3]
