"""First-run polish, each as a new user would meet it (issue 14).

A browser page from another origin is refused with a WARNING that names the
setting; a token used with the wrong client type says which type it has; the
client commands take the gateway's URL from ``$CATSOCK_URL``; ``logs`` prints
aligned columns; the dashboard has an icon. (The first-start hint and
``publish``'s reconnect reports are tested in tests/catsock/test_serve.py and
test_client_cli.py.)
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

import storage
from catsock.cli import main
from tests.catsock.harness import CONVERSION, GatewayFactory

TIMEOUT = 30


async def handshake(port: int, origin: str) -> bytes:
    """A browser's WebSocket handshake with ``Origin``; the response's status line."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {origin}\r\n\r\n"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


async def test_a_refused_origin_is_logged_once_naming_the_setting(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(http={"allowed_origins": ["https://admin.example.com"]})
    caplog.set_level(logging.WARNING, logger="catsock.frontdoor")
    with trio.fail_after(TIMEOUT):
        for origin in ("https://evil.example", "https://evil.example", "http://other.example"):
            assert await handshake(gw.port, origin) == b"HTTP/1.1 403 Forbidden"
        allowed = await handshake(gw.port, "https://admin.example.com")
        assert allowed == b"HTTP/1.1 101 Switching Protocols"
    warnings = [r.getMessage() for r in caplog.records if r.name == "catsock.frontdoor"]
    assert len(warnings) == 2, warnings  # once per origin
    assert "'https://evil.example'" in warnings[0]
    assert "'http://other.example'" in warnings[1]
    for message in warnings:
        assert "http.allowed_origins" in message
        assert all(r.levelno == logging.WARNING for r in caplog.records)


async def test_a_token_of_another_client_type_says_which(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    token = gw.token("afad-1", "AFAD")
    with trio.fail_after(TIMEOUT):
        async with gw.connect() as client:
            await client.send({"type": "auth", "token": token, "client_type": "CATS"})
            reply = await client.recv()
        assert reply["payload"]["error_code"] == "AUTH_FAILED"
        assert reply["payload"]["error_message"] == "this token is for client type AFAD, not CATS"
        # An unknown token still learns nothing.
        async with gw.connect() as client:
            await client.send({"type": "auth", "token": "cs_" + "x" * 43, "client_type": "CATS"})
            reply = await client.recv()
        assert reply["payload"]["error_message"] == "invalid authentication token"

        # The CLI says what to do about it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CATSOCK_")}
        env.update(CATSOCK_URL=gw.url, CATSOCK_TOKEN=token)
        done = await trio.run_process(
            [sys.executable, "-m", "catsock", "publish", "conversion", "--payload",
             json.dumps(CONVERSION), "--timeout", "5"],
            env=env, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.decode().strip() == (
        "Error: authentication failed: AUTH_FAILED: this token is for client type AFAD, "
        "not CATS (pass --client-type with the token's type)"
    )


async def test_client_commands_take_the_url_from_catsock_url(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATSOCK_")}
    env.update(CATSOCK_URL=gw.url, CATSOCK_TOKEN=gw.token("cats-1", "CATS"))
    with trio.fail_after(TIMEOUT):
        published = await trio.run_process(
            [sys.executable, "-m", "catsock", "publish", "conversion", "--payload",
             json.dumps(CONVERSION), "--message-id", "from-env"],
            env=env, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        assert published.stdout.decode() == "accepted seq=1 message_id=from-env\n"
        checked = await trio.run_process(
            [sys.executable, "-m", "catsock", "conformance", "--token",
             f"CATS={env['CATSOCK_TOKEN']}", "--only", "auth.ok"],
            env=env, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr
        assert b"1 passed, 0 failed" in checked.stdout
        del env["CATSOCK_URL"]
        missing = await trio.run_process(
            [sys.executable, "-m", "catsock", "conformance", "--only", "auth.ok"],
            env=env, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert missing.returncode == 2
    assert b"--url or $CATSOCK_URL" in missing.stderr


def test_logs_prints_aligned_columns(tmp_path: Path) -> None:
    database = tmp_path / "logs.db"
    db = storage.open_db(database)
    storage.write_batch(
        db,
        [
            storage.ConnectionOpened("conn_1", "CATS", "cats-prod", "127.0.0.1:5", 1.0),
            storage.ConnectionOpened("conn_22", "DASHBOARD", "a-longer-name", "[::1]:65000", 2.0),
            storage.ConnectionClosed("conn_1", 3.0, 1000, "bye"),
        ],
        policy=storage.LogPolicy.FULL,
        redact_fields=frozenset(),
    )
    db.close()
    result = CliRunner().invoke(main, ["logs", "--connections", "--db", str(database)])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert len(rows) == 2
    starts = [header.index(name) for name in header.split()]
    for row in rows:
        for start in starts[1:]:
            assert row[start - 2 : start] == "  ", (row, start)
            assert row[start] != " ", (row, start)


def test_the_dashboard_has_an_icon() -> None:
    from catsock.static_files import static_response

    found = static_response("/favicon.ico")
    assert found is not None
    status, headers, body = found
    assert (status, dict(headers)["content-type"]) == (200, "image/svg+xml")
    assert body.startswith(b"<svg")
    page = static_response("/")
    assert page is not None
    assert b'<link rel="icon" href="/static/favicon.svg"' in page[2]
