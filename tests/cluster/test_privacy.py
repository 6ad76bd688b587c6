"""Personal data in cluster mode's Redis (catsock/eventlog/privacy.py, docs/privacy.md).

Real gateway nodes over a real redis-server. What Redis holds is read raw, every
key of the cluster's prefix and every value in it, with a plain coredis client,
not through catsock. ``forget`` runs as a real ``python -m catsock`` subprocess.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import attrs
import coredis
import pytest
import trio
from coredis.tokens import PureToken

import storage
from catsock.eventlog import moved
from catsock.eventlog.privacy import forget
from catsock.eventlog.redis import RedisEventLog
from catsock.refused_store import RedisRefusedStore
from storage.privacy import Erasure
from storage.refused import EventRefused
from tests.catsock.harness import GatewayFactory, RunningGateway, envelope
from tests.catsock.test_delivery import ACKS, ACKS_RESUME, until_pong
from tests.catsock.test_serve import cli_env, run_cli
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer
from tests.cluster.test_redis_log import commits, opened, row
from tests.cluster.test_two_nodes import accepted

VISITOR_IP = "198.51.100.77"
OTHER_IP = "192.0.2.5"
AGENT = "Mozilla/5.0 forget-me"
REFERER = "https://ref.example/forget-me"
EMAIL = "alice.visitor@example.com"


def click(message_id: str, ip: str, sender: str = "CATS", **extra: Any) -> str:
    payload = {
        "access_id": 1, "adware_id": 100, "owner_id": 500,
        "ipaddress": ip, "useragent": AGENT, "referer": REFERER, **extra,
    }  # fmt: skip
    return envelope("click", payload, sender, message_id)


async def everything(url: str) -> str:
    """Every key of the cluster's prefix and every value it holds, as one text."""
    out: list[str] = []
    async with coredis.Redis.from_url(url, decode_responses=True) as r:
        async for key in r.scan_iter(match="{catsock}*", count=1000):
            kind = await r.type(key)
            if kind == "none":
                continue  # gone since the SCAN: the privacy lock expires (it has a TTL)
            if kind == "string":
                out.append(str(await r.get(key)))
            elif kind == "hash":
                out.append(repr(await r.hgetall(key)))
            elif kind == "stream":
                out += [repr(dict(e.field_values)) for e in await r.xrange(key, "-", "+")]
            elif kind == "zset":
                out += [str(m) for m in await r.zrange(key, 0, -1)]
            elif kind == "set":
                out += [str(m) for m in await r.smembers(key)]
            elif kind == "list":
                out += [str(m) for m in await r.lrange(key, 0, -1)]
            else:
                raise AssertionError(f"{key}: a {kind} this test cannot read")
            out.append(str(key))
    return "\n".join(out)


async def snapshot(redis: RedisServer) -> bytes:
    """The RDB file Redis writes now, uncompressed, so that a text in it shows."""
    async with coredis.Redis.from_url(redis.url, decode_responses=True) as r:
        await r.config_set({"rdbcompression": "no"})
        await r.save()
        name = (await r.config_get(["dbfilename"]))["dbfilename"]
    return (redis.data_dir / name).read_bytes()


async def holds(url: str, *texts: str) -> bool:
    """Whether any of ``texts`` is anywhere in the cluster's keys."""
    raw = await everything(url)
    return any(text in raw for text in texts)


async def enrol(node: RunningGateway) -> None:
    """Connect the durable AFAD once, so that its cursors protect what follows."""
    async with node.client("AFAD", "afad", extensions=ACKS_RESUME) as afad:
        assert await until_pong(afad) == []
    await node.gateway.delivery.flush()


async def publish(node: RunningGateway, texts: list[str]) -> list[int]:
    async with node.client("CATS", "cats", extensions=ACKS) as cats:
        for text in texts:
            await cats.send(text)
        return [a["seq"] for a in await accepted(cats, len(texts))]


async def replay(node: RunningGateway, count: int) -> list[dict[str, Any]]:
    """What the durable AFAD is sent when it comes back: ``count`` events, then nothing."""
    async with node.client("AFAD", "afad", extensions=ACKS_RESUME) as afad:
        got = [json.loads(await afad.recv_text()) for _ in range(count)]
        assert await until_pong(afad) == []
    return got


async def test_personal_fields_leave_the_redis_log_after_their_lifetime(
    start_gateway: GatewayFactory,
    redis: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A lifetime of one second, and each node's pass every 0.2 s instead of a minute.
    monkeypatch.setattr("catsock.delivery.SHARED_RETENTION_EVERY", 0.2)
    a, b = await cluster_nodes(
        start_gateway, redis, tmp_path, privacy={"personal_retention_hours": 1 / 3600}
    )
    texts = [click(f"c{i}", VISITOR_IP, Nested={"IPAddress": VISITOR_IP}) for i in range(30)]
    with trio.fail_after(60):
        await enrol(b)
        seqs = await publish(a, texts)
        # Both nodes run the pass; wait for it to have done every event.
        while True:
            if not await holds(redis.url, VISITOR_IP, AGENT, REFERER):
                break
            await trio.sleep(0.1)
        raw = await everything(redis.url)
        disk = await snapshot(redis)
        got = await replay(b, len(texts))
    for field in ("ipaddress", "useragent", "referer"):
        assert field not in raw.casefold()
    # Every event moved, so the stream's nodes were freed whole: a snapshot has
    # no byte of the visitor either (a deleted entry's bytes stay in its node).
    for text in (VISITOR_IP, AGENT, REFERER):
        assert text.encode() not in disk
    # Every event is still there, moved out of the stream.
    assert raw.count("click") >= len(texts)
    assert [g["seq"] for g in got] == seqs
    assert [g["message_id"] for g in got] == [f"c{i}" for i in range(30)]
    assert got[0]["payload"] == {"access_id": 1, "adware_id": 100, "owner_id": 500, "Nested": {}}


async def test_a_pass_of_the_lifetime_moves_each_event_once_and_retention_trims_both(
    redis: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with opened(redis.url) as log, opened(redis.url) as other:
            rows = [
                attrs.evolve(row(f"m{i}"), body=json.dumps({"ipaddress": f"10.0.0.{i}", "n": i}))
                for i in range(300)
            ]
            await log.commit(commits(), rows, {}, [], 0)
            # Two nodes at once: one does the pass, the other is told so (None).
            async with trio.open_nursery() as nursery:
                results: list[int | None] = []

                async def strip(node: RedisEventLog) -> None:
                    results.append(await node.strip_personal(["IPADDRESS"], before=2.0))

                nursery.start_soon(strip, log)
                nursery.start_soon(strip, other)
            # (0: the other ran after the first was done, and found nothing left.)
            assert sorted(results, key=str) in ([0, 300], [300, None])
            assert await log.client.xlen(log.key("log")) == 0
            assert await log.client.zcard(log.key(moved.REDACTED)) == 300
            assert await log.strip_personal(["ipaddress"], before=2.0) == 0  # looked at once
            assert (await log.head(), await log.first_seq()) == (300, 1)
            found, scanned = await log.read_after(
                {"type:AFAD": 0}, upto=300, exclude_sender=None, limit=1000
            )
            assert ([e.seq for e in found], scanned) == (list(range(1, 301)), 300)
            assert json.loads(found[7].body) == {"n": 7}
            # A newer event stays in the stream; reads see both in seq order.
            await log.commit(commits(), [row("young")], {}, [], 0)
            found, _ = await log.read_after(
                {"type:AFAD": 298}, upto=301, exclude_sender=None, limit=10
            )
            assert [e.seq for e in found] == [299, 300, 301]
            done = await log.retain(max_age=1e12, max_rows=50, now=2.0)
            assert done is not None
            assert done.trimmed == 251
            assert await log.first_seq() == 252
            assert await log.client.zcard(log.key(moved.REDACTED)) == 49


async def test_forget_through_the_cli_leaves_no_trace_in_redis(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    texts = [
        click("v1", VISITOR_IP),
        click("o1", OTHER_IP),
        click("v2", OTHER_IP, extra={"IPAddress": VISITOR_IP, "email": EMAIL}),
    ]
    env = cli_env(a.database, CATSOCK_CLUSTER__REDIS=redis.url)
    with trio.fail_after(60):
        await enrol(b)
        seqs = await publish(a, texts)
        # A refused event (a dashboard may not send clicks) goes to the refused
        # store in Redis: its personal fields redacted already, the email not.
        async with a.client("DASHBOARD", "dashboard") as dashboard:
            await dashboard.send(click("refused", OTHER_IP, "DASHBOARD", Contact={"EMail": EMAIL}))
            (error,) = await until_pong(dashboard)
            assert error["payload"]["error_code"] == "EVENT_NOT_ALLOWED"
        while True:  # the refusal is written to Redis shortly after
            if await holds(redis.url, EMAIL):
                break
            await trio.sleep(0.05)
        result = await run_cli(
            "forget", "--field", f"ipaddress={VISITOR_IP}", "--field", f"email={EMAIL}",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert result.code == 0, result
        raw = await everything(redis.url)
        refused = await a.gateway.shared_log.client.hget("{catsock}:refused:1", "body")
        # The stream entries forget deleted keep their bytes in their stream node,
        # in memory and in a snapshot, until the lifetime moves the node's others.
        assert VISITOR_IP.encode() in await snapshot(redis)
        got = await replay(b, len(texts))
        await a.gateway.shared_log.strip_personal(["ipaddress"], before=time.time() + 1)
        disk = await snapshot(redis)
    assert f"forgot in Redis at {redis.url}: 2 events, 1 refused-event rows redacted" in result.out
    assert VISITOR_IP not in raw
    assert EMAIL not in raw
    assert OTHER_IP in raw  # the other visitor's event is untouched
    # The refused event: its personal fields were never written, the email is gone now.
    assert refused is not None
    assert json.loads(refused)["payload"]["ipaddress"] == "[redacted]"
    assert json.loads(refused)["payload"]["Contact"] == {"EMail": "[redacted]"}
    assert VISITOR_IP.encode() not in disk
    assert EMAIL.encode() not in disk
    # Delivery goes on: every event, in seq order, the forgotten ones without the
    # visitor's fields.
    assert [g["seq"] for g in got] == seqs
    assert "ipaddress" not in got[0]["payload"]
    assert got[1]["payload"]["ipaddress"] == OTHER_IP
    assert got[2]["payload"]["extra"] == {}


async def test_forget_with_redis_down_says_so_in_one_line(
    redis: RedisServer, tmp_path: Path
) -> None:
    env = cli_env(tmp_path / "node.db", CATSOCK_CLUSTER__REDIS=redis.url)
    with trio.fail_after(60):
        await redis.stop()
        result = await run_cli(
            "forget", "--field", f"ipaddress={VISITOR_IP}", cwd=tmp_path, env=env
        )
    assert result.code == 1, result
    assert "Traceback" not in result.err
    (line,) = result.err.strip().splitlines()
    assert line.startswith("Error: cluster.redis: cannot reach Redis at "), line
    assert line.endswith("; nothing was forgotten"), line


async def test_the_hard_bound_counts_the_events_moved_out_of_the_stream(
    redis: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with opened(redis.url) as log:  # retention_hard_rows: 1000
            rows = [attrs.evolve(row(f"h{i}"), body='{"ipaddress":"10.0.0.1"}') for i in range(300)]
            await log.commit(commits(), rows, {("afad", "type:AFAD"): 0}, [], 0)
            assert await log.strip_personal(["ipaddress"], before=2.0) == 300
            await log.commit(commits(), [row(f"n{i}") for i in range(1000)], {}, [], 0)
            done = await log.retain(max_age=1e12, max_rows=10**9, now=2.0)
            # 1,300 events, 1,000 kept: the 300 moved ones go, and afad is told.
            assert done is not None
            assert done.lost == 300
            assert await log.client.zcard(log.key(moved.REDACTED)) == 0
            assert (await log.first_seq(), await log.head()) == (301, 1300)


async def test_follow_fills_a_gap_left_by_an_event_moved_before_it_was_read(
    redis: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with opened(redis.url) as log:
            rows = [row("f1"), attrs.evolve(row("f2"), body='{"ipaddress":"10.0.0.1"}'), row("f3")]
            await log.commit(commits(), rows, {}, [], 0)
            # Only f2 is moved (it alone has something to forget).
            erasure = Erasure.of(["ipaddress"], [("ipaddress", "10.0.0.1")])
            assert (await forget(log, erasure)).events == 1
            assert await log.client.xlen(log.key("log")) == 2
            got: list[storage.StoredEvent] = []
            three = trio.Event()

            def deliver(events: list[storage.StoredEvent]) -> None:
                got.extend(events)
                if len(got) >= 3:
                    three.set()

            async with trio.open_nursery() as nursery:
                await nursery.start(log.follow, 0, deliver, lambda problem: None)
                await three.wait()
                nursery.cancel_scope.cancel()
    assert [(e.seq, e.body) for e in got] == [(1, rows[0].body), (2, "{}"), (3, rows[2].body)]


async def test_forget_a_user_in_redis(redis: RedisServer) -> None:
    body = json.dumps({"owner_id": 500, "owner_name": "Ann", "ipaddress": "10.0.0.1", "n": 1})
    rows = [
        attrs.evolve(row("u1", channels=("user:500",)), body='{"n":1,"note":"routed"}'),
        attrs.evolve(row("u2"), body=body),
        attrs.evolve(row("u3"), body='{"owner_id":600,"n":3}'),
    ]
    refusal = EventRefused(
        1.0, "dash-500", "DASHBOARD", "500", None, "websocket", "EVENT_NOT_ALLOWED", "",
        "click", "r1", 10, '{"owner_name":"Ann","n":4}',
    )  # fmt: skip
    with trio.fail_after(30):
        async with opened(redis.url) as log:
            await log.commit(commits(), rows, {}, [], 0)
            store = RedisRefusedStore(
                lambda: log.client, log.key, body_of=lambda b: b,
                max_age=3600, max_rows=100, timeout=2.0, where="test",
            )  # fmt: skip
            await store.add([refusal])
            erasure = Erasure.of(["ipaddress"], user_id="500")
            done = await forget(log, erasure)
            found, _ = await log.read_after(
                {"type:AFAD": 0, "user:500": 0}, upto=3, exclude_sender=None, limit=10
            )
            kept = await store.get(1)
    # The routed event (nothing to remove in it), the one naming user 500; not 600's.
    assert (done.events, done.refused) == (2, 1)
    assert [json.loads(e.body) for e in found] == [
        {"n": 1, "note": "routed"}, {"owner_id": 500, "n": 1}, {"owner_id": 600, "n": 3},
    ]  # fmt: skip
    assert kept is not None
    assert json.loads(kept["body"]) == {"owner_name": "[redacted]", "n": 4}


async def test_forget_when_redis_stops_taking_writes_part_way_says_so_in_one_line(
    redis: RedisServer, tmp_path: Path
) -> None:
    env = cli_env(tmp_path / "node.db", CATSOCK_CLUSTER__REDIS=redis.url)
    with trio.fail_after(60):
        async with opened(redis.url) as log:
            event = attrs.evolve(row("p1"), body=json.dumps({"ipaddress": VISITOR_IP}))
            await log.commit(commits(), [event], {}, [], 0)
            # Reads (the probe, the scan) still answer; the script that moves the
            # event waits past the client's timeout.
            await log.client.client_pause(15_000, PureToken.WRITE)
            try:
                result = await run_cli(
                    "forget", "--field", f"ipaddress={VISITOR_IP}", cwd=tmp_path, env=env
                )
            finally:
                await log.client.client_unpause()
    assert result.code == 1, result
    assert "Traceback" not in result.err
    (line,) = result.err.strip().splitlines()
    assert line.startswith("Error: cluster.redis: cannot reach Redis at "), line
    assert line.endswith("(the node's file is done; run forget again when Redis answers)"), line
