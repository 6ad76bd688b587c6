"""Two (or more) real gateway nodes sharing one redis-server, for the cluster tests.

Credentials are not shared through Redis yet (docs/scaling.md): each node has its
own SQLite file, and ``cluster_nodes`` creates the tokens once and copies their
rows (hashed, as stored) into every node's file before the nodes start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import storage
from tests.catsock.harness import GatewayFactory, RunningGateway
from tests.cluster.redisserver import RedisServer

#: The tokens every node knows: name -> client type.
IDENTITIES = {"cats": "CATS", "afad": "AFAD", "dashboard": "DASHBOARD"}


async def cluster_nodes(
    start_gateway: GatewayFactory,
    redis: RedisServer,
    tmp_path: Path,
    count: int = 2,
    **overrides: Any,
) -> list[RunningGateway]:
    paths = [tmp_path / f"node{i}.db" for i in range(count)]
    first = storage.open_db(paths[0])
    try:
        tokens = {
            name: storage.create_token(first, name=name, client_type=client_type)
            for name, client_type in IDENTITIES.items()
        }
        rows = list(first["credentials"].rows)
    finally:
        first.close()
    for path in paths[1:]:
        db = storage.open_db(path)
        try:
            db["credentials"].insert_all(rows)
        finally:
            db.close()
    nodes = []
    cluster = {"redis": redis.url, **overrides.pop("cluster", {})}
    for path in paths:
        node = await start_gateway(database=str(path), cluster=cluster, **overrides)
        assert node.gateway.shared_log is not None  # cluster mode, not embedded
        node.tokens.update(tokens)
        nodes.append(node)
    return nodes
