"""CATS publishes from PHP with plain curl: ``POST /api/publish`` reaches an AFAD WebSocket.

``php/publish_curl.php`` is the one-call publish that docs/integrations.md
shows for ``add.php``: a seed envelope (or just ``{type, payload}``) posted with
``Authorization: Bearer <token>``. Each test runs it as a real ``php`` process
against a gateway on 127.0.0.1:0, while a Python AFAD client holds a WebSocket.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.catsock.harness import CONVERSION, GatewayFactory, RunningGateway, envelope

PHP = shutil.which("php")
SCRIPT = Path(__file__).parent / "php" / "publish_curl.php"


#: Seconds the probe for php's curl extension may take; a php that cannot answer
#: that in time cannot run these tests either.
PROBE_TIMEOUT = 30


@functools.cache
def _php_curl_missing() -> str | None:
    """Why these tests cannot run here (None: they can). Run once, when the first
    test of the module is set up, never at import (collection must not hang)."""
    if PHP is None:
        return "php not found: apt-get install php-cli php-curl"
    try:
        probe = subprocess.run(
            [PHP, "-r", "exit(function_exists('curl_init') ? 0 : 1);"],
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"php did not answer the curl probe within {PROBE_TIMEOUT} s"
    except OSError as exc:
        return f"php cannot run: {exc}"
    if probe.returncode != 0:
        return "php has no curl extension: apt-get install php-curl"
    return None


@pytest.fixture(autouse=True)
def _php_curl() -> None:
    missing = _php_curl_missing()
    if missing is not None:
        pytest.skip(missing)


async def publish_curl(
    gw: RunningGateway, token: str, type_: str, payload: dict[str, Any], mode: str = "envelope"
) -> tuple[int, dict[str, Any]]:
    """Run the PHP script; its exit code and the JSON line it printed."""
    assert PHP is not None
    done = await trio.run_process(
        [
            PHP,
            str(SCRIPT),
            f"http://127.0.0.1:{gw.port}",
            token,
            type_,
            json.dumps(payload, ensure_ascii=False),
            mode,
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    result: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, result


@pytest.mark.parametrize("mode", ["envelope", "short"])
async def test_php_curl_conversion_reaches_afad_websocket(
    start_gateway: GatewayFactory, mode: str
) -> None:
    gw = await start_gateway()
    token = gw.token("cats-php", "CATS")
    with trio.fail_after(30):
        async with gw.client("AFAD") as afad:
            code, result = await publish_curl(gw, token, "conversion", CONVERSION, mode)
            assert code == 0, result
            assert result["status"] == 202
            body = result["body"]
            assert isinstance(body["message_id"], str)
            assert body["message_id"]
            assert isinstance(body["seq"], int)

            event = await afad.recv()
            assert event["type"] == "conversion"
            assert event["sender"] == "CATS"
            assert event["version"].startswith("1.")
            assert event["message_id"] == body["message_id"]
            assert event["payload"] == CONVERSION


async def test_php_curl_bad_token_is_refused_and_nothing_is_delivered(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with trio.fail_after(30):
        async with gw.client("AFAD") as afad:
            code, result = await publish_curl(gw, "not-a-token", "conversion", CONVERSION)
            assert code == 1
            assert result["status"] == 401
            assert result["body"]["error_code"] == "AUTH_FAILED"

            # A refused payload never reaches AFAD: the next thing it gets is this one.
            async with gw.client("CATS", "cats-ws") as cats:
                await cats.send(envelope("conversion", CONVERSION, "CATS", "after-refusal"))
            assert (await afad.recv())["message_id"] == "after-refusal"


async def test_php_curl_invalid_payload_gets_the_protocol_error(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    token = gw.token("cats-php", "CATS")
    with trio.fail_after(30):
        broken = {k: v for k, v in CONVERSION.items() if k != "owner_id"}
        code, result = await publish_curl(gw, token, "conversion", broken)
        assert code == 1
        assert result["status"] == 400
        assert result["body"]["error_code"] == "INVALID_MESSAGE"


DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
DRIVER = """<?php
require $argv[1];
[$status, $body] = catsock_publish($argv[2], $argv[3], 'conversion', json_decode($argv[4], true));
echo json_encode(['status' => $status, 'body' => $body]), "\\n";
"""


async def test_the_documented_php_function_publishes(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """docs/integrations.md's ``catsock_publish.php`` block, run as written."""
    assert PHP is not None
    text = DOC.read_text(encoding="utf-8")
    start = text.index("```php\n<?php\n// catsock_publish.php") + len("```php\n")
    library = tmp_path / "catsock_publish.php"
    library.write_text(text[start : text.index("```", start)], encoding="utf-8")
    driver = tmp_path / "driver.php"
    driver.write_text(DRIVER, encoding="utf-8")
    gw = await start_gateway()
    token = gw.token("cats-php", "CATS")
    with trio.fail_after(30):
        async with gw.client("AFAD") as afad:
            done = await trio.run_process(
                [
                    PHP,
                    str(driver),
                    str(library),
                    f"http://127.0.0.1:{gw.port}",
                    token,
                    json.dumps(CONVERSION),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            result = json.loads(done.stdout)
            assert result["status"] == 202, result
            event = await afad.recv()
            assert event["message_id"] == result["body"]["message_id"]
            assert event["payload"] == CONVERSION
