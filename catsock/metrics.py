"""Prometheus metrics, read from the gateway's own counters at scrape time.

Nothing on the message path touches prometheus-client: the gateway counts in
plain ints (``GatewayStats``, ``LogSink.statistics()``, the front door's and the
HTTP API's counters) and ``GatewayCollector`` turns them into metric families
when ``/metrics`` is scraped. Each gateway has its own ``CollectorRegistry``
(several gateways share a process in the tests).

Every label value comes from a closed set: client types the configuration
knows, event types in the registry plus control types, ``ErrorCode`` values,
HTTP endpoints in the route table. Anything else is counted as ``other``, so no
peer can grow the number of series (seed 004 leaked memory that way). In cluster
mode every series also carries ``node`` (``Gateway.node_name``), one value per process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from protocol import CONTROL_TYPES, ErrorCode

from .entries import PRIORITY_NAMES
from .lag import LAG_CAP, worst

#: Where a peer can reset or leave (``GatewayStats.peer_resets``'s keys).
PEER_STAGES = ("tls", "http", "handshake", "websocket", "other")

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .guard import GuardStatistics
    from .server import Gateway

__all__ = ["CONTENT_TYPE", "GatewayCollector", "new_registry", "render"]

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
#: Recipients with a series of their own in the lag gauges (the furthest behind).
LAG_WORST = 10
OTHER = "other"
UNAUTHENTICATED = "unauthenticated"


def new_registry(gateway: Gateway) -> prometheus_client.CollectorRegistry:
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    return registry


def render(registry: prometheus_client.CollectorRegistry) -> bytes:
    return prometheus_client.generate_latest(registry)


def bounded(counts: Mapping[str, int], known: Iterable[str]) -> dict[str, int]:
    """``counts`` with every key of ``known`` (0 if absent) and the rest summed as other."""
    out = dict.fromkeys(known, 0)
    other = 0
    for key, value in counts.items():
        if key in out:
            out[key] += value
        else:
            other += value
    out[OTHER] = other
    return out


def client_types(gateway: Gateway) -> list[str]:
    """The client types the configuration knows (the same set the gateway accepts
    shared tokens for): the defaults and every type named in a route."""
    known = {"CATS", "AFAD", "DASHBOARD"}
    for route in gateway.machine_config.routing.values():
        known |= route.senders | set(route.to_types)
    return sorted(known)


def message_types(gateway: Gateway) -> list[str]:
    return sorted({*gateway.codec.registry, *CONTROL_TYPES})


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        # Cluster mode: every series says which node it counts (docs/operations.md).
        node = getattr(self.gateway, "node_name", None)
        for family in self._collect():
            if node is not None:
                family.samples = [
                    sample._replace(labels={**sample.labels, "node": node})
                    for sample in family.samples
                ]
            yield family

    def _collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        stats = gateway.statistics()
        yield from self._connections()
        yield _counter(
            "catsock_connections_accepted", "WebSocket connections accepted.", stats.accepted
        )
        guard = gateway.guard.statistics()
        refused = CounterMetricFamily(
            "catsock_connections_refused",
            "Connections refused before they were served, by reason.",
            labels=["reason"],
        )
        refused.add_metric(["ip_not_allowed"], stats.refused_ip)
        refused.add_metric(["max_connections"], stats.refused_full)
        refused.add_metric(["address_connections"], guard.refused_connections)
        refused.add_metric(["address_unauthenticated"], guard.refused_unauthenticated)
        yield refused
        yield _counter("catsock_auth_failures", "Refused tokens.", stats.auth_failures)
        yield from _auth_throttle(guard)
        yield from self._peer_resets()
        types = message_types(gateway)
        for direction, counts, text in (
            ("in", stats.messages_in, "Messages received from clients, by type."),
            ("out", stats.messages_out, "Messages queued for clients, by type."),
        ):
            family = CounterMetricFamily(f"catsock_messages_{direction}", text, labels=["type"])
            for type_, value in bounded(counts, types).items():
                family.add_metric([type_], value)
            yield family
        yield _counter("catsock_published", "Events accepted for delivery.", stats.published)
        yield _counter(
            "catsock_deliveries", "Frames written to WebSocket clients.", stats.delivered
        )
        errors = CounterMetricFamily(
            "catsock_errors", "error messages sent to clients, by error code.", labels=["code"]
        )
        by_code = bounded(stats.errors, (code.value for code in ErrorCode))
        for code, value in by_code.items():
            errors.add_metric([code], value)
        yield errors
        refused = CounterMetricFamily(
            "catsock_refused_events",
            "Events refused from authenticated publishers and kept in the refused store"
            " (python -m catsock refused), by reason.",
            labels=["reason"],
        )
        for reason, value in bounded(stats.refused, (code.value for code in ErrorCode)).items():
            refused.add_metric([reason], value)
        yield refused
        yield _counter(
            "catsock_rate_limit_rejections",
            "Messages refused with RATE_LIMIT_EXCEEDED.",
            by_code[ErrorCode.RATE_LIMIT_EXCEEDED.value],
        )
        yield _counter(
            "catsock_slow_consumer_disconnects",
            "Connections closed because their send queue overflowed (close 4001).",
            stats.slow_consumers,
        )
        yield _counter(
            "catsock_internal_errors",
            "Connections ended by a fault of the gateway (never by a peer's behaviour).",
            stats.internal_errors,
        )
        depths = [conn.queued for conn in gateway.connections]
        yield _gauge("catsock_send_queue_frames", "Frames waiting in all send queues.", sum(depths))
        yield _gauge(
            "catsock_send_queue_max_frames",
            "Frames waiting in the longest send queue.",
            max(depths, default=0),
        )
        yield from self._log_sink()
        yield from self._http()
        yield from self._backlog()
        yield from self._delivery()
        yield from self._lag()

    def _peer_resets(self) -> Iterator[Metric]:
        gateway = self.gateway
        counts = dict(gateway.stats.peer_resets)
        http = getattr(gateway, "http", None)
        if http is not None:
            counts["http"] = counts.get("http", 0) + http.front_door.stats.peer_resets
        family = CounterMetricFamily(
            "catsock_peer_resets",
            "Connections the peer reset, half-closed or left, by stage.",
            labels=["stage"],
        )
        for stage in PEER_STAGES:
            family.add_metric([stage], counts.get(stage, 0))
        yield family

    def _connections(self) -> Iterator[Metric]:
        gateway = self.gateway
        counts = {t: n for t, n in gateway.by_type.items() if n}
        counts[UNAUTHENTICATED] = len(gateway.connections) - sum(counts.values())
        family = GaugeMetricFamily(
            "catsock_connections",
            "Open WebSocket connections, by client type.",
            labels=["client_type"],
        )
        for client_type, value in bounded(
            counts, [*client_types(self.gateway), UNAUTHENTICATED]
        ).items():
            family.add_metric([client_type], value)
        yield family

    def _log_sink(self) -> Iterator[Metric]:
        log = self.gateway.log.statistics()
        yield _gauge("catsock_log_pending_rows", "Log rows waiting to be written.", log.pending)
        yield _counter("catsock_log_written_rows", "Log rows committed.", log.written)
        yield _counter(
            "catsock_log_dropped_rows",
            "Log rows dropped (buffer full or a failed batch).",
            log.dropped,
        )
        yield _counter("catsock_log_errors", "Failed log database operations.", log.errors)
        yield _counter("catsock_log_batches", "Log batches committed.", log.batches)
        yield _gauge(
            "catsock_log_last_batch_rows",
            "Rows in the last committed log batch.",
            log.last_batch_size,
        )
        yield _gauge(
            "catsock_log_last_commit_seconds",
            "How long the last log batch took to commit.",
            log.last_commit_seconds,
        )

    def _http(self) -> Iterator[Metric]:
        http = getattr(self.gateway, "http", None)
        if http is None:
            return
        requests = CounterMetricFamily(
            "catsock_http_requests",
            "Plain HTTP requests answered, by endpoint and status.",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), value in sorted(http.stats.requests.items()):
            requests.add_metric([endpoint, str(status)], value)
        yield requests
        door = http.front_door.stats
        refused = CounterMetricFamily(
            "catsock_http_refused",
            "HTTP requests cut off before a handler saw them, by reason.",
            labels=["reason"],
        )
        refused.add_metric(["head_limits"], door.heads_refused)
        refused.add_metric(["head_timeout"], door.heads_timed_out)
        refused.add_metric(["body_limits"], door.bodies_refused)
        refused.add_metric(["body_timeout"], door.bodies_timed_out)
        refused.add_metric(["max_connections"], door.http_refused_full)
        yield refused
        yield _gauge(
            "catsock_http_connections",
            "Connections being served as plain HTTP.",
            http.front_door.open_http,
        )

    def _backlog(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "catsock_backlog_events",
            "Events queued for connections and not yet written, by priority"
            " (each recipient's copy counts once).",
            labels=["priority"],
        )
        backlog = self.gateway.stats.backlog
        for level, name in PRIORITY_NAMES.items():
            family.add_metric([name], backlog[level])
        yield family

    def _lag(self) -> Iterator[Metric]:
        """The ``LAG_WORST`` recipients furthest behind, each with its own label, and
        totals over all: the series stay bounded however many recipients there are."""
        watch = getattr(getattr(self.gateway, "http", None), "lag", None)
        if watch is None:
            return
        rows = watch.rows
        events = GaugeMetricFamily(
            "catsock_recipient_lag_events",
            f"Events a durable recipient has not acked or been written (at most {LAG_CAP}),"
            f" for the {LAG_WORST} recipients furthest behind.",
            labels=["recipient"],
        )
        seconds = GaugeMetricFamily(
            "catsock_recipient_lag_seconds",
            "Age of the oldest event a durable recipient has not acked or been written,"
            f" for the {LAG_WORST} recipients furthest behind.",
            labels=["recipient"],
        )
        for row in worst(rows, LAG_WORST):
            events.add_metric([row["identity"]], row["lag_events"])
            seconds.add_metric([row["identity"]], row["lag_seconds"] or 0.0)
        yield events
        yield seconds
        yield _gauge(
            "catsock_recipients_lag_events",
            "Events durable recipients have not had, summed over all of them.",
            sum(r["lag_events"] for r in rows),
        )
        yield _gauge(
            "catsock_recipients_behind",
            "Durable recipients with at least one event they have not had.",
            sum(1 for r in rows if r["lag_events"]),
        )
        yield _gauge(
            "catsock_recipients_max_lag_seconds",
            "Age of the oldest event any durable recipient has not had.",
            max((r["lag_seconds"] or 0.0 for r in rows), default=0.0),
        )

    def _delivery(self) -> Iterator[Metric]:
        delivery = getattr(self.gateway, "delivery", None)
        statistics = getattr(delivery, "statistics", None)
        if statistics is None:
            return
        yield from delivery_metrics(statistics())


def _auth_throttle(guard: GuardStatistics) -> Iterator[Metric]:
    """Failed-auth throttling per address (catsock/guard.py)."""
    yield _counter(
        "catsock_auth_delayed",
        "Failed authentications answered after a delay (the address failed often).",
        guard.auth_delayed,
    )
    yield _counter(
        "catsock_auth_lockouts",
        "Times an address was locked out after too many failed authentications.",
        guard.auth_lockouts,
    )
    yield _counter(
        "catsock_auth_locked_out",
        "Authentications refused unchecked because their address was locked out.",
        guard.auth_refused_locked,
    )
    yield _gauge(
        "catsock_auth_locked_addresses", "Addresses locked out now.", guard.locked_addresses
    )


def delivery_metrics(stats: Any) -> Iterator[Metric]:
    """The event log's numbers (``gateway.delivery.statistics()``, catsock/delivery.py)."""
    yield _gauge("catsock_events_committed_seq", "The newest committed seq.", stats.head)
    yield _gauge("catsock_events_pending", "Events accepted but not yet committed.", stats.pending)
    yield _counter("catsock_events_committed", "Events committed to the log.", stats.committed)
    yield _counter("catsock_events_batches", "Event log batches committed.", stats.batches)
    yield _gauge(
        "catsock_events_last_batch_size",
        "Events in the last committed batch.",
        stats.last_batch_size,
    )
    yield _gauge(
        "catsock_events_last_commit_seconds",
        "How long the last event batch took to commit.",
        stats.last_commit_seconds,
    )
    yield _counter("catsock_events_commit_errors", "Failed event log commits.", stats.commit_errors)
    yield _counter(
        "catsock_events_duplicates",
        "Publishes refused as repeats of a committed message_id (idempotency).",
        stats.duplicates,
    )
    yield _counter(
        "catsock_events_expired", "Events not delivered because they expired.", stats.expired
    )
    yield _counter(
        "catsock_events_dropped",
        "Events dropped for a recipient (queue full, not durable).",
        stats.dropped,
    )
    yield _counter("catsock_events_replayed", "Events read back from the log.", stats.replayed)
    yield _counter(
        "catsock_events_catchups",
        "Times a recipient fell back to catching up from the log.",
        stats.catchups,
    )
    yield _counter(
        "catsock_events_unconfirmed",
        "Events written to a client without acks that left before taking them in"
        " (sent again when it returns).",
        stats.unconfirmed,
    )
    yield _counter(
        "catsock_events_lost_to_retention",
        "Events pruned (delivery.retention_hard_rows) before every durable recipient had"
        " them; each loss has a dropped ledger row with detail retention.",
        stats.lost_to_retention,
    )
    yield _histogram(
        "catsock_publish_to_deliver_seconds",
        "From a publish being accepted to its frame being written to a recipient.",
        [(_bound(bound), count) for bound, count in stats.latency_buckets],
        stats.latency_sum,
    )
    yield _gauge(
        "catsock_lag_seconds",
        "How far behind the gateway's event loop ran at the last look"
        " (catsock/admission.py).",
        stats.lag,
    )
    yield _gauge(
        "catsock_live_lag_seconds",
        "How long past delivery.live_interval the longest-waiting live-only recipient"
        " has waited for its write (catsock/pacer.py); it sheds, it holds no publisher.",
        stats.live_lag,
    )
    yield _gauge(
        "catsock_live_budget_bytes",
        "Bytes each live-only recipient may be written per round of the pacer while"
        " the gateway runs behind; 0 while there is no such limit (catsock/pacer.py).",
        stats.live_budget or 0,
    )
    yield _gauge(
        "catsock_overloaded",
        "1 while the gateway holds publishers' reads because it runs behind.",
        int(stats.overloaded),
    )
    yield _counter(
        "catsock_overload_episodes", "Times the gateway became overloaded.", stats.overload_episodes
    )
    yield _counter(
        "catsock_overload_seconds",
        "Time spent overloaded (publishers held), ended episodes only.",
        stats.overload_seconds,
    )


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _histogram(
    name: str, documentation: str, buckets: list[tuple[str, float]], total: float
) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)
