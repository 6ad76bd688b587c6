"""What only the synchronous client promises: ``publish`` never waits for the network,
many threads may publish, a forked child opens its own connection and outbox handle,
and interpreter exit delivers what was published."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from catsock.client import ClientClosed
from catsock.client.sync import Client
from storage.outbox import Outbox, OutboxStatus

from .drivers import open_client
from .gateway import TIMEOUT, GatewayThread

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = {"pay_id": 1, "adware_id": 100, "owner_id": 500, "cost": 1, "sales": 2,
           "state": "PENDING"}  # fmt: skip


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_publish_stores_and_returns_without_a_gateway(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{closed_port()}/ws"
    client = Client(url, "cs_unused", "CATS", outbox_path=tmp_path / "o.db")
    try:
        ids = [client.publish("conversion", PAYLOAD) for _ in range(3)]
        with Outbox(tmp_path / "o.db") as outbox:
            rows = outbox.entries()
        assert [(r.message_id, r.status) for r in rows] == [(i, OutboxStatus.PENDING) for i in ids]
        assert not client.connected
    finally:
        client.close(flush_timeout=0)
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.counts()[OutboxStatus.PENDING] == 3
    with pytest.raises(ClientClosed):
        client.publish("conversion", PAYLOAD)


def test_many_threads_publish_each_once_and_in_order(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    afad = open_client("sync", gateway.url, gateway.token("afad", "AFAD"), "AFAD")
    afad.record()
    client = Client(gateway.url, gateway.token("cats", "CATS"), "CATS",
                    outbox_path=tmp_path / "o.db", receive=False)  # fmt: skip
    threads, per_thread = 8, 25

    def publish(t: int) -> None:
        for n in range(per_thread):
            client.publish("conversion", PAYLOAD, message_id=f"t{t}-{n}")

    try:
        workers = [threading.Thread(target=publish, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(TIMEOUT)
        client.flush(TIMEOUT)
        handled = afad.wait_handled(threads * per_thread)
    finally:
        client.close()
        afad.close()
    ids = [e.message_id for e in handled]
    assert len(set(ids)) == len(ids) == threads * per_thread
    for t in range(threads):
        assert [i for i in ids if i.startswith(f"t{t}-")] == [
            f"t{t}-{n}" for n in range(per_thread)
        ]
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.counts()[OutboxStatus.SENT] == threads * per_thread


def test_a_forked_child_opens_its_own_connection_and_outbox(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    token = gateway.token("cats", "CATS")
    result = subprocess.run(
        [sys.executable, "-m", "tests.client.sync_process", "fork", gateway.url, token,
         str(tmp_path / "o.db")],
        cwd=ROOT, capture_output=True, text=True, timeout=3 * TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    child, parent = report["child"], report["parent"]
    assert child["connection_changed"], report
    assert child["outbox_reopened"], report
    assert child["connections"] == 1, report
    assert parent["child_status"] == 0
    # The parent's connection was not disturbed by the child's.
    assert parent["same_connection"], report
    assert parent["connections"] == 1, report
    first, last = parent["seqs"]
    assert first < child["seq"] < last
    with Outbox(tmp_path / "o.db") as outbox:
        rows = {row.message_id: row.status for row in outbox.entries()}
    assert rows == dict.fromkeys(["parent-1", "child-1", "parent-2"], OutboxStatus.SENT)


def test_interpreter_exit_delivers_what_was_published(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    afad = open_client("sync", gateway.url, gateway.token("afad", "AFAD"), "AFAD")
    afad.record()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tests.client.sync_process", "exit", gateway.url,
             gateway.token("cats", "CATS"), str(tmp_path / "o.db"), "5"],
            cwd=ROOT, capture_output=True, text=True, timeout=3 * TIMEOUT, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == "published\n"
        handled = afad.wait_handled(5)
    finally:
        afad.close()
    assert [e.message_id for e in handled] == [f"exit-{n}" for n in range(5)]
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.counts()[OutboxStatus.SENT] == 5


def test_a_refused_token_stops_the_thread_but_publish_still_stores(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    client = Client(gateway.url, "cs_not_a_token", "CATS", outbox_path=tmp_path / "o.db")
    try:
        with pytest.raises(ClientClosed, match="AUTH_FAILED"):
            client.publish_and_wait("conversion", PAYLOAD, timeout=TIMEOUT)
        message_id = client.publish("conversion", PAYLOAD)
    finally:
        client.close()
    with Outbox(tmp_path / "o.db") as outbox:
        row = outbox.get(message_id)
    assert row is not None
    assert row.status == OutboxStatus.PENDING
