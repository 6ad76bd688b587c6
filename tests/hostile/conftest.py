"""The arena: a live gateway, a canary measuring it, and the gateway's log under watch.

``async with arena.attack(**config_overrides) as target:`` starts a gateway
(the ``start_gateway`` fixture, tests/catsock/harness.py), connects the canary
(canary.py) and captures every record of the ``catsock`` loggers. The body is
the attack. On leaving, the canary stops and the test fails unless

- every canary event arrived at the AFAD, in order, exactly once, and neither
  canary client met an error or a close;
- the gateway logged no traceback and nothing at ERROR or above;
- ``stats.internal_errors`` is 0.

The canary's maximum latency is reported (``record_property`` and the summary
at the end of the run), never asserted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import pytest
import trio

import storage
from tests.catsock.harness import GatewayFactory, RunningGateway

from .canary import PREFIX, Canary, CanaryReport

#: Canary results by test id, for the summary at the end of the run.
RESULTS: dict[str, CanaryReport] = {}


@attrs.define
class Target:
    """The attacked gateway, and what it logged so far."""

    gw: RunningGateway
    records: list[logging.LogRecord]

    @property
    def port(self) -> int:
        return self.gw.port

    @property
    def gateway(self) -> Any:
        return self.gw.gateway

    async def token(self, name: str, client_type: str, user_id: str | None = None) -> str:
        """A new token, already in the gateway's credential cache: several first
        auths of a token the cache lacks race each other (see test_auth_attacks)."""
        token = self.gw.token(name, client_type, user_id)
        await self.gw.gateway.auth.refresh()
        return token

    def logged(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def capture_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of the ``catsock`` loggers, DEBUG and up, while inside."""
    handler = _Capture()
    root = logging.getLogger("catsock")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


class Arena:
    def __init__(self, start_gateway: GatewayFactory, request: pytest.FixtureRequest) -> None:
        self._start_gateway = start_gateway
        self._request = request

    @asynccontextmanager
    async def attack(self, **overrides: Any) -> AsyncIterator[Target]:
        gw = await self._start_gateway(**overrides)
        canary = Canary(gw.port, gw.token("canary-cats", "CATS"), gw.token("canary-afad", "AFAD"))
        with capture_logs() as records:
            await canary.start()
            try:
                yield Target(gw, records)
            finally:
                report = await canary.stop()
        self._report(report)
        problems = report.failures()
        if report.lost:
            problems += await trio.to_thread.run_sync(_trace_lost, gw, report)
            stats = gw.gateway.stats
            problems.append(
                f"  the gateway counted {stats.messages_in.get('conversion', 0)} conversions"
                f" in, {stats.published} published; it logged: "
                + "; ".join(f"{r.levelname} {r.getMessage()}" for r in records[-20:])
            )
        for record in records:
            if record.exc_info or record.levelno >= logging.ERROR:
                problems.append(f"gateway logged {record.levelname}: {record.getMessage()}")
        internal = gw.gateway.stats.internal_errors
        if internal:
            problems.append(f"stats.internal_errors = {internal}")
        assert not problems, "\n".join(problems)

    def _report(self, report: CanaryReport) -> None:
        node = self._request.node
        RESULTS[node.nodeid] = report
        node.user_properties.append(("canary_sent", report.sent))
        node.user_properties.append(("canary_lost", report.lost))
        node.user_properties.append(("canary_max_latency_ms", round(report.max_latency * 1000)))
        print(
            f"canary: {report.sent} sent, {report.lost} lost, "
            f"max latency {report.max_latency * 1000:.0f} ms"
        )


def _trace_lost(gw: RunningGateway, report: CanaryReport) -> list[str]:
    """Where lost canary events got to: the event log, and the AFAD's ledger."""
    lost = sorted(set(range(report.sent)) - set(report.received))[:5]
    db = storage.open_db(gw.database)
    try:
        out = []
        for n in lost:
            rows = storage.events_by_message_id(db, f"{PREFIX}{n}")
            if not rows:
                out.append(f"  {PREFIX}{n}: not in the event log")
                continue
            seq = rows[0]["seq"]
            ledger = storage.ledger_rows(db, seq, "canary-afad")
            kinds = [(r["kind"], r["first_seq"], r["last_seq"]) for r in ledger]
            out.append(f"  {PREFIX}{n}: seq {seq}, canary-afad ledger {kinds}")
        (rows, canary, head) = db.execute(
            "SELECT count(*), sum(message_id LIKE 'canary-%'), max(seq) FROM events"
        ).fetchone()
        out.append(f"  the event log holds {rows} events ({canary} of the canary), head {head}")
        return out
    finally:
        db.close()


@pytest.fixture
def arena(start_gateway: GatewayFactory, request: pytest.FixtureRequest) -> Arena:
    return Arena(start_gateway, request)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("hostile: canary per attack")
    for nodeid, report in RESULTS.items():
        name = nodeid.split("tests/hostile/", 1)[-1]
        terminalreporter.write_line(
            f"{report.max_latency * 1000:7.0f} ms max  {report.sent:4d} sent "
            f"{report.lost:4d} lost  {name}"
        )
