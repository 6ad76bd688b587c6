"""Delivery through a real gateway (docs/delivery.md): the log, cursors, acks, dedup.

Each test runs a gateway in-process on a real SQLite file and talks to it over
loopback. "Nothing else arrived" is checked with a ping barrier: a pong comes
after everything queued for that connection before the ping was read.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

import storage
from catsock.connection import LEDGER_SPAN
from catsock.ledger import explain

from .harness import CONVERSION, Client, GatewayFactory, RunningGateway, envelope

ACKS: dict[str, Any] = {"acks": {}}
ACKS_RESUME: dict[str, Any] = {"acks": {}, "resume": {}}
ALERT = {"fraud_type": "click_flood", "details": {"n": 1}}


def conversion(message_id: str, **extra: Any) -> str:
    return envelope("conversion", {**CONVERSION, **extra}, "CATS", message_id)


async def until_pong(client: Client) -> list[dict[str, Any]]:
    """Everything that arrives before the pong of a fresh ping."""
    await client.send({"type": "ping"})
    got = []
    while (message := await client.recv())["type"] != "pong":
        got.append(message)
    return got


async def publish_all(cats: Client, texts: list[str]) -> None:
    for text in texts:
        await cats.send(text)
    assert await until_pong(cats) == []  # committed and fanned out by now


async def restart(
    start_gateway: GatewayFactory, gw: RunningGateway, **overrides: Any
) -> RunningGateway:
    await gw.gateway.shutdown()
    again = await start_gateway(database=str(gw.database), **overrides)
    again.tokens.update(gw.tokens)
    return again


async def test_durable_recipient_gets_what_it_missed_in_order_then_live(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    texts = [conversion(f"m{i}") for i in range(5)]
    with trio.fail_after(20):
        async with gw.client("AFAD"):
            pass  # AFAD has been here; now it is away
        async with gw.client("CATS") as cats:
            await publish_all(cats, texts)
            # A seed client (no extensions): the missed events follow auth_success,
            # verbatim and in order, then live ones.
            async with gw.client("AFAD") as afad:
                assert [await afad.recv_text() for _ in texts] == texts
                live = conversion("live")
                await cats.send(live)
                assert await afad.recv_text() == live
                assert await until_pong(afad) == []


async def test_recipient_offline_for_the_whole_stream_gets_all_of_it(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    gw.token("afad", "AFAD")  # created before the stream, never connected during it
    texts = [conversion(f"m{i}") for i in range(50)]
    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            await publish_all(cats, texts)
        async with gw.client("AFAD") as afad:
            assert [await afad.recv_text() for _ in texts] == texts
            assert await until_pong(afad) == []


async def test_acked_publish_is_idempotent_across_a_restart(
    start_gateway: GatewayFactory,
) -> None:
    # The AFAD here has no acks: with legacy_confirm 0 what was written to it counts
    # as delivered at once, so "nothing again" below is about the publisher's retry.
    gw = await start_gateway(delivery={"legacy_confirm": 0})
    with trio.fail_after(20):
        async with gw.client("CATS", extensions=ACKS) as cats, gw.client("AFAD") as afad:
            assert cats.auth_reply is not None
            assert cats.auth_reply["extensions"]["acks"] == {}
            await cats.send(conversion("once"))
            first = await cats.recv()
            assert first["type"] == "accepted"
            assert (first["message_id"], first["duplicate"]) == ("once", False)
            await cats.send(conversion("once"))  # a retry after a lost answer
            again = await cats.recv()
            assert (again["seq"], again["duplicate"]) == (first["seq"], True)
            assert [m["message_id"] for m in await until_pong(afad)] == ["once"]
        gw = await restart(start_gateway, gw, delivery={"legacy_confirm": 0})
        async with gw.client("CATS", extensions=ACKS) as cats, gw.client("AFAD") as afad:
            await cats.send(conversion("once"))
            after = await cats.recv()
            assert (after["seq"], after["duplicate"]) == (first["seq"], True)
            assert await until_pong(afad) == []
    await gw.gateway.delivery.flush()
    (story,) = explain(storage.open_db(gw.database), "once")
    assert story.event["seq"] == first["seq"]
    assert any("written to" in fact for fact in story.recipients["afad"])


async def test_unacked_events_are_redelivered_after_reconnect(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    texts = [conversion(f"m{i}") for i in range(4)]
    with trio.fail_after(20):
        async with gw.client("AFAD", extensions=ACKS_RESUME):
            pass
        async with gw.client("CATS") as cats:
            await publish_all(cats, texts)
        async with gw.client("AFAD", extensions=ACKS_RESUME) as afad:
            raw = [await afad.recv_text() for _ in texts]
            seqs = [json.loads(r)["seq"] for r in raw]
            # seq is the first key; the rest is the publisher's text, byte for byte.
            assert raw == [f'{{"seq":{n},{t[1:]}' for n, t in zip(seqs, texts, strict=True)]
            assert seqs == sorted(set(seqs))
            await afad.send({"type": "ack", "seq": seqs[1]})
            assert await until_pong(afad) == []
        async with gw.client("AFAD", extensions=ACKS_RESUME) as afad:
            assert afad.auth_reply is not None
            assert afad.auth_reply["extensions"]["resume"]["since"] == seqs[1]
            again = [json.loads(await afad.recv_text()) for _ in range(2)]
            assert [a["seq"] for a in again] == seqs[2:]
            assert [a["message_id"] for a in again] == ["m2", "m3"]
            await afad.send({"type": "ack", "seq": seqs[3]})
            assert await until_pong(afad) == []
        async with gw.client("AFAD", extensions=ACKS_RESUME) as afad:
            assert await until_pong(afad) == []  # everything acked: nothing again


async def test_ack_needs_the_extension(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(10):
        async with gw.client("AFAD") as afad:
            await afad.send({"type": "ack", "seq": 1})
            reply = await afad.recv()
            assert reply["payload"]["error_code"] == "INVALID_MESSAGE"


async def test_expired_events_are_not_delivered_and_are_recorded(
    start_gateway: GatewayFactory,
) -> None:
    now = [1_800_000_000.0]
    gw = await start_gateway(wall_clock=lambda: now[0], delivery={"ttl": {"conversion": 60}})
    with trio.fail_after(20):
        async with gw.client("AFAD"):
            pass
        async with gw.client("CATS") as cats:
            await publish_all(cats, [conversion("stale")])
            now[0] += 61
            fresh = conversion("fresh")
            await publish_all(cats, [fresh])
        async with gw.client("AFAD") as afad:
            assert await afad.recv_text() == fresh
            assert await until_pong(afad) == []
    assert gw.gateway.delivery.expired == 1
    await gw.gateway.delivery.flush()
    (story,) = explain(storage.open_db(gw.database), "stale")
    assert any("expired" in fact for fact in story.recipients["afad"])


async def test_a_slow_durable_recipient_catches_up_from_the_log(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(limits={"send_queue": 5, "rate_limits_enabled": False})
    pad = "x" * 20_000
    texts = [conversion(f"m{i}", pad=pad) for i in range(200)]
    with trio.fail_after(60):
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            # AFAD reads nothing meanwhile: its socket buffers fill, then its queue.
            await publish_all(cats, texts)
            assert gw.gateway.delivery.catchups >= 1
            (conn,) = [c for c in gw.gateway.connections if c.principal.identity == "afad"]
            assert len(conn._queue) <= 5 + 1
            assert [await afad.recv_text() for _ in texts] == texts
            assert await until_pong(afad) == []
    assert gw.gateway.stats.slow_consumers == 0


async def test_a_slow_dashboard_sheds_low_priority_events_first(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(
        limits={"send_queue": 10, "rate_limits_enabled": False},
        delivery={"queue_full_grace": 3600},
    )
    pad = "x" * 20_000
    texts = []
    for i in range(60):
        texts.append(envelope("stats_update", {"clicks": i, "pad": pad}, "CATS", f"stats-{i}"))
        if i % 8 == 7:
            # Fewer CRITICAL events than the queue holds: a LOW one can always go instead.
            texts.append(envelope("fraud_alert", {**ALERT, "pad": pad}, "CATS", f"alert-{i}"))
    with trio.fail_after(60):
        async with gw.client("CATS") as cats, gw.client("DASHBOARD") as dash:
            await publish_all(cats, texts)
            got = [m["message_id"] for m in await until_pong(dash)]
    assert gw.gateway.delivery.dropped > 0
    assert [g for g in got if g.startswith("alert-")] == [f"alert-{i}" for i in range(7, 60, 8)]
    assert len([g for g in got if g.startswith("stats-")]) < 60
    dropped = next(f"stats-{i}" for i in range(60) if f"stats-{i}" not in got)
    await gw.gateway.delivery.flush()
    (story,) = explain(storage.open_db(gw.database), dropped)
    assert any("dropped" in fact and "LOW" in fact for fact in story.recipients["dashboard"])


async def test_a_dashboard_queue_holds_live_send_queue_a_durable_one_send_queue(
    start_gateway: GatewayFactory,
) -> None:
    """The same flood for a dashboard and an AFAD that read nothing meanwhile: the
    dashboard's queue stops at ``limits.live_send_queue`` and sheds the rest; the
    AFAD's takes up to ``limits.send_queue`` before it catches up from the log."""
    gw = await start_gateway(
        limits={"send_queue": 40, "live_send_queue": 4, "rate_limits_enabled": False},
        delivery={"queue_full_grace": 3600},
    )
    pad = "x" * 20_000
    texts = [conversion(f"m{i}", pad=pad) for i in range(200)]
    most: dict[str, int] = {"afad": 0, "dashboard": 0}

    async def watch() -> None:
        while True:
            for c in gw.gateway.connections:
                if c.principal is not None and c.principal.identity in most:
                    name = c.principal.identity
                    most[name] = max(most[name], c.queued)
            await trio.lowlevel.checkpoint()

    with trio.fail_after(60):
        async with (
            trio.open_nursery() as nursery,
            gw.client("CATS") as cats,
            gw.client("AFAD") as afad,
            gw.client("DASHBOARD") as dash,
        ):
            nursery.start_soon(watch)
            await publish_all(cats, texts)
            assert [await afad.recv_text() for _ in texts] == texts
            got = await until_pong(dash)
            nursery.cancel_scope.cancel()
    assert 0 < most["dashboard"] <= 4
    assert 4 < most["afad"] <= 40
    assert gw.gateway.delivery.dropped == len(texts) - len(got) > 0


async def test_a_dashboard_queue_is_bounded_in_bytes_too(
    start_gateway: GatewayFactory,
) -> None:
    """60 events of 20 KB for a dashboard that reads nothing meanwhile: far fewer than
    ``limits.send_queue`` (10,000) messages, but past 64 KiB of ``send_queue_bytes``
    once its socket is full, so events are shed for it (ledger and counter) instead
    of held: 10,000 such messages would be 200 MB for one reader."""
    gw = await start_gateway(
        limits={"send_queue_bytes": 65536, "rate_limits_enabled": False},
        delivery={"queue_full_grace": 3600},
    )
    pad = "x" * 20_000
    texts = [
        envelope("stats_update", {"clicks": i, "pad": pad}, "CATS", f"s-{i}") for i in range(60)
    ]
    with trio.fail_after(60):
        async with gw.client("CATS") as cats, gw.client("DASHBOARD") as dash:
            await publish_all(cats, texts)
            got = [m["message_id"] for m in await until_pong(dash)]
    assert gw.gateway.delivery.dropped > 0
    assert 0 < len(got) < 60


async def test_ledger_says_why_a_recipient_did_not_get_an_event(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await start_gateway()
    gw.token("afad", "AFAD")
    gw.token("user-7", "DASHBOARD", "7")
    with storage.open_db(gw.database) as tokens:
        storage.create_token(tokens, name="afad-web", client_type="AFAD", publish_only=True)
    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            await publish_all(cats, [conversion("x1")])
    db = storage.open_db(gw.database)
    (story,) = explain(db, "x1")
    assert "conversion from cats" in story.lines[0]
    assert "waiting in the log for afad" in story.recipients["afad"][0]
    (only,) = explain(db, "x1", recipient="user-7")
    assert "not routed to user-7" in only.recipients["user-7"][0]
    assert "afad-web" not in story.recipients  # publish-only: never a recipient
    (web,) = explain(db, "x1", recipient="afad-web")
    assert "publish-only" in web.recipients["afad-web"][0]
    assert explain(db, "no-such-message") == []


async def test_a_seq_taken_by_another_writer_is_renumbered_not_retried_forever(
    start_gateway: GatewayFactory,
) -> None:
    """Issue 20, bug 10: a seq collision raised TypeError in the commit and the batch
    was retried forever, blocking every publisher. Now the uncommitted events are
    numbered after the log's head and go out."""
    gw = await start_gateway(limits={"rate_limits_enabled": False})
    with trio.fail_after(20):
        async with gw.client("CATS", extensions=ACKS) as cats, gw.client("AFAD") as afad:
            await cats.send(conversion("first"))
            assert (await cats.recv())["seq"] == 1
            # The AFAD is live (its first replay is over: a pong waits for it), so
            # what it gets next comes from the fan-out, not from reading the log.
            assert [m["message_id"] for m in await until_pong(afad)] == ["first"]
            # Another process writes seq 2 behind the gateway's back.
            other = storage.open_db(gw.database)
            with other.atomic():
                storage.commit_events(
                    other,
                    [
                        storage.EventRow(
                            2,
                            "intruder",
                            "someone",
                            None,
                            "conversion",
                            ("type:AFAD",),
                            2,
                            0.0,
                            None,
                            conversion("intruder"),
                        )
                    ],
                    {},
                    [],
                )
            other.close()
            await cats.send(conversion("second"))
            reply = await cats.recv()
            assert (reply["type"], reply["message_id"], reply["seq"]) == ("accepted", "second", 3)
            assert [m["message_id"] for m in await until_pong(afad)] == ["second"]


async def test_a_client_without_acks_that_took_everything_in_is_not_sent_it_again(
    start_gateway: GatewayFactory,
) -> None:
    """The other half of "Clients without acks" (docs/delivery.md): once the client's
    TCP has acknowledged the events, it left nothing unread and the hold has passed,
    the cursor moves, and a return brings nothing twice."""
    gw = await start_gateway(delivery={"legacy_confirm": 0.05})
    texts = [conversion(f"t{i}") for i in range(20)]
    with trio.fail_after(20):
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            await publish_all(cats, texts)
            assert [await afad.recv_text() for _ in texts] == texts
            await until_pong(afad)
            delivery = gw.gateway.delivery
            while delivery.cursor("afad", "type:AFAD") != delivery.head:
                await delivery.wait_commit()
            await delivery.flush()  # and that move is in the database
        async with gw.client("AFAD") as again:
            assert await until_pong(again) == []
    assert gw.gateway.delivery.statistics().unconfirmed == 0


async def test_the_replay_reader_closes_only_after_its_last_read(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20, bug 9: the writer task's cleanup closed the reader's SQLite connection
    while a replay read could still run on it in a worker thread. Here the read is
    held inside its thread while the gateway shuts down; it must finish on an open
    connection (a closed one raises ProgrammingError in the thread)."""
    # A shutdown that gives up on the stuck connection at once, so the writer's
    # cleanup runs while the read is still held.
    gw = await start_gateway(shutdown_timeout=0.1)
    gw.token("afad", "AFAD")
    texts = [conversion(f"r{i}") for i in range(5)]
    inside, release, done = threading.Event(), threading.Event(), threading.Event()
    results: list[object] = []
    real = storage.read_after

    def held_read(db: Any, *args: Any, **kwargs: Any) -> Any:
        inside.set()
        release.wait(10)
        try:
            results.append(real(db, *args, **kwargs))
        except Exception as exc:
            results.append(exc)
            raise
        finally:
            done.set()
        return results[-1]

    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            await publish_all(cats, texts)
        monkeypatch.setattr(storage, "read_after", held_read)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_connect_afad, gw)
            await trio.to_thread.run_sync(inside.wait, 10)
            nursery.start_soon(gw.gateway.shutdown)
            await trio.sleep(0.2)  # the writer's cleanup runs while the read is held
            release.set()
            await trio.to_thread.run_sync(done.wait, 10)
    assert results, "the held read never ran"
    assert not isinstance(results[0], Exception), results


async def _connect_afad(gw: RunningGateway) -> None:
    with contextlib.suppress(trio_websocket.ConnectionClosed, trio_websocket.HandshakeError):
        async with gw.client("AFAD") as afad:
            await afad.recv()


async def test_a_login_whose_replay_planning_is_slow_still_succeeds(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20, bug 8: the auth deadline also covered the login's delivery planning
    (log reads in worker threads), so when it passed during them the next one raised
    Cancelled and a valid login was closed 4000 with no auth_success. The deadline is
    for waiting for ``auth``, not for the gateway's own work: here the replay reader's
    first opening of the database (the first of the planning's threads) is slow."""
    gw = await start_gateway(auth_timeout=0.3)
    gw.token("afad", "AFAD")
    real = storage.open_db

    def slow_open(path: Any) -> Any:
        time.sleep(0.6)  # a busy disk, past the auth deadline
        return real(path)

    monkeypatch.setattr(storage, "open_db", slow_open)
    with trio.fail_after(10):
        async with gw.client("AFAD") as afad:  # asserts auth_success
            assert await until_pong(afad) == []


@pytest.mark.parametrize("log", [True, False])
async def test_an_idle_gateway_is_quiet_with_the_log_on_or_off(
    start_gateway: GatewayFactory, log: bool
) -> None:
    """After traffic, nothing of the gateway keeps running: with the log off its writer
    once waited for a prune that was always due, and spun a whole core."""
    gw = await start_gateway(delivery={"log": log})
    with trio.fail_after(10):
        async with gw.client("AFAD") as afad, gw.client("CATS") as cats:
            await cats.send(envelope("conversion", CONVERSION, "CATS", "q1"))
            assert json.loads(await afad.recv_text())["message_id"] == "q1"
            # Returns only once every task has waited 0.2 s without a wakeup.
            await trio.testing.wait_all_tasks_blocked(0.2)


async def test_drops_in_a_row_share_a_ledger_row_and_each_is_explained(
    start_gateway: GatewayFactory,
) -> None:
    """Bursts larger than a dashboard's queue: what does not fit is shed, one ledger
    row per run of drops, and `explain` tells each missed event from each written one,
    while the dashboard is still connected (its queue drained after the last drops)."""
    gw = await start_gateway(
        limits={"send_queue": 10, "rate_limits_enabled": False},
        delivery={"queue_full_grace": 3600},
    )
    bursts = [
        [envelope("stats_update", {"clicks": i}, "CATS", f"s{b}-{i}") for i in range(25)]
        for b in range(4)
    ]
    with trio.fail_after(60):
        async with gw.client("CATS") as cats, gw.client("DASHBOARD") as dash:
            for burst in bursts:
                await publish_all(cats, burst)
                await trio.sleep(0.2)  # the pacer writes the queue out meanwhile
            got = {m["message_id"] for m in await until_pong(dash)}
            await gw.gateway.delivery.flush()
            assert 0 < gw.gateway.delivery.dropped < 100
            db = storage.open_db(gw.database)
            for burst in bursts:
                for text in burst:
                    message_id = json.loads(text)["message_id"]
                    (story,) = explain(db, message_id)
                    facts = story.recipients["dashboard"]
                    shed = [fact for fact in facts if "dropped" in fact and "LOW" in fact]
                    assert bool(shed) == (message_id not in got), (message_id, facts)
            rows = db.execute("SELECT count(*) FROM ledger WHERE kind = 'dropped'").fetchone()[0]
            assert rows <= len(bursts) < gw.gateway.delivery.dropped


async def test_a_failing_commit_keeps_its_events_and_warns_once_per_outage(
    start_gateway: GatewayFactory,
    lazy_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A disk that fails three commits in a row: the event waits in memory, is
    retried (catsock/groupcommit.py), and goes out once the disk works; the log
    says so once when it starts and once when it ends, and the metrics count all
    three failures."""
    gw = await start_gateway(limits={"rate_limits_enabled": False})
    commit = storage.commit_events
    failures: list[int] = []

    def disk_fails_three_times(*args: Any) -> Any:
        if len(failures) < 3:
            failures.append(1)
            raise sqlite3.OperationalError("disk I/O error")
        return commit(*args)

    with trio.fail_after(60):
        async with gw.client("CATS", extensions=ACKS) as cats, gw.client("AFAD") as afad:
            await until_pong(afad)
            monkeypatch.setattr("storage.commit_events", disk_fails_three_times)
            await cats.send(conversion("kept"))
            reply = await cats.recv()
            assert (reply["type"], reply["message_id"], reply["seq"]) == ("accepted", "kept", 1)
            assert [m["message_id"] for m in await until_pong(afad)] == ["kept"]
    assert len(failures) == 3
    assert gw.gateway.delivery.statistics().commit_errors == 3
    said = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "catsock.delivery" and r.levelno >= 20
    ]
    assert said == [
        ("WARNING", "event log: commit of 1 events failed: disk I/O error"),
        ("INFO", "event log: database writes work again (3 errors so far)"),
    ]


async def test_ledger_sentences_name_the_transport_and_read_as_english(
    start_gateway: GatewayFactory,
) -> None:
    """Issue 11, ledger truth: a long-poll's row names it (it used to say "written
    to None"), and a dashboard that missed an event is told so in one plain
    sentence."""
    from .test_http import http

    gw = await start_gateway()
    afad = gw.token("afad", "AFAD")
    gw.token("admin", "DASHBOARD")
    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            await publish_all(cats, [conversion("lp-1")])
        polled = await http(
            gw.port,
            "GET",
            "/api/events?since=0&wait=0",
            headers={"authorization": f"Bearer {afad}"},
        )
        assert polled.status == 200
        await gw.gateway.delivery.flush()
    (story,) = explain(storage.open_db(gw.database), "lp-1")
    (fact,) = story.recipients["afad"]
    assert fact.startswith("written to HTTP long-poll at ")
    assert story.recipients["admin"] == [
        "not written to admin: it is not durable (DASHBOARD), so it gets events only while"
        " connected, and this one was written to none of its connections"
    ]


@pytest.mark.parametrize(
    ("hard_rows", "replayed", "gap", "lost"),
    [
        pytest.param(1000, range(1, 51), None, 0, id="soft-limits-keep-what-it-needs"),
        pytest.param(20, range(31, 51), {"first": 1, "last": 30}, 30, id="hard-bound-says-so"),
    ],
)
async def test_retention_never_hides_a_loss(
    start_gateway: GatewayFactory,
    hard_rows: int,
    replayed: range,
    gap: dict[str, int] | None,
    lost: int,
) -> None:
    """Issue 11: with retention_rows 10 a durable recipient away for 50 events used
    to get the last 10 and a grant saying since 0. Now the soft limits keep what it
    has not had; only the hard bound takes it, and then the grant, the ledger and
    /metrics say what was lost."""
    settings: dict[str, Any] = {
        "limits": {"rate_limits_enabled": False},
        "delivery": {"retention_rows": 10, "retention_hard_rows": hard_rows},
    }
    gw = await start_gateway(**settings)
    gw.token("afad", "AFAD")  # durable, never connected: its log starts now
    with trio.fail_after(30):
        async with gw.client("CATS") as cats:
            await publish_all(cats, [conversion(f"r{i}") for i in range(1, 51)])
        gw = await restart(start_gateway, gw, **settings)
        await gw.gateway.delivery.wait_pruned()  # the start-up prune
        async with gw.client("AFAD", extensions=ACKS_RESUME) as afad:
            grant = afad.auth_reply["extensions"]["resume"]
            got = [m["message_id"] for m in await until_pong(afad)]
    assert got == [f"r{i}" for i in replayed]
    assert grant["since"] == replayed[0] - 1
    assert grant.get("gap") == gap
    metrics = await http_get_metrics(gw.port)
    assert f"catsock_events_lost_to_retention_total {float(lost)}" in metrics
    db = storage.open_db(gw.database)
    losses = [
        (r["identity"], r["first_seq"], r["last_seq"], r["detail"])
        for r in db.query("SELECT * FROM ledger WHERE kind = 'dropped'")
    ]
    assert losses == ([] if gap is None else [("afad", 1, 30, "retention")])


async def http_get_metrics(port: int) -> str:
    from .test_http import http

    return (await http(port, "GET", "/metrics")).body.decode()


async def test_a_connection_that_drains_between_events_gets_one_written_row_a_span(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    """A recipient whose queue empties after every write (a dashboard, each pacer
    round) once got a "written" row per write: 3 million rows in three minutes of
    issue 19's soak, and the ledger's age prune walked them all once a minute. Now
    one row per LEDGER_SPAN, noted once the span has passed even though nothing
    else happens on the connection."""
    gw = await start_gateway(limits={"rate_limits_enabled": False})
    with trio.fail_after(60):
        async with gw.client("DASHBOARD") as dash, gw.client("CATS") as cats:
            for i in range(5):
                await cats.send(conversion(f"e{i}"))
                assert (await dash.recv())["message_id"] == f"e{i}"
                await trio.sleep(0.1)
            await trio.sleep(LEDGER_SPAN + 0.5)  # idle, still connected
            await gw.gateway.delivery.flush()
            db = storage.open_db(gw.database)
            rows = [
                (r["first_seq"], r["last_seq"])
                for r in db.query("SELECT * FROM ledger WHERE kind = 'written' ORDER BY id")
            ]
            db.close()
    assert rows == [(1, 5)]


async def test_a_written_row_is_dated_from_its_first_write_never_after_an_ack(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    """Issue 11, ledger truth: a "written" range was dated when it was flushed to
    the ledger, which for a recipient kept busy can be long after it acked events
    of the range ("written at" after "acked at"). The AFAD here reads two large
    events, acks them, and lets the rest of a burst wait in TCP buffers for 2 s,
    so the gateway's queue does not drain until then."""
    t0 = 1_800_000_000.0
    gw = await start_gateway(
        wall_clock=lambda: t0 + trio.current_time(),
        limits={"rate_limits_enabled": False, "max_message_size": 256 * 1024},
    )
    big = {**CONVERSION, "adware_name": "x" * 100_000}
    with trio.fail_after(120):
        async with gw.client("AFAD", extensions=ACKS) as afad:
            async with gw.client("CATS") as cats:
                for i in range(100):  # 10 MB: more than loopback buffers hold
                    await cats.send(envelope("conversion", big, "CATS", f"big-{i}"))
                assert [(await afad.recv())["seq"] for _ in range(2)] == [1, 2]
                await trio.sleep(0.5)
                await afad.send({"type": "ack", "seq": 2})
                await trio.sleep(2.0)
                for _ in range(98):
                    await afad.recv()
            await gw.gateway.delivery.flush()
    db = storage.open_db(gw.database)
    rows = {
        r["kind"]: r["at"] - t0
        for r in db.query(
            "SELECT kind, at FROM ledger WHERE identity = 'afad' AND first_seq <= 2"
            " AND last_seq >= 2"
        )
    }
    assert rows["acked"] >= 0.5
    assert rows["written"] <= rows["acked"], rows
