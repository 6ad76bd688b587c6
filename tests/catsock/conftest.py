"""Fixtures for runtime tests: see harness.py for what they provide."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from .harness import GatewayFactory


@pytest.fixture
def start_gateway(nursery: trio.Nursery, tmp_path: Path) -> GatewayFactory:
    """``gw = await start_gateway(limits={"send_queue": 5})``: a gateway on a free port."""
    return GatewayFactory(nursery, tmp_path)
