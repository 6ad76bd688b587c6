"""Fault injection (issue 5): kill -9 the gateway, a recipient or a publisher mid-stream.

Real processes on real SQLite files: the gateway is ``python -m catsock serve``
(conftest.py ``GatewayProcess``), killed with SIGKILL and started again on the same
database and port. After each fault the recipient must end with every accepted
``message_id``; a message may arrive twice only as a redelivery of the same log
entry (same ``seq``), and those are counted and printed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import trio

import storage
from catsock.client import Accepted, connect

from .conftest import (
    CLIENT_OPTIONS,
    GatewayProcess,
    Recipient,
    child,
    conversion_payload,
    publish_stream,
)

ACKS_RESUME: dict[str, Any] = {"acks": {}, "resume": {}}
REPO = Path(__file__).resolve().parents[2]


async def test_kill_the_gateway_mid_stream_of_acked_publishes(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """CATS publishes 10,000 events through ``catsock.client`` (outbox, acks) while AFAD
    (acks + resume, acking every 100) is connected; the gateway is killed with SIGKILL
    after 3,000 answers and started again on the same database and port. Everything
    accepted reaches AFAD, in seq order per connection; what comes twice is the replay
    of what AFAD had not acked (or whose ack was not committed yet) when it died. The
    ledger then answers for every message."""
    total, kill_after = 10_000, 3_000
    cats = gateway.token("cats", "CATS")
    afad = gateway.token("afad", "AFAD")
    ids = [f"k-{i:05d}" for i in range(total)]
    accepted: dict[str, Accepted] = {}
    reached = trio.Event()
    killed_at: list[int] = []
    started = time.perf_counter()
    with trio.fail_after(90):
        await gateway.start()
        async with trio.open_nursery() as nursery:
            recipient = Recipient(gateway, afad, extensions=ACKS_RESUME, ack_every=100)
            await nursery.start(recipient.run)

            async def kill_and_restart() -> None:
                await reached.wait()
                killed_at.append(len(accepted))
                await gateway.kill()
                await gateway.start()

            nursery.start_soon(kill_and_restart)

            def progress(n: int) -> None:
                if n >= kill_after:
                    reached.set()

            async with connect(
                gateway.url, cats, "CATS", outbox_path=tmp_path / "cats-outbox.db",
                **CLIENT_OPTIONS,
            ) as client:
                await publish_stream(client, ids, accepted, progress=progress)
            published = time.perf_counter()
            await recipient.wait_for(ids)
            await recipient.barrier()
            nursery.cancel_scope.cancel()
    received = time.perf_counter()
    redelivered = recipient.redeliveries()
    duplicates = [a for a in accepted.values() if a.duplicate]
    print(
        f"\n{total} publishes, killed after {killed_at} accepted; published in"
        f" {published - started:.1f} s, all received {received - started:.1f} s;"
        f" {len(duplicates)} accepted as duplicate after resending;"
        f" {len(redelivered)} redelivered to afad over {recipient.connections} connections"
    )
    assert gateway.starts == 2
    assert set(accepted) == set(ids)
    assert set(recipient.ids) == set(ids), "recipient lost events"
    recipient.check_order()
    for r in recipient.received:
        assert r.seq == accepted[r.message_id].seq, r
    recipient.check_redeliveries_come_first()
    again = {r.message_id for r in redelivered}

    assert await gateway.stop() == 0
    assert not any("Traceback" in line for line in gateway.stderr), gateway.stderr
    # The ledger answers for every message: each acked id is in the log once,
    # with the seq its publisher was told.
    logged = dict(gateway.query("SELECT message_id, seq FROM events WHERE sender = 'cats'"))
    assert logged == {m: a.seq for m, a in accepted.items()}
    db = storage.open_db(gateway.database)
    try:
        for message_id in ids:
            (row,) = storage.events_by_message_id(db, message_id)
            assert (row["seq"], row["sender"]) == (accepted[message_id].seq, "cats")
    finally:
        db.close()
    # Every event has a "written to afad" row: a row lost with the kill belongs to a
    # write after the last commit, which the cursor did not cover either, so the
    # event was written again after the restart (and recorded then).
    written = gateway.query(
        "SELECT first_seq, last_seq FROM ledger WHERE identity = 'afad' AND kind = 'written'"
    )
    covered = {seq for first, last in written for seq in range(first, last + 1)}
    assert not {a.seq for a in accepted.values()} - covered
    before, after = ids[0], ids[-1]
    sample = [before, after, *(sorted(again)[:1])]
    for message_id in sample:
        code, out, err = await gateway.cli("ledger", message_id, "--recipient", "afad")
        assert code == 0, (message_id, out, err)
        assert f"seq {accepted[message_id].seq}: conversion from cats" in out, out
        assert "written to conn_" in out, out
    code, _, err = await gateway.cli("ledger", "no-such-message", "--recipient", "afad")
    assert code == 1, err


async def test_kill_the_gateway_while_a_slow_recipient_catches_up(
    gateway: GatewayProcess,
) -> None:
    """AFAD reads slowly with a send queue of 8, so it falls back to catching up from
    the log; the gateway is killed with SIGKILL mid-stream and started again: AFAD
    still ends with everything, redeliveries first on the new connection."""
    gateway.settings["CATSOCK_LIMITS__SEND_QUEUE"] = "8"
    total, kill_after = 3000, 1500
    cats = gateway.token("cats", "CATS")
    afad = gateway.token("afad", "AFAD")
    ids = [f"c-{i:05d}" for i in range(total)]
    accepted: dict[str, Accepted] = {}
    reached = trio.Event()
    pad = "y" * 5000
    with trio.fail_after(90):
        await gateway.start()
        async with trio.open_nursery() as nursery:
            recipient = Recipient(
                gateway, afad, extensions=ACKS_RESUME, ack_every=20, pace=0.002
            )
            await nursery.start(recipient.run)

            async def kill_and_restart() -> None:
                await reached.wait()
                await gateway.kill()
                await gateway.start()
                recipient.pace = 0.0

            nursery.start_soon(kill_and_restart)

            def progress(n: int) -> None:
                if n >= kill_after:
                    reached.set()

            async with connect(gateway.url, cats, "CATS", **CLIENT_OPTIONS) as client:
                await publish_stream(
                    client, ids, accepted,
                    payload=lambda i: conversion_payload(i, pad=pad), progress=progress,
                )
            await recipient.wait_for(ids)
            await recipient.barrier()
            nursery.cancel_scope.cancel()
    print(
        f"\nslow AFAD: {len(recipient.received)} received for {total},"
        f" {len(recipient.redeliveries())} redelivered after the kill"
    )
    assert set(recipient.ids) == set(ids)
    recipient.check_order()
    recipient.check_redeliveries_come_first()


async def test_kill_the_gateway_during_a_replay(gateway: GatewayProcess) -> None:
    """AFAD was away for 6,000 events; the gateway is killed with SIGKILL while it
    replays them to AFAD, and started again: AFAD resumes from its last committed
    ack and ends with everything, in order on each connection."""
    total = 6000
    cats = gateway.token("cats", "CATS")
    afad = gateway.token("afad", "AFAD")
    ids = [f"p-{i:05d}" for i in range(total)]
    accepted: dict[str, Accepted] = {}
    with trio.fail_after(90):
        await gateway.start()
        async with connect(gateway.url, cats, "CATS", **CLIENT_OPTIONS) as client:
            await publish_stream(client, ids, accepted)
        async with trio.open_nursery() as nursery:
            recipient = Recipient(gateway, afad, extensions=ACKS_RESUME, ack_every=50)
            await nursery.start(recipient.run)
            await recipient.wait_for(ids[:2000])
            await gateway.kill()
            await gateway.start()
            await recipient.wait_for(ids)
            await recipient.barrier()
            nursery.cancel_scope.cancel()
    first = [r.message_id for r in recipient.received if r.connection == 1]
    print(
        f"\nreplay of {total} killed after {len(first)} arrived;"
        f" {len(recipient.redeliveries())} redelivered"
    )
    assert first == ids[: len(first)]  # the replay is the log, in order
    assert set(recipient.ids) == set(ids)
    recipient.check_order()
    recipient.check_redeliveries_come_first()


def tail_args(gateway: GatewayProcess, token: str) -> list[str]:
    return [
        sys.executable, "-m", "catsock", "tail",
        "--url", gateway.url, "--token", token, "--client-type", "AFAD", "--ack",
    ]


def printed(lines: list[str]) -> list[tuple[int, str]]:
    """(seq, message_id) of every event line a ``tail`` printed."""
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [(e["seq"], e["message_id"]) for e in events]


async def test_kill_the_recipient_mid_stream(gateway: GatewayProcess) -> None:
    """``python -m catsock tail --ack`` is killed with SIGKILL while events stream to
    it, then started again: it prints the rest, in seq order, nothing missing; only
    what it printed but had not acked yet comes again."""
    total, kill_after = 3000, 700
    cats = gateway.token("cats", "CATS")
    afad = gateway.token("afad", "AFAD")
    ids = [f"r-{i:05d}" for i in range(total)]
    accepted: dict[str, Accepted] = {}
    with trio.fail_after(90):
        await gateway.start()
        async with connect(gateway.url, cats, "CATS", **CLIENT_OPTIONS) as client:
            async with child(tail_args(gateway, afad), gateway.cwd, gateway.env) as first:
                await first.err.wait_for(lambda lines: any("tailing" in x for x in lines))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(publish_stream, client, ids[:2000], accepted)
                    await first.out.wait_for(lambda lines: len(lines) >= kill_after)
                    assert await first.kill() == -9
            got_first = printed(first.out.lines)
            async with child(tail_args(gateway, afad), gateway.cwd, gateway.env) as second:
                await second.err.wait_for(lambda lines: any("tailing" in x for x in lines))
                # Replayed first, then live: the rest goes out while it runs.
                await publish_stream(client, ids[2000:], accepted)
                await second.out.wait_for(
                    lambda lines: any(ids[-1] in line for line in lines)
                )
                assert await second.terminate() == 0
            got_second = printed(second.out.lines)
    assert set(accepted) == set(ids)
    for got in (got_first, got_second):
        seqs = [seq for seq, _ in got]
        assert seqs == sorted(set(seqs)), "not in seq order, or twice on one connection"
        assert all(seq == accepted[m].seq for seq, m in got)
    first_ids = [m for _, m in got_first]
    second_ids = [m for _, m in got_second]
    assert set(first_ids) | set(second_ids) == set(ids), "events lost"
    # What came again is the end of what the killed tail printed (not yet acked).
    again = [m for m in second_ids if m in set(first_ids)]
    assert again == first_ids[len(first_ids) - len(again):]
    assert second_ids[: len(again)] == again
    print(
        f"\ntail killed after printing {len(first_ids)} of {total}; the second printed"
        f" {len(second_ids)}, {len(again)} of them again (printed but not yet acked)"
    )


async def test_kill_the_publisher_mid_stream(gateway: GatewayProcess, tmp_path: Path) -> None:
    """A publisher with an outbox is killed with SIGKILL mid-stream and started again
    on the same outbox: it resends what it left PENDING, and the recipient gets every
    message_id exactly once (the gateway drops the copies it already had)."""
    total, kill_after = 3000, 1000
    cats = gateway.token("cats", "CATS")
    afad = gateway.token("afad", "AFAD")
    outbox = tmp_path / "publisher-outbox.db"
    ids = {f"pub-{i:05d}" for i in range(total)}
    with trio.fail_after(90):
        await gateway.start()
        args = [
            sys.executable, "-m", "tests.faults.publisher",
            gateway.url, cats, str(outbox), str(total),
        ]
        async with trio.open_nursery() as nursery:
            recipient = Recipient(gateway, afad)  # a seed client, connected throughout
            await nursery.start(recipient.run)
            async with child(args, REPO, gateway.env) as first:
                await first.out.wait_for(lambda lines: len(lines) >= kill_after)
                assert await first.kill() == -9
            async with child(args, REPO, gateway.env) as second:
                assert await second.wait() == 0, second.err.lines
            assert second.out.lines[-1] == "done"
            await recipient.wait_for(ids)
            await recipient.barrier()
            nursery.cancel_scope.cancel()
    got = [r.message_id for r in recipient.received]
    assert sorted(got) == sorted(ids), "lost or delivered twice"
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        rows = db.execute(
            "SELECT status, COUNT(*), SUM(retry_count) FROM socket_events GROUP BY status"
        ).fetchall()
    assert [(status, n) for status, n, _ in rows] == [("SENT", total)], rows
    resent = rows[0][2]
    (duplicates,) = gateway.query(
        "SELECT COUNT(*) FROM ledger WHERE identity = 'cats' AND kind = 'duplicate'"
    )
    print(
        f"\npublisher killed after {len(first.out.lines)} answers; the second process"
        f" resent {resent} outbox rows, {duplicates[0]} of them already accepted"
        " (dropped as duplicates)"
    )
    assert resent > 0


async def test_a_recipient_offline_for_the_whole_stream_gets_all_of_it(
    gateway: GatewayProcess,
) -> None:
    """AFAD's token exists before the stream; AFAD never connects during it, the
    gateway is killed with SIGKILL after it and started again; then AFAD (a seed
    client: no extensions) connects and gets every event, in order."""
    total = 2000
    cats = gateway.token("cats", "CATS")
    afad = gateway.token("afad", "AFAD")
    ids = [f"o-{i:05d}" for i in range(total)]
    accepted: dict[str, Accepted] = {}
    with trio.fail_after(60):
        await gateway.start()
        async with connect(gateway.url, cats, "CATS", **CLIENT_OPTIONS) as client:
            await publish_stream(client, ids, accepted)
        await gateway.kill()  # accepted means committed: nothing of it may be lost
        await gateway.start()
        async with trio.open_nursery() as nursery:
            recipient = Recipient(gateway, afad)
            await nursery.start(recipient.run)
            await recipient.wait_for(ids)
            await recipient.barrier()
            nursery.cancel_scope.cancel()
    assert [r.message_id for r in recipient.received] == ids
    assert all(r.seq is None for r in recipient.received)  # seed clients see no seq
    assert len(accepted) == total
    assert not any(a.duplicate for a in accepted.values())
