"""Tokens and revocations shared through Redis (docs/scaling.md, "What is shared").

The ``token`` CLI runs as a real ``python -m catsock`` process with
``CATSOCK_CLUSTER__REDIS`` and no database of any node; the nodes are real
gateways in this process over a real redis-server. Revocations are waited for
with a generous deadline; the time they took is printed, not asserted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import coredis
import pytest
import trio

import storage
from catsock.jwtauth import mint
from tests.catsock.harness import Client, GatewayFactory, RunningGateway
from tests.catsock.test_adminapi import call
from tests.catsock.test_guard_gateway import wait_until
from tests.catsock.test_serve import cli_env, run_cli
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer

SECRET = "s" * 40


def cli(tmp_path: Path, redis: RedisServer, **extra: str) -> dict[str, str]:
    """The CLI's environment: the cluster's Redis, a database no node uses."""
    return cli_env(tmp_path / "cli.db", CATSOCK_CLUSTER__REDIS=redis.url, **extra)


async def login(node: RunningGateway, token: str, client_type: str) -> dict[str, object]:
    async with node.connect() as client:
        await client.send({"type": "auth", "token": token, "client_type": client_type})
        return await client.recv()


async def cut(client: Client, started: float, where: str) -> None:
    code = await client.closed_code()
    print(f"{where}: closed {code} {time.monotonic() - started:.2f} s after the revoke returned")
    assert code == 1008
    assert client.ws.closed is not None
    assert client.ws.closed.reason == "token revoked"


async def test_a_token_made_by_the_cli_works_on_both_nodes_and_no_node_file_has_it(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    env = cli(tmp_path, redis)
    with trio.fail_after(60):
        made = await run_cli(
            "token", "create", "--client-type", "AFAD", "--name", "afad-cli", cwd=tmp_path, env=env
        )
        assert made.code == 0, made
        token = made.out.strip()
        # At once, on both: a token a node does not know makes it look again.
        for node in (a, b):
            reply = await login(node, token, "AFAD")
            assert reply["type"] == "auth_success", reply
        listed = await run_cli("token", "list", cwd=tmp_path, env=env)
        assert listed.code == 0, listed
        assert "afad-cli" in listed.out
    for node in (a, b):
        db = storage.open_db(node.database)
        try:
            assert "afad-cli" not in {c.name for c in storage.list_tokens(db)}
        finally:
            db.close()


async def test_a_cli_revoke_cuts_the_token_on_both_nodes_and_refuses_it_after(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    env = cli(tmp_path, redis)
    token = a.tokens["afad"]
    with trio.fail_after(60):
        async with (
            a.client("AFAD", "afad") as on_a,
            b.client("AFAD", "afad") as on_b,
            b.client("CATS", "cats") as bystander,
        ):
            revoked = await run_cli("token", "revoke", "afad", cwd=tmp_path, env=env)
            assert revoked.code == 0, revoked
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cut, on_a, started, "node a")
                nursery.start_soon(cut, on_b, started, "node b")
            # Another identity's connection stays.
            await bystander.send({"type": "ping"})
            assert (await bystander.recv())["type"] == "pong"
        for node in (a, b):
            reply = await login(node, token, "AFAD")
            assert reply["type"] == "error", reply
            assert reply["payload"]["error_code"] == "AUTH_FAILED"  # type: ignore[index]
        again = await run_cli("token", "revoke", "afad", cwd=tmp_path, env=env)
        assert again.code == 1
        assert "no active token named 'afad'" in again.err


async def test_an_unknown_token_is_refused_on_every_node(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    nodes = await cluster_nodes(start_gateway, redis, tmp_path)
    with trio.fail_after(30):
        for node in nodes:
            reply = await login(node, "cs_" + "x" * 43, "AFAD")
            assert reply["type"] == "error", reply
            assert reply["payload"]["error_code"] == "AUTH_FAILED"  # type: ignore[index]


async def test_a_jwt_revoked_by_jti_through_the_cli_is_cut_on_both_nodes(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path, jwt={"secret": SECRET})
    config = a.gateway.config.jwt
    token = mint(config, sub="afad-jwt", client_type="AFAD", ttl=3600, jti="jti-1")
    env = cli(tmp_path, redis)
    with trio.fail_after(60):
        async with a.connect() as on_a, b.connect() as on_b:
            for client in (on_a, on_b):
                await client.send({"type": "auth", "token": token, "client_type": "AFAD"})
                assert (await client.recv())["type"] == "auth_success"
            revoked = await run_cli("token", "revoke", "--jti", "jti-1", cwd=tmp_path, env=env)
            assert revoked.code == 0, revoked
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cut, on_a, started, "node a")
                nursery.start_soon(cut, on_b, started, "node b")
        for node in (a, b):
            reply = await login(node, token, "AFAD")
            assert reply["type"] == "error", reply
            assert reply["payload"]["error_message"] == "token revoked"  # type: ignore[index]


async def test_redis_down_the_tokens_in_memory_keep_working_then_the_store_comes_back(
    start_gateway: GatewayFactory,
    redis: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (node,) = await cluster_nodes(
        start_gateway, redis, tmp_path, count=1, cluster={"timeout": 1.0}
    )
    env = cli(tmp_path, redis)

    def warnings(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records if r.name == "catsock.server")

    with trio.fail_after(90):
        async with node.client("DASHBOARD", "dashboard") as held:
            await redis.stop()
            await wait_until(lambda: warnings("cannot read the tokens") > 0)
            # DASHBOARD is not durable: its login reads nothing from the log.
            reply = await login(node, node.tokens["dashboard"], "DASHBOARD")
            assert reply["type"] == "auth_success", reply
            # An unknown token is refused without waiting for Redis.
            reply = await login(node, "cs_" + "y" * 43, "DASHBOARD")
            assert reply["payload"]["error_code"] == "AUTH_FAILED"  # type: ignore[index]
            await held.send({"type": "ping"})
            assert (await held.recv())["type"] == "pong"
            down = await run_cli("token", "list", cwd=tmp_path, env=env)
            assert down.code == 1
            assert "cannot reach Redis at redis://127.0.0.1" in down.err
            assert "Traceback" not in down.err

            # Back without its data (no AOF): the node writes back what it had read,
            # so a revoke through the CLI finds the token and cuts it.
            await redis.start()
            await wait_until(lambda: warnings("reading the tokens again") > 0)
            assert warnings("cannot read the tokens") == 1  # once per outage
            revoked = await run_cli("token", "revoke", "dashboard", cwd=tmp_path, env=env)
            assert revoked.code == 0, revoked
            assert await held.closed_code() == 1008
    assert any("was gone" in r.getMessage() for r in caplog.records)


async def test_a_node_imports_its_local_tokens_into_an_empty_store(
    start_gateway: GatewayFactory,
    redis: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "catsock")
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    db = storage.open_db(first)
    try:
        old = storage.create_token(db, name="old-afad", client_type="AFAD")
        storage.create_token(db, name="gone", client_type="CATS")
        assert storage.revoke_token(db, "gone")
    finally:
        db.close()
    db = storage.open_db(second)
    try:
        second_only = storage.create_token(db, name="second-only", client_type="CATS")
    finally:
        db.close()
    cluster = {"redis": redis.url}
    with trio.fail_after(60):
        a = await start_gateway(database=str(first), cluster=cluster)
        b = await start_gateway(database=str(second), cluster=cluster)
        for node in (a, b):
            reply = await login(node, old, "AFAD")
            assert reply["type"] == "auth_success", reply
        listed = await run_cli("token", "list", cwd=tmp_path, env=cli(tmp_path, redis))
        names = {line.split()[0] for line in listed.out.splitlines()[1:]}
        assert names == {"old-afad", "gone"}  # the revoked row too: names stay taken
        assert any("second-only" in r.getMessage() for r in caplog.records)  # told
        env = cli_env(second, CATSOCK_CLUSTER__REDIS=redis.url)
        imported = await run_cli("token", "import", cwd=tmp_path, env=env)
        assert imported.code == 0, imported
        assert "1 new in the cluster's store" in imported.err
        reply = await login(a, second_only, "CATS")
        assert reply["type"] == "auth_success", reply
        embedded = await run_cli("token", "import", cwd=tmp_path, env=cli_env(second))
        assert embedded.code == 1
        assert "set cluster.redis" in embedded.err


async def test_the_console_creates_on_one_node_and_revokes_on_the_other(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    admin = a.tokens["dashboard"]  # a DASHBOARD token bound to no user is an admin
    with trio.fail_after(60):
        body = {"name": "console-afad", "client_type": "AFAD"}
        reply = await call(a, admin, "POST", "/api/admin/tokens", body)
        assert reply.status == 201, reply.body
        a.tokens["console-afad"] = b.tokens["console-afad"] = reply.json()["token"]
        listed = await call(b, admin, "GET", "/api/admin/tokens")
        assert "console-afad" in {t["name"] for t in listed.json()["tokens"]}
        async with a.client("AFAD", "console-afad") as on_a:
            revoke = {"name": "console-afad"}
            reply = await call(b, admin, "POST", "/api/admin/tokens/revoke", revoke)
            assert reply.status == 200, reply.body
            started = time.monotonic()
            await cut(on_a, started, "node a")
        reply = await call(a, admin, "POST", "/api/admin/tokens/revoke", {"name": "console-afad"})
        assert reply.status == 404


async def test_a_malformed_row_in_the_store_is_skipped_and_the_rest_still_works(
    start_gateway: GatewayFactory,
    redis: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (node,) = await cluster_nodes(start_gateway, redis, tmp_path, count=1)
    env = cli(tmp_path, redis)
    with trio.fail_after(60):
        async with coredis.Redis.from_url(redis.url, decode_responses=True) as client:
            await client.hset("{catsock}:credentials", {"junk": "not json", "odd": "[1, 2]"})
        made = await run_cli(
            "token", "create", "--client-type", "CATS", "--name", "after", cwd=tmp_path, env=env
        )
        assert made.code == 0, made
        reply = await login(node, made.out.strip(), "CATS")
        assert reply["type"] == "auth_success", reply
        reply = await login(node, node.tokens["afad"], "AFAD")
        assert reply["type"] == "auth_success", reply
        revoke = await run_cli("token", "revoke", "junk", cwd=tmp_path, env=env)
        assert revoke.code == 1
        assert "malformed" in revoke.err
        assert "Traceback" not in revoke.err
    skipped = [r.getMessage() for r in caplog.records if "malformed row" in r.getMessage()]
    assert any("'junk'" in m for m in skipped)
    assert any("'odd'" in m for m in skipped)
