"""The CLI in cluster mode, as real ``python -m catsock`` subprocesses.

With ``CATSOCK_CLUSTER__REDIS`` set, ``refused`` and ``ledger`` read the cluster's
Redis, whichever node's file ``CATSOCK_DATABASE`` names; ``logs`` says it reads
one node's file; ``config`` says which Redis and whether it answers. With Redis
stopped each says so in one ``Error:`` line (exit 1), never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.catsock.harness import GatewayFactory
from tests.catsock.test_delivery import ACKS, ACKS_RESUME, conversion, until_pong
from tests.catsock.test_serve import Result, cli_env, run_cli
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer
from tests.cluster.test_cluster_views import NOT_ALLOWED, listed, refuse_on


def one_error(result: Result) -> str:
    assert result.code == 1, result
    assert "Traceback" not in result.err, result.err
    (line,) = result.err.strip().splitlines()
    assert line.startswith("Error: cluster.redis: cannot reach Redis at "), line
    return line


async def test_refused_lists_a_refusal_made_on_another_node(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    env = cli_env(b.database, CATSOCK_CLUSTER__REDIS=redis.url)
    with trio.fail_after(60):
        await refuse_on(a)
        await listed(b)  # stored in Redis
        result = await run_cli("refused", "--json", cwd=tmp_path, env=env)
    assert result.code == 0, result
    (row,) = [json.loads(line) for line in result.out.splitlines()]
    assert (row["identity"], row["reason"], row["message_id"], row["body"]) == (
        "dashboard", "EVENT_NOT_ALLOWED", "not-allowed-1", NOT_ALLOWED,
    )  # fmt: skip
    assert f"from Redis at {redis.url}" in result.err
    # Node B's own file holds none: --local says so.
    local = await run_cli("refused", "--local", "--json", cwd=tmp_path, env=env)
    assert (local.code, local.out) == (0, "")


async def test_ledger_shows_a_delivery_made_on_another_node(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    env = cli_env(a.database, CATSOCK_CLUSTER__REDIS=redis.url)
    with trio.fail_after(60):
        async with b.client("AFAD", "afad", extensions=ACKS_RESUME) as afad:
            async with a.client("CATS", "cats", extensions=ACKS) as cats:
                await cats.send(conversion("l-1"))
                accepted = await cats.recv()
                assert accepted["type"] == "accepted", accepted
            got = json.loads(await afad.recv_text())
            await afad.send({"type": "ack", "seq": got["seq"]})
            assert await until_pong(afad) == []
        await b.gateway.delivery.flush()  # its ledger rows are in Redis
        result = await run_cli("ledger", "l-1", "--recipient", "afad", cwd=tmp_path, env=env)
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0] == "message l-1"
    assert lines[1].startswith(f"  seq {accepted['seq']}: conversion from cats (conn_")
    assert "  afad:" in lines
    facts = lines[lines.index("  afad:") + 1 :]
    assert any(f.startswith("    written to conn_") for f in facts), result.out
    assert any(f.startswith("    acked on conn_") for f in facts), result.out
    assert "the shared log at Redis" in result.err


async def test_logs_and_config_say_what_they_read(redis: RedisServer, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "node.db", CATSOCK_CLUSTER__REDIS=redis.url)
    with trio.fail_after(60):
        logs = await run_cli("logs", cwd=tmp_path, env=env)
        config = await run_cli("config", cwd=tmp_path, env=env)
        await redis.stop()
        down = await run_cli("config", cwd=tmp_path, env=env)
        refused = await run_cli("refused", cwd=tmp_path, env=env)
        ledger = await run_cli("ledger", "x-1", cwd=tmp_path, env=env)
    assert logs.code == 0, logs
    assert f"these are from {tmp_path / 'node.db'} only" in logs.err
    assert config.code == 0, config
    assert config.out.rstrip().endswith(f"# cluster mode: Redis at {redis.url}, reachable")
    assert down.code == 0, down
    last = down.out.rstrip().splitlines()[-1]
    assert last.startswith(f"# cluster mode: Redis at {redis.url}, NOT reachable: "), last
    one_error(refused)
    one_error(ledger)


async def test_config_never_prints_the_redis_password(tmp_path: Path) -> None:
    url = "redis://user:s3cret@127.0.0.1:1/0"
    env = cli_env(tmp_path / "node.db", CATSOCK_CLUSTER__REDIS=url)
    with trio.fail_after(60):
        result = await run_cli("config", cwd=tmp_path, env=env)
    assert result.code == 0, result
    assert "s3cret" not in result.out + result.err
    assert "redis://user:***@127.0.0.1:1/0, NOT reachable" in result.out
