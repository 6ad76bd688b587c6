"""Attacks through delivery: slow consumers, rate-limit floods, a user-bound
dashboard fishing for others' events, and label sets grown from the outside."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from typing import Any

import pytest
import trio

import storage
from tests.catsock.harness import CONVERSION, envelope
from tests.catsock.test_http import HttpClient

from .conftest import Arena, Target
from .tools import ATTACKER, Wire, auth_frame, connect_from, http, text_frame

PAD = "x" * 30_000


async def slow_dashboard(target: Target, name: str, receive_buffer: int) -> Wire:
    """An authenticated DASHBOARD (every business event comes to it) on a socket
    whose receive buffer is ``receive_buffer`` bytes."""
    token = await target.token(name, "DASHBOARD")
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.bind((ATTACKER, 0))
    await sock.connect(("127.0.0.1", target.port))
    wire = Wire(trio.SocketStream(sock))
    await wire.handshake([])
    await wire.stream.send_all(auth_frame(token, "DASHBOARD"))
    while not wire.texts:
        await wire._pump()
    assert json.loads(wire.texts.pop(0))["type"] == "auth_success"
    return wire


async def publish_until_cut(target: Target, name: str) -> int:
    """A CATS publishes 30 KB conversions, within its rate limit, until the gateway
    has cut a slow consumer; returns how many it published."""
    stats = target.gateway.stats
    before = stats.slow_consumers
    async with target.gw.client("CATS", name) as cats:
        n = 0
        while stats.slow_consumers == before:
            payload = {**CONVERSION, "owner_id": 9000, "tier_rewards": [], "pad": PAD}
            await cats.send(envelope("conversion", payload, "CATS", f"{name}-{n}"))
            n += 1
            await cats.send({"type": "ping"})
            reply = await cats.recv()
            assert reply["type"] == "pong", reply
    return n


SLOW = {"limits": {"send_queue": 20}, "delivery": {"queue_full_grace": 0}}


async def test_a_dashboard_that_stops_reading_is_cut_and_nobody_else_notices(
    arena: Arena,
) -> None:
    """A DASHBOARD stops reading while 30 KB events stream to it: its queue fills and
    it is cut (``slow_consumers``); the publisher is never slowed or refused, and
    the canary's AFAD (durable, with the same small queue) loses nothing."""
    async with arena.attack(**SLOW) as target:
        with trio.fail_after(30):
            wire = await slow_dashboard(target, "stopped-dash", 4096)
            async with wire.stream:
                published = await publish_until_cut(target, "flood-cats")
    assert published > 0
    assert target.gateway.stats.slow_consumers == 1


@pytest.mark.parametrize("reader", ["reads-slowly", "stops-then-reads"])
async def test_a_slow_dashboard_that_is_cut_gets_slow_consumer_and_4001(
    arena: Arena, reader: str
) -> None:
    """A DASHBOARD that reads slowly (16 KiB every 50 ms), or not at all until it has
    been cut and then again a second later, falls behind a stream of 30 KB events
    and is cut: what it reads ends with the SLOW_CONSUMER error and a close frame
    with 4001, not a bare end of stream. (A reader silent for longer than
    ``SHED_GRACE``, 30 s, is dropped without one: nothing can reach it.)"""
    async with arena.attack(**SLOW) as target:
        with trio.fail_after(30):
            wire = await slow_dashboard(target, "slow-dash", 16 * 1024)
            async with wire.stream, trio.open_nursery() as nursery:

                async def read_slowly() -> None:
                    while not wire.ended:
                        await wire._pump()
                        await trio.sleep(0.05)

                if reader == "reads-slowly":
                    nursery.start_soon(read_slowly)
                await publish_until_cut(target, "flood-cats")
                if reader == "stops-then-reads":
                    await trio.sleep(1.0)
                await wire.wait_ended()
    codes = [json.loads(t)["payload"]["error_code"] for t in wire.texts if '"type":"error"' in t]
    assert codes == ["SLOW_CONSUMER"]
    assert wire.close_code == 4001


# -- rate limits -------------------------------------------------------------------------


async def test_a_publish_flood_is_rate_limited_per_identity(arena: Arena) -> None:
    """A CATS publishes as fast as it can on two connections, then over HTTP: at most
    its burst plus its rate gets through, the rest is RATE_LIMIT_EXCEEDED (429 with
    Retry-After over HTTP), an abusive connection is closed 1008, and reconnecting
    does not refill the bucket. The canary's own identity is untouched."""
    async with arena.attack() as target:
        token = await target.token("flood-cats", "CATS")
        closes: list[int | None] = []
        errors: list[str] = []

        async def flood(tag: str, source: str = ATTACKER) -> None:
            wire = Wire(await connect_from(target.port, source))
            async with wire.stream:
                await wire.handshake([])
                await wire.stream.send_all(auth_frame(token, "CATS"))
                block = b"".join(
                    text_frame(envelope("conversion", CONVERSION, "CATS", f"flood-{tag}-{i}"))
                    for i in range(1300)  # past the burst of 1000 (seed §5.13)
                )
                with contextlib.suppress(trio.BrokenResourceError):
                    await wire.stream.send_all(block)  # (cut before it was all sent)
                await wire.wait_ended()
            closes.append(wire.close_code)
            for text in wire.texts:
                message = json.loads(text)
                if message["type"] == "error":
                    errors.append(message["payload"]["error_code"])

        replies: list[tuple[int, str | None]] = []

        async def http_flood() -> None:
            client = HttpClient(await connect_from(target.port), "127.0.0.1")
            headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            try:
                for i in range(50):
                    body = envelope("conversion", CONVERSION, "CATS", f"flood-http-{i}").encode()
                    reply = await client.request("POST", "/api/publish", headers=headers, body=body)
                    replies.append((reply.status, reply.headers.get("retry-after")))
            finally:
                await client.aclose()

        with trio.fail_after(20):
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood, "a")
                nursery.start_soon(flood, "b")
                nursery.start_soon(http_flood)
            elapsed = trio.current_time() - start
        db = storage.open_db(target.gw.database)
        try:
            (got_through,) = db.execute(
                "SELECT count(*) FROM events WHERE message_id LIKE 'flood-%'"
            ).fetchone()
        finally:
            db.close()
    assert closes == [1008, 1008]
    assert set(errors) == {"RATE_LIMIT_EXCEEDED"}
    assert got_through <= 1000 + 1000 / 60 * elapsed + 1  # burst + rate, one identity
    refused = [retry for status, retry in replies if status == 429]
    assert refused, replies
    assert all(retry is not None and int(retry) >= 1 for retry in refused)
    assert {status for status, _ in replies} <= {202, 429}


# -- a user-bound dashboard ------------------------------------------------------------------


async def test_a_user_bound_dashboard_sees_only_its_users_events(arena: Arena) -> None:
    """A dashboard bound to user 501 asks for a replay of everything (``resume``
    since 0) and long-polls from 0 while others' events flow (the canary's for 500
    and 499, and events for 502): it gets exactly the events naming 501."""
    async with arena.attack() as target:
        await target.token("dash-501", "DASHBOARD", "501")
        with trio.fail_after(15):
            async with target.gw.client("CATS", "mixed-cats") as cats:
                for i, owner in enumerate([502, 501, 502, 501, 503]):
                    payload = {**CONVERSION, "owner_id": owner, "tier_rewards": []}
                    await cats.send(envelope("conversion", payload, "CATS", f"mixed-{i}"))
                # A pong after the publishes: they are all committed.
                await cats.send({"type": "ping"})
                assert (await cats.recv())["type"] == "pong"
            resume: dict[str, Any] = {"resume": {"since": 0}}
            async with target.gw.client("DASHBOARD", "dash-501", extensions=resume) as dash:
                seen = [json.loads(await dash.recv_text())["message_id"] for _ in range(2)]
                await dash.send({"type": "ping"})
                while (message := await dash.recv())["type"] != "pong":
                    seen.append(message["message_id"])
            token = target.gw.tokens["dash-501"]
            polled = await http(
                target.port,
                "GET",
                "/api/events?since=0",
                headers={"authorization": f"Bearer {token}"},
            )
    assert seen == ["mixed-1", "mixed-3"]
    assert [e["message_id"] for e in polled.json()["events"]] == ["mixed-1", "mixed-3"]


# -- metric cardinality ----------------------------------------------------------------------

SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ", re.MULTILINE)


async def series(target: Target) -> set[str]:
    body = (await http(target.port, "GET", "/metrics")).body.decode()
    return set(SERIES.findall(body))


async def test_bogus_types_paths_and_methods_do_not_grow_metric_label_sets(arena: Arena) -> None:
    """Once one of each kind was seen, 1,000 distinct bogus event types, 1,000
    distinct paths, odd methods and unknown client types, from ten addresses, add
    no series to /metrics."""
    async with arena.attack(limits={"rate_limits_enabled": False}) as target:
        token = await target.token("bogus-cats", "CATS")

        async def bogus(first: int, count: int, source: str = ATTACKER) -> None:
            wire = Wire(await connect_from(target.port, source))
            async with wire.stream:
                await wire.handshake([])
                await wire.stream.send_all(auth_frame(token, "CATS"))
                frames = b"".join(
                    text_frame(json.dumps({"type": f"bogus_{i}", "n": i}))
                    for i in range(first, first + count)
                )
                await wire.stream.send_all(frames + text_frame('{"type":"ping"}'))
                while not any('"pong"' in t for t in wire.texts):
                    await wire._pump()
            client = HttpClient(await connect_from(target.port, source), "127.0.0.1")
            try:
                for i in range(first, first + count):
                    method = ("GET", "POST", "FOO", "DELETE")[i % 4]
                    await client.request(method, f"/bogus/{i}?q={i}")
            finally:
                await client.aclose()
            wire = Wire(await connect_from(target.port, source))
            async with wire.stream:
                await wire.handshake([])
                await wire.stream.send_all(auth_frame("cs_nope", f"TYPE_{first}"))
                await wire.wait_ended()

        with trio.fail_after(30):
            await bogus(0, 2)
            await series(target)  # /metrics itself is counted once answered
            before = await series(target)
            async with trio.open_nursery() as nursery:
                for k, first in enumerate(range(2, 1002, 100)):
                    nursery.start_soon(bogus, first, 100, f"127.0.0.{20 + k}")
            after = await series(target)
    assert sorted(after - before) == []
