"""Fixtures of the cluster tests: a real redis-server per test (tests/cluster/redisserver.py).

Tests here skip, saying how to install it, where ``redis-server`` is missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cluster.redisserver import MISSING, RedisServer, redis_server_binary


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A fresh redis-server (AOF off) on a free loopback port, stopped after the test."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip(MISSING)
    server = RedisServer(binary, tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def redis_aof(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """Like ``redis``, with AOF on (appendfsync always)."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip(MISSING)
    server = RedisServer(binary, tmp_path / "redis-aof", appendonly=True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
