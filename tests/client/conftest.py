"""Fixtures of the runtime suite: a gateway in a thread, and the runtime to test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.internal_errors import InternalErrors

from .drivers import RUNTIMES
from .gateway import GatewayThread


@pytest.fixture
def gateway(tmp_path: Path, internal_errors: InternalErrors) -> Iterator[GatewayThread]:
    gw = GatewayThread(tmp_path, internal_errors)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    runtime: str = request.param
    return runtime
