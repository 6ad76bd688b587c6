"""GET /metrics: Prometheus text, counters that move, and label sets that stay bounded."""

from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import storage
from catsock import httpapi
from protocol import ErrorCode

from .harness import CONVERSION, GatewayFactory, RunningGateway, envelope
from .test_http import http

HTTP_API_DOC = (Path(__file__).resolve().parents[2] / "docs" / "http-api.md").read_text()

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(gw: RunningGateway) -> Samples:
    reply = await http(gw.port, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def _log_rows(gw: RunningGateway) -> int:
    """Rows in the message and connection logs, counted on a connection of our own."""
    db = storage.open_db(gw.database)
    try:
        return sum(
            db.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("messages", "connections")
        )
    finally:
        db.close()


def label_sets(samples: Samples, name: str) -> set[tuple[tuple[str, str], ...]]:
    return {labels for sample_name, labels in samples if sample_name == name}


async def test_scrape_shows_counters_moving_after_a_publish(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(20):
        before = await scrape(gw)
        assert value(before, "catsock_published_total") == 0
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            during = await scrape(gw)
            assert value(during, "catsock_connections", client_type="CATS") == 1
            assert value(during, "catsock_connections", client_type="AFAD") == 1
            assert value(during, "catsock_connections", client_type="DASHBOARD") == 0
            await cats.send(envelope("conversion", CONVERSION, "CATS", "m-1"))
            assert (await afad.recv())["message_id"] == "m-1"
            await gw.gateway.log.flush()  # every log row recorded so far is written
            after = await scrape(gw)
            rows = _log_rows(gw)
    assert value(after, "catsock_published_total") == 1
    assert value(after, "catsock_messages_in_total", type="conversion") == 1
    assert value(after, "catsock_messages_in_total", type="auth") == 2
    assert value(after, "catsock_messages_out_total", type="auth_success") == 2
    assert value(after, "catsock_deliveries_total") == 3  # two auth_success, one conversion
    assert value(after, "catsock_connections_accepted_total") == 2
    # The log writer's numbers: nothing pending after the flush, and what it says it
    # wrote is what a separate connection finds in the database.
    assert value(after, "catsock_log_pending_rows") == 0
    assert value(after, "catsock_log_written_rows_total") == rows
    assert value(after, "catsock_log_last_commit_seconds") > 0


async def test_label_sets_stay_bounded_whatever_clients_send(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            await cats.send(envelope("conversion", CONVERSION, "CATS", "m-0"))
            first = await scrape(gw)
            for i in range(50):
                await cats.send(envelope(f"made_up_{i}", {}, "CATS", str(uuid.uuid4())))
                error = await cats.recv()
                assert error["payload"]["error_code"] == "UNKNOWN_TYPE"
            for i in range(20):  # unknown paths are one label value, "other"
                assert (await http(gw.port, "GET", f"/random/{i}")).status == 404
            second = await scrape(gw)
            for i in range(20):
                await http(gw.port, "GET", f"/more/{i}")
            third = await scrape(gw)
    for name in (
        "catsock_messages_in_total",
        "catsock_messages_out_total",
        "catsock_errors_total",
        "catsock_connections",
    ):
        assert label_sets(first, name) == label_sets(second, name), name
    assert label_sets(second, "catsock_http_requests_total") == label_sets(
        third, "catsock_http_requests_total"
    )
    assert value(second, "catsock_messages_in_total", type="other") == 50
    assert value(second, "catsock_errors_total", code="UNKNOWN_TYPE") == 50
    assert {dict(labels)["code"] for labels in label_sets(second, "catsock_errors_total")} == {
        *(code.value for code in ErrorCode),
        "other",
    }
    assert value(third, "catsock_http_requests_total", endpoint="other", status="404") == 40


async def test_rate_limit_rejections_are_counted(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(limits={"rate": {"CATS": {"per_minute": 1.0, "burst": 1}}})
    with trio.fail_after(20):
        async with gw.client("CATS") as cats:
            await cats.send(envelope("conversion", CONVERSION, "CATS", "m-1"))
            await cats.send(envelope("conversion", CONVERSION, "CATS", "m-2"))
            error = await cats.recv()
            assert error["payload"]["error_code"] == "RATE_LIMIT_EXCEEDED"
            samples = await scrape(gw)
    assert value(samples, "catsock_rate_limit_rejections_total") == 1
    assert value(samples, "catsock_errors_total", code="RATE_LIMIT_EXCEEDED") == 1


async def test_each_gateway_has_its_own_registry(start_gateway: GatewayFactory) -> None:
    one = await start_gateway()
    two = await start_gateway()
    with trio.fail_after(20):
        async with one.client("CATS"):
            a = await scrape(one)
            b = await scrape(two)
    assert value(a, "catsock_connections", client_type="CATS") == 1
    assert value(b, "catsock_connections", client_type="CATS") == 0


async def test_http_requests_and_refusals_are_counted(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    with trio.fail_after(20):
        await http(gw.port, "GET", "/health")
        await http(gw.port, "POST", "/health")
        samples = await scrape(gw)
    assert value(samples, "catsock_http_requests_total", endpoint="/health", status="200") == 1
    assert value(samples, "catsock_http_requests_total", endpoint="/health", status="405") == 1
    assert value(samples, "catsock_http_refused_total", reason="head_limits") == 0
    # The scrape itself is counted once it has been answered.
    assert ("catsock_http_requests_total", (("endpoint", "/metrics"), ("status", "200"))) not in (
        samples
    )


async def test_event_log_numbers_are_scraped(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    cats = gw.token("cats", "CATS")
    text = envelope("conversion", CONVERSION, "CATS", "m-1").encode()
    headers = {"authorization": f"Bearer {cats}"}
    with trio.fail_after(20):
        async with gw.client("AFAD") as afad:
            # Live first (a pong comes after its initial replay): an event it read
            # from the log instead has no publish-to-deliver time (CI drew that).
            await afad.send({"type": "ping"})
            assert (await afad.recv())["type"] == "pong"
            reply = await http(gw.port, "POST", "/api/publish", headers=headers, body=text)
            assert reply.status == 202
            await afad.recv()
            await http(gw.port, "POST", "/api/publish", headers=headers, body=text)  # again
            await afad.send({"type": "ping"})
            assert (await afad.recv())["type"] == "pong"
            samples = await scrape(gw)
    seq = reply.json()["seq"]
    assert value(samples, "catsock_events_committed_seq") == seq
    assert value(samples, "catsock_events_committed_total") == 1
    assert value(samples, "catsock_events_duplicates_total") == 1
    assert value(samples, "catsock_events_pending") == 0
    assert value(samples, "catsock_publish_to_deliver_seconds_count") == 1
    assert value(samples, "catsock_publish_to_deliver_seconds_bucket", le="+Inf") == 1
    assert value(samples, "catsock_messages_out_total", type="conversion") == 1


async def test_every_metric_in_the_http_api_doc_is_scraped(start_gateway: GatewayFactory) -> None:
    """docs/http-api.md's metrics table names what /metrics serves, and all of it."""
    table = HTTP_API_DOC[HTTP_API_DOC.index("| metric | type |") :].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(catsock_[a-z_]+)`", table))
    gw = await start_gateway()
    gw.token("afad", "AFAD")  # a durable recipient: the lag gauges have a sample
    with trio.fail_after(10):
        await scrape(gw)  # so that the HTTP request counter has a sample
        samples = await scrape(gw)
    served = {name for name, _labels in samples}
    # A counter's samples are named NAME_total; a histogram's NAME_bucket, _sum, _count.
    families = {re.sub(r"_(bucket|sum|count|created)$", "", name) for name in served}
    assert documented, "no metrics table found in docs/http-api.md"
    missing = documented - families - served
    assert not missing, f"documented but not served: {missing}"
    undocumented = {f for f in families if f.startswith("catsock_")} - documented
    undocumented = {f for f in undocumented if f.removesuffix("_total") not in documented}
    assert not undocumented, f"served but not in docs/http-api.md: {undocumented}"


async def test_abuse_counters_have_fixed_label_sets(start_gateway: GatewayFactory) -> None:
    """Per-address refusals, peer resets and body refusals: every label value is
    there from the start (0), none comes from a peer."""
    gw = await start_gateway()
    with trio.fail_after(10):
        samples = await scrape(gw)

    def labels(name: str, label: str) -> set[str]:
        return {dict(labels)[label] for labels in label_sets(samples, name)}

    assert labels("catsock_peer_resets_total", "stage") == {
        "tls",
        "http",
        "handshake",
        "websocket",
        "other",
    }
    assert labels("catsock_connections_refused_total", "reason") == {
        "ip_not_allowed",
        "max_connections",
        "address_connections",
        "address_unauthenticated",
    }
    assert {"body_limits", "body_timeout"} <= labels("catsock_http_refused_total", "reason")
    for name in (
        "catsock_auth_delayed_total",
        "catsock_auth_lockouts_total",
        "catsock_auth_locked_out_total",
        "catsock_auth_locked_addresses",
    ):
        assert value(samples, name) == 0, name


def slow_lag_reads(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the lag read wait (at the storage boundary, as a database under load
    does) until the returned event is set."""
    release = threading.Event()
    behind = storage.behind

    def slow_behind(*args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        return behind(*args, **kwargs)

    monkeypatch.setattr(storage, "behind", slow_behind)
    return release


async def test_a_slow_lag_read_does_not_hold_up_a_scrape(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The durable recipients' lag is read from the database in a task of its own: a
    scrape waits for it half a second at most, then answers with the last reading
    (issue 19: under load that read took seconds, and /metrics with it). The read is
    made slow at the storage boundary, as a database under load is."""
    gw = await start_gateway()
    gw.token("afad", "AFAD")
    release = slow_lag_reads(monkeypatch)
    try:
        with trio.fail_after(5):
            samples = await scrape(gw)  # answered while the read waits
        assert value(samples, "catsock_recipients_behind") == 0  # no reading yet
        assert gw.gateway.http.lag.rows == []
    finally:
        release.set()
    with trio.fail_after(10):
        while not gw.gateway.http.lag.rows:  # noqa: ASYNC110 (the read's own task fills it)
            await trio.sleep(0.01)
    assert [row["identity"] for row in gw.gateway.http.lag.rows] == ["afad"]


async def test_once_it_has_a_reading_a_scrape_never_waits_for_the_next(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first reading, a scrape answers with the last one at once and leaves
    the new read running (issue 19: under overload a scrape that waited for the read
    was over a second late). Every reading is made stale, and the next read slow."""
    gw = await start_gateway()
    gw.token("afad", "AFAD")
    monkeypatch.setattr(httpapi, "LAG_METRICS_AGE", 0.0)
    with trio.fail_after(10):
        await scrape(gw)  # the first: waits for its reading
    assert [row["identity"] for row in gw.gateway.http.lag.rows] == ["afad"]
    release = slow_lag_reads(monkeypatch)
    answered: list[Samples] = []
    try:
        async with trio.open_nursery() as nursery:

            async def scrape_once() -> None:
                answered.append(await scrape(gw))

            nursery.start_soon(scrape_once)
            # Everything is blocked: the read on its thread, and the scrape, unless
            # it was answered already.
            await trio.testing.wait_all_tasks_blocked()
            assert answered, "the scrape waited for the slow read"
            assert value(answered[0], "catsock_recipients_behind") == 0  # the last reading
    finally:
        release.set()
