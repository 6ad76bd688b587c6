"""Two (or more) real gateway nodes sharing one redis-server, for the cluster tests.

Tokens live in the cluster's credential store in Redis (catsock/eventlog/credentials.py):
``cluster_nodes`` creates them there before the nodes start, and every node reads
them from there; no node's SQLite file holds them. ``shared_tokens`` creates more
(``RunningGateway.token`` writes a node's own file, which cluster mode does not read).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import storage
from catsock.config import ClusterConfig
from catsock.eventlog.credentials import open_credentials
from tests.catsock.harness import GatewayFactory, RunningGateway
from tests.cluster.redisserver import RedisServer

#: The tokens every node knows: name -> client type.
IDENTITIES = {"cats": "CATS", "afad": "AFAD", "dashboard": "DASHBOARD"}


async def shared_tokens(
    redis: RedisServer, identities: Mapping[str, str], **cluster: Any
) -> dict[str, str]:
    """Create tokens (name -> client type) in the cluster's store; name -> token."""
    tokens = {}
    async with open_credentials(ClusterConfig(redis=redis.url, **cluster)) as store:
        for name, client_type in identities.items():
            tokens[name], row = storage.new_credential(name=name, client_type=client_type)
            await store.create(row)
    return tokens


async def cluster_nodes(
    start_gateway: GatewayFactory,
    redis: RedisServer,
    tmp_path: Path,
    count: int = 2,
    **overrides: Any,
) -> list[RunningGateway]:
    cluster = {"redis": redis.url, **overrides.pop("cluster", {})}
    store_settings = {k: v for k, v in cluster.items() if k in ("key_prefix", "timeout")}
    tokens = await shared_tokens(redis, IDENTITIES, **store_settings)
    nodes = []
    for i in range(count):
        path = tmp_path / f"node{i}.db"
        node = await start_gateway(database=str(path), cluster=cluster, **overrides)
        assert node.gateway.shared_log is not None  # cluster mode, not embedded
        node.tokens.update(tokens)
        nodes.append(node)
    return nodes
