"""The single-file binary: ``python -m catsock deploy binary --out DIR``, run with nothing.

The binary is built once for the module (PyInstaller, from the ``binary`` extra;
about a minute) and every test runs ``DIR/catsock`` with an empty environment:
no PATH, so no Python to fall back on, and no CATSOCK_* settings. It must show
its help, create a token, serve (the dashboard's files and the conformance
vectors are inside it) and take an authentication over a real WebSocket.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trio
import trio_websocket

from tests.lines import LineReader

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("PyInstaller") is None,
    reason="PyInstaller not installed: pip install -e '.[binary]' (.ci/run does)",
)

TIMEOUT = 60
LISTENING = re.compile(r"^catsock: listening on ws://127\.0\.0\.1:(\d+)/ws$")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    began = time.monotonic()
    built = subprocess.run(
        [sys.executable, "-m", "catsock", "deploy", "binary", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    path = out / "catsock"
    assert built.stdout.strip() == str(path)
    # For the record in the test log (-rA / CI output): the build's cost.
    print(f"binary built in {time.monotonic() - began:.0f} s, {path.stat().st_size / 1e6:.1f} MB")
    return path


def run_bare(binary: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The binary with an empty environment: no PATH, no Python, no settings."""
    return subprocess.run(
        [str(binary), *args], env={}, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_help_and_token_create_with_an_empty_environment(binary: Path, tmp_path: Path) -> None:
    shown = run_bare(binary, "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for command in ("serve", "token", "deploy", "db", "publish", "tail", "conformance"):
        assert re.search(rf"^  {command} ", shown.stdout, re.M), shown.stdout
    created = run_bare(
        binary, "token", "create", "--client-type", "CATS", "--name", "cats-1", cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("cs_")
    assert (tmp_path / "catsock.db").is_file()  # the default database, in the working directory
    again = run_bare(
        binary, "token", "create", "--client-type", "CATS", "--name", "cats-1", cwd=tmp_path
    )
    assert again.returncode == 1
    assert again.stderr.startswith("Error: ")


async def test_serve_and_authenticate(binary: Path, tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    process = await trio.lowlevel.open_process(
        [str(binary), "serve", "--port", "0", "--db", str(db)],
        env={},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    err = LineReader(process.stderr)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(err.run)
            with trio.fail_after(TIMEOUT):
                index, match = await err.wait_for_match(LISTENING)
                port = int(match[1])
                _, hint = await err.wait_for_match(re.compile(r"^  (catsock token create .*)$"))
                # The hint names the binary and the database it was started with, and
                # works as printed (the running gateway takes the token at once).
                argv = hint[1].split()
                assert argv[:5] == ["catsock", "token", "create", "--db", str(db)]
                created = await trio.run_process(
                    [str(binary), *argv[1:]], env={}, cwd=tmp_path, capture_stdout=True,
                    capture_stderr=True,
                )  # fmt: skip
                token = created.stdout.decode().strip()
                assert token.startswith("cs_")
                url = f"ws://127.0.0.1:{port}/ws"
                async with trio_websocket.open_websocket_url(url) as ws:
                    auth = {"type": "auth", "token": token, "client_type": "CATS"}
                    await ws.send_message(json.dumps(auth))
                    reply = json.loads(await ws.get_message())
                    assert reply["type"] == "auth_success", reply
                    await ws.send_message(json.dumps({"type": "ping"}))
                    assert json.loads(await ws.get_message())["type"] == "pong"
                # The dashboard's files are inside the binary.
                page = await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/")
                assert b"catsock dashboard" in page
                icon = await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/favicon.ico")
                assert icon.startswith(b"<svg")
                # So are the conformance vectors: the suite loads them all to start.
                checked = await trio.run_process(
                    [str(binary), "conformance", "--url", url, "--token", f"CATS={token}",
                     "--only", "auth.ok"],
                    env={}, cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False,
                )  # fmt: skip
                assert checked.returncode == 0, checked.stderr
                assert b"1 passed, 0 failed" in checked.stdout
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
                await err.wait_eof()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "Traceback" not in "\n".join(err.lines)
    assert index == 0


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as response:
        body: bytes = response.read()
        return body
