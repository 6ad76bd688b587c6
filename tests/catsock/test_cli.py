"""The command line through real subprocesses: ``python -m catsock ...`` in ``tmp_path``.

Every command runs with a fresh database (``CATSOCK_DATABASE`` or ``--db``) and no
``CATSOCK_*`` variables from the test's own environment. Bad input must end with
a non-zero exit and an ``Error:`` line, never a traceback.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import cattrs
import click
import pytest
import trio

from catsock.cli import main
from catsock.config import Config

from .harness import CONVERSION, GatewayFactory, envelope
from .test_serve import TIMEOUT, Result, cli_env, create_token, run_cli, serving

TOKEN = re.compile(r"^cs_[A-Za-z0-9_-]{43}$")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            out += _commands(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


ALL_COMMANDS = _commands(main)


def _one_error_line(result: Result) -> str:
    """The single ``Error:`` line a failed command printed (and nothing else)."""
    assert result.code != 0, result
    assert "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("Error: "), lines
    return lines[0]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c) or "main")
async def test_help_works_everywhere(tmp_path: Path, command: tuple[str, ...]) -> None:
    env = cli_env(tmp_path / "h.db")
    results: dict[str, Result] = {}

    async def run(flag: str) -> None:
        results[flag] = await run_cli(*command, flag, cwd=tmp_path, env=env)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for flag in ("--help", "-h"):
                nursery.start_soon(run, flag)
    for result in results.values():
        assert result.code == 0, result
        assert result.out.startswith(f"Usage: python -m catsock {' '.join(command)}".rstrip())
        assert result.err == ""
    assert results["--help"] == results["-h"]
    # --help never touches the database.
    assert not (tmp_path / "h.db").exists()


# -- tokens ---------------------------------------------------------------------------------


def _assert_not_stored(db: Path, token: str) -> None:
    """Only the token's hash is stored: the plain token is in no database file."""
    files = list(db.parent.glob(db.name + "*"))
    assert db in files
    for file in files:
        assert token.encode() not in file.read_bytes(), file


async def test_token_create_prints_a_usable_token_once(
    tmp_path: Path, start_gateway: GatewayFactory
) -> None:
    db = tmp_path / "tokens.db"
    env = cli_env(db)
    with trio.fail_after(TIMEOUT):
        result = await run_cli(
            "token", "create", "--client-type", "AFAD", "--name", "afad-prod", cwd=tmp_path, env=env
        )
        assert result.code == 0, result
        token = result.out.strip()
        assert TOKEN.match(token), result.out
        assert result.out == token + "\n"  # stdout is the token alone: scripts capture it
        assert token not in result.err
        assert "not shown again" in result.err

        _assert_not_stored(db, token)

        gw = await start_gateway(database=str(db))
        gw.tokens["afad-prod"] = token
        async with gw.client("AFAD", "afad-prod") as client:
            assert client.auth_reply is not None
            assert client.auth_reply["type"] == "auth_success"


async def test_user_bound_token_and_list(tmp_path: Path, start_gateway: GatewayFactory) -> None:
    db = tmp_path / "tokens.db"
    env = cli_env(db)
    with trio.fail_after(TIMEOUT):
        cats = await create_token(tmp_path, env, "CATS", "cats-1")
        dash = await create_token(tmp_path, env, "DASHBOARD", "dash-500", "--user-id", "500")
        web = await create_token(tmp_path, env, "AFAD", "afad-web", "--publish-only")
        listed = await run_cli("token", "list", cwd=tmp_path, env=env)
        assert listed.code == 0, listed
        header, *rows = listed.out.splitlines()
        assert header.split() == [
            "NAME",
            "TYPE",
            "USER",
            "CREATED",
            "REVOKED",
            "RECEIVES",
            "EXPIRES",
        ]
        fields = sorted(row.split() for row in rows)
        assert [(f[0], f[1], f[2], f[4], f[5], f[6]) for f in fields] == [
            ("afad-web", "AFAD", "-", "-", "no", "-"),
            ("cats-1", "CATS", "-", "-", "yes", "-"),
            ("dash-500", "DASHBOARD", "500", "-", "yes", "-"),
        ]
        # Never a token, nor its hash.
        assert "cs_" not in listed.out
        assert cats not in listed.out
        assert dash not in listed.out

        # The user-bound token authenticates and sees only its user's channel.
        gw = await start_gateway(database=str(db))
        gw.tokens.update({"cats-1": cats, "dash-500": dash, "afad-web": web})
        async with (
            gw.client("DASHBOARD", "dash-500") as dashboard,
            gw.client("CATS", "cats-1") as sender,
            gw.client("AFAD", "afad-web") as publish_only,
        ):
            other = {**CONVERSION, "owner_id": 7, "tier_rewards": []}
            await sender.send(envelope("conversion", other, "CATS", "not-for-500"))
            await sender.send(envelope("conversion", CONVERSION, "CATS", "for-500"))
            event = await dashboard.recv()
            assert event["message_id"] == "for-500"
            # A publish-only token still publishes, and gets nothing routed to AFAD.
            update = {"adware_id": 100, "action": "UPDATE", "data": {"money": 1}}
            await publish_only.send(envelope("adware_update", update, "AFAD", "from-web"))
            assert (await sender.recv())["message_id"] == "from-web"
            await publish_only.send({"type": "ping"})
            assert (await publish_only.recv())["type"] == "pong"


async def test_revoke_then_list_and_revoked_token_is_refused(
    tmp_path: Path, start_gateway: GatewayFactory
) -> None:
    db = tmp_path / "tokens.db"
    env = cli_env(db)
    with trio.fail_after(TIMEOUT):
        token = await create_token(tmp_path, env, "AFAD", "afad-1")
        revoked = await run_cli("token", "revoke", "afad-1", cwd=tmp_path, env=env)
        assert revoked.code == 0, revoked
        assert "revoked afad-1" in revoked.err
        listed = await run_cli("token", "list", cwd=tmp_path, env=env)
        (row,) = listed.out.splitlines()[1:]
        assert row.split()[0] == "afad-1"
        assert row.split()[4].endswith("Z")  # the revocation time

        again = await run_cli("token", "revoke", "afad-1", cwd=tmp_path, env=env)
        assert "afad-1" in _one_error_line(again)

        gw = await start_gateway(database=str(db))
        async with gw.connect() as client:
            await client.send({"type": "auth", "token": token, "client_type": "AFAD"})
            error = await client.recv()
            assert error["payload"]["error_code"] == "AUTH_FAILED"
            assert await client.closed_code() == 1008


async def test_revoke_unknown_name_is_a_clear_error(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        result = await run_cli(
            "token", "revoke", "nobody", cwd=tmp_path, env=cli_env(tmp_path / "t.db")
        )
    line = _one_error_line(result)
    assert "no active token named 'nobody'" in line


async def test_duplicate_name_is_one_error_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "t.db")
    with trio.fail_after(TIMEOUT):
        await create_token(tmp_path, env, "CATS", "cats-1")
        # A name is never reused, not even for another client type.
        result = await run_cli(
            "token", "create", "--client-type", "AFAD", "--name", "cats-1", cwd=tmp_path, env=env
        )
    assert result.out == ""
    assert "already exists" in _one_error_line(result)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--client-type", "cats", "--name", "x"], "invalid client type 'cats'"),
        (["--client-type", "CATS", "--name", "has space"], "invalid credential name"),
        (["--client-type", "CATS", "--name", "x" * 65], "invalid credential name"),
    ],
    ids=["lowercase-type", "space-in-name", "long-name"],
)
async def test_token_create_refuses_bad_input(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    with trio.fail_after(TIMEOUT):
        result = await run_cli(
            "token", "create", *args, cwd=tmp_path, env=cli_env(tmp_path / "t.db")
        )
    assert result.out == ""
    assert expected in _one_error_line(result)


async def test_token_create_without_required_options_is_a_usage_error(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        result = await run_cli("token", "create", cwd=tmp_path, env=cli_env(tmp_path / "t.db"))
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "Missing option '--client-type'" in result.err


async def test_unopenable_database_is_a_clear_error(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "missing-dir" / "t.db")
    with trio.fail_after(TIMEOUT):
        for args in (["token", "list"], ["logs"], ["token", "revoke", "x"]):
            result = await run_cli(*args, cwd=tmp_path, env=env)
            assert "cannot open database" in _one_error_line(result), args


async def test_db_flag_overrides_the_environment(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "from-env.db")
    with trio.fail_after(TIMEOUT):
        result = await run_cli(
            "token", "create", "--db", "flag.db", "--client-type", "CATS", "--name", "c",
            cwd=tmp_path, env=env,
        )  # fmt: skip
    assert result.code == 0, result
    assert (tmp_path / "flag.db").exists()
    assert not (tmp_path / "from-env.db").exists()


# -- config ---------------------------------------------------------------------------------


def _defaults(**top: Any) -> dict[str, Any]:
    data: dict[str, Any] = cattrs.Converter().unstructure(Config())
    data.update(top)
    return data


async def test_config_prints_the_defaults_as_toml(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with trio.fail_after(TIMEOUT):
        result = await run_cli("config", cwd=tmp_path, env=cli_env(db))
    assert result.code == 0, result
    assert tomllib.loads(result.out) == _defaults(database=str(db))
    assert not db.exists()  # printing the config opens no database


async def test_config_output_round_trips(tmp_path: Path) -> None:
    (tmp_path / "in.toml").write_text(
        'port = 9000\n[allow]\nips = ["10.0.0.0/8"]\n'
        '[routes.order_shipped]\nsenders = ["CATS"]\nto = ["AFAD"]\n'
        "[limits.rate.PARTNER]\nper_minute = 10.0\nburst = 5\n"
    )
    env = cli_env(tmp_path / "c.db")
    with trio.fail_after(TIMEOUT):
        first = await run_cli("config", "--config", "in.toml", cwd=tmp_path, env=env)
        assert first.code == 0, first
        (tmp_path / "out.toml").write_text(first.out)
        second = await run_cli("config", "--config", "out.toml", cwd=tmp_path, env=env)
    assert second.code == 0, second
    assert second.out == first.out
    parsed = tomllib.loads(first.out)
    assert parsed["routes"]["order_shipped"]["to"] == ["AFAD"]
    assert parsed["limits"]["rate"]["PARTNER"] == {"per_minute": 10.0, "burst": 5}
    assert parsed["limits"]["rate"]["CATS"] == {"per_minute": 1000.0, "burst": 1000}


async def test_config_precedence_file_then_env(tmp_path: Path) -> None:
    (tmp_path / "catsock.toml").write_text(
        'port = 1111\nhost = "0.0.0.0"\n[log]\npolicy = "metadata"\n'
    )
    base = cli_env(tmp_path / "c.db")
    with trio.fail_after(TIMEOUT):
        from_file = await run_cli("config", "--config", "catsock.toml", cwd=tmp_path, env=base)
        env_wins = await run_cli(
            "config",
            "--config",
            "catsock.toml",
            cwd=tmp_path,
            env={**base, "CATSOCK_PORT": "2222", "CATSOCK_LOG__POLICY": "off"},
        )
        via_env_path = await run_cli(
            "config", cwd=tmp_path, env={**base, "CATSOCK_CONFIG": "catsock.toml"}
        )
    file_config = tomllib.loads(from_file.out)
    assert (file_config["port"], file_config["host"], file_config["log"]["policy"]) == (
        1111,
        "0.0.0.0",
        "metadata",
    )
    env_config = tomllib.loads(env_wins.out)
    # The environment beats the file; what the environment leaves alone keeps the file's value.
    assert (env_config["port"], env_config["host"], env_config["log"]["policy"]) == (
        2222,
        "0.0.0.0",
        "off",
    )
    assert tomllib.loads(via_env_path.out) == file_config


async def test_env_variables_reach_nested_and_list_settings(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path / "c.db",
        CATSOCK_ALLOW__IPS="10.0.0.0/8, 127.0.0.1",
        CATSOCK_LIMITS__PER_IDENTITY__DASHBOARD="5",
        CATSOCK_LIMITS__RATE__CATS__PER_MINUTE="600",
        CATSOCK_HEARTBEAT__ENABLED="false",
        CATSOCK_ALLOW_SHARED_TOKEN="yes",
    )
    with trio.fail_after(TIMEOUT):
        result = await run_cli("config", cwd=tmp_path, env=env)
    assert result.code == 0, result
    config = tomllib.loads(result.out)
    assert config["allow"]["ips"] == ["10.0.0.0/8", "127.0.0.1"]
    assert config["limits"]["per_identity"] == {"DASHBOARD": 5}
    assert config["limits"]["rate"]["CATS"] == {"per_minute": 600.0, "burst": 1000}
    assert config["heartbeat"]["enabled"] is False
    assert config["allow_shared_token"] is True


async def test_config_never_prints_the_shared_token(tmp_path: Path) -> None:
    secret = "s3cret-shared-token-0123456789"
    env = cli_env(tmp_path / "c.db", CATSOCK_ALLOW_SHARED_TOKEN="true", SOCKET_AUTH_TOKEN=secret)
    with trio.fail_after(TIMEOUT):
        result = await run_cli("config", cwd=tmp_path, env=env)
    assert result.code == 0, result
    assert secret not in result.out + result.err


async def test_serve_port_flag_beats_env_and_file(tmp_path: Path) -> None:
    (tmp_path / "catsock.toml").write_text('port = 1111\ndatabase = "from-file.db"\n')
    env = cli_env(tmp_path / "from-env.db", CATSOCK_PORT="2222", CATSOCK_CONFIG="catsock.toml")
    del env["CATSOCK_DATABASE"]
    with trio.fail_after(TIMEOUT):
        async with serving(tmp_path, env, "--port", "0") as served:
            port = await served.port()
            assert await served.stop() == 0
    assert port not in (0, 1111, 2222)
    assert (tmp_path / "from-file.db").exists()
    with trio.fail_after(TIMEOUT):
        async with serving(tmp_path, env, "--port", "0", "--db", "from-flag.db") as served:
            await served.port()
            assert await served.stop() == 0
    assert (tmp_path / "from-flag.db").exists()


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("port = \n", {}, "line 1"),
        ("prot = 1\n", {}, "prot"),
        ("[log]\npolcy = 'full'\n", {}, "polcy"),
        ("[log]\npolicy = 'loud'\n", {}, "log.policy"),
        ("[allow]\nips = ['10.0.0.0/33']\n", {}, "10.0.0.0/33"),
        ("port = 'abc'\n", {}, "config.port"),
        ("port = 70000\n", {}, "port 70000"),
        ("[routes.order_shipped]\nsenders = []\n", {}, "routes.order_shipped"),
        ("[tls]\ncert = 'a.pem'\n", {}, "tls.cert and tls.key"),
        ("[delivery]\ncommit_interval = 5\n", {}, "delivery.commit_interval"),
        ("", {"CATSOCK_PORT": "abc"}, "CATSOCK_PORT"),
        ("", {"CATSOCK_LOG__POLICY": "loud"}, "log.policy"),
        ("", {"CATSOCK_ALLOW__IPS": "10.0.0.0/8,not-an-ip"}, "not-an-ip"),
        ("", {"CATSOCK_CONFIG": "missing.toml"}, "missing.toml"),
    ],
    ids=[
        "bad-toml",
        "unknown-key",
        "unknown-nested-key",
        "loud-policy",
        "bad-cidr",
        "wrong-type",
        "port-range",
        "route-without-sender",
        "cert-without-key",
        "commit-interval-in-ms",
        "env-not-int",
        "env-loud-policy",
        "env-bad-cidr",
        "missing-file",
    ],
)
async def test_bad_config_is_one_error_line(
    tmp_path: Path, toml: str, env: dict[str, str], expected: str
) -> None:
    """``config`` and ``serve`` (what systemd runs) both refuse it before doing anything."""
    (tmp_path / "catsock.toml").write_text(toml)
    config_args = [] if "CATSOCK_CONFIG" in env else ["--config", "catsock.toml"]
    # --port would override a bad port in the file; elsewhere it keeps a serve that
    # wrongly started off fixed ports.
    port_args = [] if "port" in toml or "CATSOCK_PORT" in env else ["--port", "0"]
    commands = {"config": ["config", *config_args], "serve": ["serve", *config_args, *port_args]}
    results: dict[str, Result] = {}

    async def run(name: str) -> None:
        results[name] = await run_cli(
            *commands[name], cwd=tmp_path, env=cli_env(tmp_path / "c.db", **env)
        )

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for name in commands:
                nursery.start_soon(run, name)
    for name, result in results.items():
        line = _one_error_line(result)
        assert line.startswith("Error: config: "), (name, line)
        assert expected in line, (name, line)
    assert results["config"].err == results["serve"].err
    assert not (tmp_path / "c.db").exists()


# -- logs -----------------------------------------------------------------------------------


async def _gateway_with_traffic(
    tmp_path: Path, start_gateway: GatewayFactory
) -> tuple[Path, dict[str, str]]:
    """A database with two finished connections, an auth each and one conversion."""
    db = tmp_path / "logs.db"
    env = cli_env(db)
    tokens = {
        "cats-1": await create_token(tmp_path, env, "CATS", "cats-1"),
        "afad-1": await create_token(tmp_path, env, "AFAD", "afad-1"),
    }
    gw = await start_gateway(database=str(db))
    gw.tokens.update(tokens)
    async with gw.client("AFAD", "afad-1") as afad, gw.client("CATS", "cats-1") as cats:
        await cats.send(envelope("conversion", CONVERSION, "CATS", "conv-1"))
        assert (await afad.recv())["message_id"] == "conv-1"
        await cats.send({"type": "nonsense"})
        assert (await cats.recv())["payload"]["error_code"] == "UNKNOWN_TYPE"
    await gw.gateway.shutdown()  # flushes the log
    return db, tokens


async def test_logs_shows_messages_and_connections(
    tmp_path: Path, start_gateway: GatewayFactory
) -> None:
    with trio.fail_after(TIMEOUT):
        db, tokens = await _gateway_with_traffic(tmp_path, start_gateway)
        env = cli_env(db)
        messages = await run_cli("logs", cwd=tmp_path, env=env)
        connections = await run_cli("logs", "--connections", cwd=tmp_path, env=env)
        only_out = await run_cli("logs", "--direction", "out", cwd=tmp_path, env=env)
        one = await run_cli("logs", "--limit", "1", cwd=tmp_path, env=env)
    assert messages.code == 0, messages
    header, *rows = messages.out.splitlines()
    assert header.split() == [
        "CREATED_AT", "DIRECTION", "TYPE", "MESSAGE_ID", "CONNECTION_ID", "SIZE"
    ]  # fmt: skip
    kinds = sorted((row.split()[1], row.split()[2]) for row in rows)
    assert kinds == [("in", "auth"), ("in", "auth"), ("in", "conversion"), ("out", "error")]
    assert any(row.split()[3] == "conv-1" for row in rows)

    assert connections.code == 0, connections
    header, *rows = connections.out.splitlines()
    assert header.split()[:3] == ["ID", "CLIENT_TYPE", "IDENTITY"]
    assert sorted(row.split()[2] for row in rows) == sorted(tokens)

    assert [row.split()[1] for row in only_out.out.splitlines()[1:]] == ["out"]
    assert len(one.out.splitlines()) == 2
    for token in tokens.values():
        assert token not in messages.out + connections.out


async def test_logs_json(tmp_path: Path, start_gateway: GatewayFactory) -> None:
    with trio.fail_after(TIMEOUT):
        db, tokens = await _gateway_with_traffic(tmp_path, start_gateway)
        env = cli_env(db)
        messages = await run_cli("logs", "--json", cwd=tmp_path, env=env)
        conversion = await run_cli(
            "logs", "--json", "--type", "conversion", "--message-id", "conv-1",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        connections = await run_cli(
            "logs", "--connections", "--json", "--type", "CATS", cwd=tmp_path, env=env
        )
    rows = [json.loads(line) for line in messages.out.splitlines()]
    assert len(rows) == 4
    for row in rows:
        if row["type"] == "auth":
            assert row["payload"] is None  # the token is never logged
    for token in tokens.values():
        assert token not in messages.out

    (row,) = [json.loads(line) for line in conversion.out.splitlines()]
    assert row["direction"] == "in"
    assert json.loads(row["payload"])["payload"] == CONVERSION

    (conn,) = [json.loads(line) for line in connections.out.splitlines()]
    assert conn["identity"] == "cats-1"
    assert conn["client_type"] == "CATS"
    assert conn["disconnected_at"] is not None
    assert conn["remote_addr"].startswith("127.0.0.1:")
    assert row["connection_id"] == conn["id"]


async def test_logs_on_a_new_database_prints_only_the_header(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "empty.db")
    with trio.fail_after(TIMEOUT):
        plain = await run_cli("logs", cwd=tmp_path, env=env)
        as_json = await run_cli("logs", "--connections", "--json", cwd=tmp_path, env=env)
    assert plain.code == 0, plain
    assert len(plain.out.splitlines()) == 1
    assert as_json.code == 0, as_json
    assert as_json.out == ""


async def test_logs_rejects_a_bad_limit(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        result = await run_cli("logs", "--limit", "0", cwd=tmp_path, env=cli_env(tmp_path / "l.db"))
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "--limit" in result.err


def test_the_readme_lists_every_command() -> None:
    """README's "every command" sentence names exactly the commands there are."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    sentence = readme[readme.index("lists every command") :].split(";", 1)[0]
    assert set(re.findall(r"`([a-z]+)`", sentence)) == set(main.commands)
