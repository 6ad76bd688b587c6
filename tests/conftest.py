"""Shared pytest configuration for the whole catsock test suite.

Test rules (every test in tests/ follows them):

- Network tests use the loopback interface only and bind port 0, letting the
  OS pick a free port; no test depends on a fixed port or on the outside world.
- Every test that does I/O runs under ``trio.fail_after(...)``, so a hang is a
  failure with a traceback, not a stuck CI job.
- Anything timed (heartbeats, deadlines, retries, rate limits) runs on a fake
  clock: ``trio.testing.MockClock`` in trio tests, an injected clock function in
  sans-IO code. Where worker threads run (a gateway, the log writer, SQLite), not
  the plain ``autojump_clock``, which jumps while a thread works: the
  thread-aware ``lazy_clock`` (tests/clocks.py), or a clock the test moves by hand
  with ``wait_quiet`` between moves. No bound on real time (``took < 1.0``).
- Never ``sleep`` to wait for a condition: wait on the event, the channel or
  the state change itself (``trio.testing.wait_all_tasks_blocked`` at most).
- Storage tests use real SQLite files under ``tmp_path``, not ``:memory:``
  stand-ins, so WAL mode, file locking and migrations run as in production.
- No mocks where the real part can run: use the real codec, state machine,
  database and loopback sockets; fake only clocks and the outside world.
- A test fails if catsock had an internal error it did not declare: a gateway's
  crashed connection or HTTP handler, a client's crashed event handler, a
  traceback in a gateway process's stderr (tests/internal_errors.py). Declare the
  ones a test provokes with ``@pytest.mark.expect_internal_errors(PATTERN)``.

Hypothesis profiles: ``dev`` (default, 100 examples) and ``ci`` (500 examples,
prints the reproduction blob). Pick one with ``HYPOTHESIS_PROFILE=ci``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings

from tests.catsock.harness import GatewayFactory
from tests.clocks import thread_aware_clock
from tests.internal_errors import InternalErrors

settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


#: Tests that provoke an internal error on purpose but do not carry the marker yet
#: (by node id): each entry belongs on its test as
#: ``@pytest.mark.expect_internal_errors(...)``, and goes from here when it is there.
DECLARED_HERE: dict[str, tuple[str, ...]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "expect_internal_errors(*patterns, count=None): internal errors the test provokes "
        "on purpose (regular expressions; tests/internal_errors.py)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        patterns = DECLARED_HERE.get(item.nodeid.split("[", 1)[0])
        if patterns is not None:
            item.add_marker(pytest.mark.expect_internal_errors(*patterns))


@pytest.fixture(autouse=True)
def internal_errors(request: pytest.FixtureRequest) -> Iterator[InternalErrors]:
    """Fails the test at teardown on any internal error it did not declare."""
    watch = InternalErrors()
    for marker in request.node.iter_markers("expect_internal_errors"):
        for pattern in marker.args:
            watch.expect(pattern, count=marker.kwargs.get("count"))
    logger = logging.getLogger("catsock")
    old_level = logger.level
    # INFO, so that a record saying "internal error" is seen whatever its level.
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(watch.log)
    try:
        yield watch
    finally:
        logger.removeHandler(watch.log)
        logger.setLevel(old_level)
    problems = watch.problems()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def lazy_clock(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """A fake clock for gateway tests: it jumps only after 0.1 s of real idleness,
    and never while a worker thread runs (tests/clocks.py).

    The plain ``autojump_clock`` jumps whenever every task waits, which includes
    waiting for the gateway's worker threads (SQLite), so fake time could race
    to a test's own deadline mid-exchange. The periodic credential refresh and WAL
    checkpoint are stretched so hours of fake idleness take a handful of jumps.
    """
    monkeypatch.setattr("catsock.server.CREDENTIAL_REFRESH", 24 * 3600.0)
    monkeypatch.setattr("catsock.checkpoints.CHECKPOINT_EVERY", 24 * 3600.0)
    return thread_aware_clock(0.1)


@pytest.fixture
def start_gateway(
    nursery: trio.Nursery, tmp_path: Path, internal_errors: InternalErrors
) -> GatewayFactory:
    """``gw = await start_gateway(limits={"send_queue": 5})``: a gateway on a free port
    (tests/catsock/harness.py); shared by the runtime and interop tests."""
    return GatewayFactory(nursery, tmp_path, internal_errors)
