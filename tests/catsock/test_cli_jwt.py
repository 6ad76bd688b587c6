"""``token jwt``, ``token create --expires-in`` and ``token revoke --jti`` through real
subprocesses, and what the gateway makes of what they produce."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
import trio

from .harness import GatewayFactory
from .jwtkit import SECRET
from .test_serve import TIMEOUT, cli_env, create_token, run_cli


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return cli_env(tmp_path / "t.db", CATSOCK_JWT__SECRET=SECRET, **extra)


async def test_token_jwt_mints_what_the_gateway_accepts(
    tmp_path: Path, start_gateway: GatewayFactory
) -> None:
    env = _env(tmp_path)
    with trio.fail_after(TIMEOUT):
        result = await run_cli(
            "token", "jwt", "--client-type", "DASHBOARD", "--name", "aff-500",
            "--ttl", "2h", "--user-id", "500", cwd=tmp_path, env=env,
        )  # fmt: skip
        assert result.code == 0, result
        token = result.out.strip()
        assert result.out == token + "\n"
        assert "JWT for aff-500 (DASHBOARD)" in result.err
        assert SECRET not in result.out + result.err
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        assert (claims["sub"], claims["client_type"], claims["user_id"]) == (
            "aff-500",
            "DASHBOARD",
            "500",
        )
        assert claims["exp"] - claims["iat"] == 7200
        assert claims["jti"]

        gw = await start_gateway(database=str(tmp_path / "t.db"), jwt={"secret": SECRET})
        async with gw.connect() as client:
            await client.send({"type": "auth", "token": token, "client_type": "DASHBOARD"})
            assert (await client.recv())["type"] == "auth_success"
            assert gw.gateway.hub.subscribers("user:500") == 1

            # Revoked by its jti: cut within the poll interval (real clock, <= 2 s).
            revoked = await run_cli(
                "token", "revoke", "--jti", claims["jti"], cwd=tmp_path, env=env
            )
            assert revoked.code == 0, revoked
            assert await client.closed_code() == 1008


@pytest.mark.parametrize(
    ("args", "env_extra", "expected"),
    [
        (["--client-type", "CATS", "--name", "x"], {"CATSOCK_JWT__SECRET": ""}, "jwt.secret"),
        (["--client-type", "cats", "--name", "x"], {}, "client_type"),
        (["--client-type", "CATS", "--name", "x", "--ttl", "soon"], {}, "not a duration"),
        (
            ["--client-type", "CATS", "--name", "x"],
            {"CATSOCK_JWT__SECRET": "short"},
            "at least 32 bytes",
        ),
    ],
    ids=["no-secret", "bad-type", "bad-ttl", "short-secret"],
)
async def test_token_jwt_refuses_bad_input(
    tmp_path: Path, args: list[str], env_extra: dict[str, str], expected: str
) -> None:
    env = {**_env(tmp_path), **env_extra}
    with trio.fail_after(TIMEOUT):
        result = await run_cli("token", "jwt", *args, cwd=tmp_path, env=env)
    assert result.code != 0
    assert result.out == ""
    assert "Traceback" not in result.err
    assert expected in result.err


async def test_token_create_expires_in(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with trio.fail_after(TIMEOUT):
        await create_token(tmp_path, env, "CATS", "short", "--expires-in", "30d")
        listed = await run_cli("token", "list", cwd=tmp_path, env=env)
        (row,) = listed.out.splitlines()[1:]
        created, expires = row.split()[3], row.split()[-1]
        assert expires.endswith("Z")
        assert expires > created
        bad = await run_cli(
            "token", "create", "--client-type", "CATS", "--name", "x", "--expires-in", "-1d",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert bad.code == 2
        assert "--expires-in" in bad.err


async def test_token_revoke_takes_a_name_or_a_jti(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with trio.fail_after(TIMEOUT):
        neither = await run_cli("token", "revoke", cwd=tmp_path, env=env)
        both = await run_cli("token", "revoke", "x", "--jti", "y", cwd=tmp_path, env=env)
        twice = [await run_cli("token", "revoke", "--jti", "j1", cwd=tmp_path, env=env)]
        twice.append(await run_cli("token", "revoke", "--jti", "j1", cwd=tmp_path, env=env))
    assert neither.code == both.code == 2
    assert [r.code for r in twice] == [0, 0]
    assert "revoked jti j1" in twice[0].err
    assert "revoked already" in twice[1].err
