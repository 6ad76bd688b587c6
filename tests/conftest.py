"""Shared pytest configuration for the whole catsock test suite.

Test rules (every test in tests/ follows them):

- Network tests use the loopback interface only and bind port 0, letting the
  OS pick a free port; no test depends on a fixed port or on the outside world.
- Every test that does I/O runs under ``trio.fail_after(...)``, so a hang is a
  failure with a traceback, not a stuck CI job.
- Anything timed (heartbeats, deadlines, retries, rate limits) runs on a fake
  clock: ``trio.testing.MockClock`` / the ``autojump_clock`` fixture in trio
  tests, an injected clock function in sans-IO code.
- Never ``sleep`` to wait for a condition: wait on the event, the channel or
  the state change itself (``trio.testing.wait_all_tasks_blocked`` at most).
- Storage tests use real SQLite files under ``tmp_path``, not ``:memory:``
  stand-ins, so WAL mode, file locking and migrations run as in production.
- No mocks where the real part can run: use the real codec, state machine,
  database and loopback sockets; fake only clocks and the outside world.

Hypothesis profiles: ``dev`` (default, 100 examples) and ``ci`` (500 examples,
prints the reproduction blob). Pick one with ``HYPOTHESIS_PROFILE=ci``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, settings

from tests.catsock.harness import GatewayFactory

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


@pytest.fixture
def start_gateway(nursery: trio.Nursery, tmp_path: Path) -> GatewayFactory:
    """``gw = await start_gateway(limits={"send_queue": 5})``: a gateway on a free port
    (tests/catsock/harness.py); shared by the runtime and interop tests."""
    return GatewayFactory(nursery, tmp_path)
