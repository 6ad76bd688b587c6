"""Fixtures for runtime tests: see harness.py for what they provide."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.clocks import thread_aware_clock


@pytest.fixture
def lazy_clock(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """A fake clock for gateway tests: it jumps only after 0.1 s of real idleness,
    and never while a worker thread runs (tests/clocks.py).

    The plain ``autojump_clock`` jumps whenever every task waits, which includes
    waiting for the gateway's worker threads (SQLite), so fake time could race
    to a test's own deadline mid-exchange. The periodic credential refresh is
    stretched so hours of fake idleness take a handful of jumps.
    """
    monkeypatch.setattr("catsock.server.CREDENTIAL_REFRESH", 24 * 3600.0)
    return thread_aware_clock(0.1)
