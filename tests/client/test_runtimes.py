"""The behaviour every runtime must show, one test body for trio, asyncio and sync.

Each test gets ``runtime`` (one of the three) and a live ``gateway``; clients are
opened through drivers.py. What is checked is what a backend relies on: acks,
duplicates, resume after a lost connection, an outbox that survives kill -9,
handlers, and closing promptly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from catsock.backoff import Backoff
from catsock.client import AuthError, ClientClosed
from storage.outbox import Outbox, OutboxStatus
from tests.internal_errors import InternalErrors

from .drivers import open_client
from .gateway import TIMEOUT, GatewayThread

ROOT = Path(__file__).resolve().parents[2]


def conversion(n: int) -> dict[str, Any]:
    return {"pay_id": n, "adware_id": 100, "owner_id": 500, "cost": 1000, "sales": 5000,
            "state": "PENDING"}  # fmt: skip


def test_publish_is_acknowledged_with_its_seq_and_recorded(
    runtime: str, gateway: GatewayThread, tmp_path: Path
) -> None:
    afad = open_client(runtime, gateway.url, gateway.token("afad", "AFAD"), "AFAD")
    afad.iterate()
    cats = open_client(
        runtime, gateway.url, gateway.token("cats", "CATS"), "CATS",
        outbox_path=tmp_path / "outbox.db", receive=False,
    )  # fmt: skip
    try:
        first = cats.publish("conversion", conversion(1), message_id="a-1")
        second = cats.publish("conversion", conversion(2))
        got = [afad.next_event(), afad.next_event()]
    finally:
        cats.close()
        afad.close()
    assert first.seq is not None
    assert second.seq == first.seq + 1
    assert not first.duplicate
    assert not second.duplicate
    assert [(e.seq, e.message_id, e.payload["pay_id"]) for e in got] == [
        (first.seq, "a-1", 1),
        (second.seq, second.message_id, 2),
    ]
    with Outbox(tmp_path / "outbox.db") as outbox:
        rows = outbox.entries()
    assert [(r.message_id, r.status, r.seq) for r in rows] == [
        ("a-1", OutboxStatus.SENT, first.seq),
        (second.message_id, OutboxStatus.SENT, second.seq),
    ]


def test_the_same_message_id_twice_is_a_duplicate_and_delivered_once(
    runtime: str, gateway: GatewayThread
) -> None:
    afad = open_client(runtime, gateway.url, gateway.token("afad", "AFAD"), "AFAD")
    afad.record("conversion")
    cats = open_client(runtime, gateway.url, gateway.token("cats", "CATS"), "CATS",
                       receive=False)  # fmt: skip
    try:
        first = cats.publish("conversion", conversion(1), message_id="dup-1")
        again = cats.publish("conversion", conversion(1), message_id="dup-1")
        marker = cats.publish("conversion", conversion(2), message_id="after")
        handled = afad.wait_handled(2)
    finally:
        cats.close()
        afad.close()
    assert (again.seq, again.duplicate) == (first.seq, True)
    assert not first.duplicate
    assert [e.message_id for e in handled] == ["dup-1", "after"]
    assert handled[1].seq == marker.seq


def test_a_receiver_resumes_after_a_restart_without_gaps_or_duplicates(
    runtime: str, tmp_path: Path, internal_errors: InternalErrors
) -> None:
    # No durable recipients: the gateway keeps no cursor for AFAD, so what it missed
    # comes back only because the client asks to resume after the last seq it handled.
    # The receiver waits 3 s before reconnecting, so the events published right after
    # the restart reach it only by that replay.
    gateway = GatewayThread(tmp_path, internal_errors, delivery={"durable_types": []})
    gateway.start()
    afad = open_client(
        runtime, gateway.url, gateway.token("afad", "AFAD"), "AFAD",
        backoff=Backoff(base=3.0, factor=1.0, jitter=0.0),
    )  # fmt: skip
    afad.record()
    cats_token = gateway.token("cats", "CATS")
    try:
        cats = open_client(runtime, gateway.url, cats_token, "CATS", receive=False)
        before = [cats.publish("conversion", conversion(n)) for n in range(3)]
        afad.wait_handled(3)
        cats.close()
        gateway.stop()
        gateway.start()
        cats = open_client(runtime, gateway.url, cats_token, "CATS", receive=False)
        assert not afad.connected()
        after = [cats.publish("conversion", conversion(n)) for n in range(3, 6)]
        cats.close()
        handled = afad.wait_handled(6)
        assert afad.connections() == 2
    finally:
        afad.close()
        gateway.stop()
    seqs = [a.seq for a in before + after]
    assert [e.seq for e in handled] == seqs
    assert seqs == list(range(seqs[0], seqs[0] + 6))
    assert [e.payload["pay_id"] for e in handled] == list(range(6))


def test_the_outbox_survives_kill_9_and_the_next_client_sends_it(
    runtime: str, gateway: GatewayThread, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.db"
    cats_token = gateway.token("cats", "CATS")
    afad = open_client(runtime, gateway.url, gateway.token("afad", "AFAD"), "AFAD")
    afad.record()
    try:
        accepted = open_client(runtime, gateway.url, cats_token, "CATS",
                               outbox_path=outbox, receive=False)  # fmt: skip
        accepted.publish("conversion", conversion(100), message_id="killed-0")
        accepted.close()
        # The gateway goes away, so the publisher's events stay PENDING in its outbox;
        # killed-0 is in it too, published again: the gateway must answer duplicate.
        gateway.stop()
        with subprocess.Popen(
            [sys.executable, "-m", "tests.client.publisher", runtime, gateway.url,
             cats_token, str(outbox), "3"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        ) as publisher:  # fmt: skip
            try:
                assert publisher.stdout is not None
                assert publisher.stdout.readline() == "stored\n"
            finally:
                os.kill(publisher.pid, signal.SIGKILL)
                publisher.wait(TIMEOUT)
        assert publisher.returncode == -signal.SIGKILL
        with Outbox(outbox) as box:
            assert box.counts()[OutboxStatus.PENDING] == 3
        gateway.start()
        resender = open_client(runtime, gateway.url, cats_token, "CATS",
                               outbox_path=outbox, receive=False)  # fmt: skip
        resender.flush()
        resender.close()
        handled = afad.wait_handled(3)
    finally:
        afad.close()
    with Outbox(outbox) as box:
        rows = {row.message_id: row for row in box.entries()}
    assert {m: r.status for m, r in rows.items()} == dict.fromkeys(
        ["killed-0", "killed-1", "killed-2"], OutboxStatus.SENT
    )
    assert rows["killed-1"].retry_count >= 1
    # killed-0 was delivered before the kill and not again; the others exactly once.
    assert [e.message_id for e in handled] == ["killed-0", "killed-1", "killed-2"]
    assert [e.payload["pay_id"] for e in handled] == [100, 1, 2]


def test_handlers_run_in_order_and_a_failing_one_does_not_stop_the_rest(
    runtime: str, gateway: GatewayThread, internal_errors: InternalErrors
) -> None:
    internal_errors.expect("handler .* failed", count=1)
    afad = open_client(runtime, gateway.url, gateway.token("afad", "AFAD"), "AFAD")
    calls: list[tuple[str, str]] = []

    def typed(event: Any) -> None:
        calls.append(("conversion", event.message_id))
        if event.payload["pay_id"] == 1:
            raise RuntimeError("the handler fails on purpose")

    def everything(event: Any) -> None:
        calls.append(("*", event.message_id))

    afad.add_handler("*", everything)
    afad.add_handler("conversion", typed)
    afad.record()
    cats = open_client(runtime, gateway.url, gateway.token("cats", "CATS"), "CATS",
                       receive=False)  # fmt: skip
    try:
        for n in range(3):
            cats.publish("conversion", conversion(n % 2), message_id=f"h-{n}")
        afad.wait_handled(3)
    finally:
        cats.close()
        afad.close()
    assert calls == [(kind, f"h-{n}") for n in range(3) for kind in ("conversion", "*")]


def test_closing_or_cancelling_does_not_wait_out_close_timeout(
    runtime: str, gateway: GatewayThread
) -> None:
    """``close_timeout`` is far above the suite's ``TIMEOUT``: a client that waited it
    out would fail the driver's bound on stopping."""
    token = gateway.token("afad", "AFAD")
    for end in ("close", "cancel"):
        afad = open_client(runtime, gateway.url, token, "AFAD", close_timeout=10 * TIMEOUT)
        afad.iterate()
        getattr(afad, end)()


def test_publishing_while_the_gateway_is_down_is_delivered_once_it_is_back(
    runtime: str, gateway: GatewayThread, tmp_path: Path
) -> None:
    cats_token = gateway.token("cats", "CATS")
    afad = open_client(runtime, gateway.url, gateway.token("afad", "AFAD"), "AFAD")
    afad.record()
    cats = open_client(
        runtime, gateway.url, cats_token, "CATS", outbox_path=tmp_path / "outbox.db",
        receive=False, backoff=Backoff(base=0.2, factor=1.0),
    )  # fmt: skip
    try:
        gateway.stop()
        ids = [cats.publish_nowait("conversion", conversion(n)) for n in range(3)]
        gateway.start()
        cats.flush()
        handled = afad.wait_handled(3)
    finally:
        cats.close()
        afad.close()
    assert [e.message_id for e in handled] == ids


def test_a_refused_token_is_final(runtime: str, gateway: GatewayThread) -> None:
    # trio and asyncio raise AuthError from connect; the sync client's thread stops,
    # and its blocking calls say why.
    error = AuthError if runtime != "sync" else ClientClosed
    with pytest.raises(error, match=re.escape("AUTH_FAILED")):
        open_client(runtime, gateway.url, "cs_not_a_token", "AFAD")
