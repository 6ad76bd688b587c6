"""The seed's PHP and JS clients, unchanged, through two cluster nodes (issue 12).

The same rewrites tests/interop/ runs (``php/seed_client.php``, ``js/seed_client.mjs``)
talk to one node while the other end of the conversation is on the other node:
the PHP publisher on node A reaches AFAD on node B byte for byte (1,000 of them
from the seed's queue flush, too), and the JS dashboard on node B gets what CATS
publishes on node A. Skipped where ``php`` or ``node`` is missing, as there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.catsock.harness import CONVERSION, GatewayFactory, envelope
from tests.cluster.nodes import cluster_nodes
from tests.cluster.redisserver import RedisServer
from tests.interop import test_js_client as js_client
from tests.interop import test_php_client as php_client
from tests.interop.live import lines


@pytest.mark.skipif(php_client.PHP is None, reason="php not found: apt-get install php-cli")
async def test_php_publisher_on_a_reaches_afad_on_b_byte_for_byte(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    # 1,001 publishes of one identity in a row: past the default CATS bucket (the
    # flush alone fits, tests/interop/test_php_client.py), so no rate limits here.
    a, b = await cluster_nodes(
        start_gateway, redis, tmp_path, limits={"rate_limits_enabled": False}
    )
    with trio.fail_after(60):
        async with b.client("AFAD", "afad") as afad:
            done = await php_client.run_php(
                "publish", a.url, a.tokens["cats"], "conversion", json.dumps(CONVERSION)
            )
            assert done.returncode == 0, done.stderr
            auth_line, sent = lines(done.stdout)
            php_client.assert_auth_success(auth_line)
            assert await afad.recv_text() == sent
            done = await php_client.run_php(
                "flush", a.url, a.tokens["cats"], "conversion", json.dumps(CONVERSION), "1000"
            )
            assert done.returncode == 0, done.stderr
            assert lines(done.stdout)[-1] == "sent 1000"
            got = [(await afad.recv())["payload"]["pay_id"] for _ in range(1000)]
    assert got == [str(i) for i in range(1000)]


@pytest.mark.skipif(js_client.NODE is None, reason=js_client.WHY_NOT)
async def test_js_dashboard_on_b_receives_what_cats_publishes_on_a(
    start_gateway: GatewayFactory, redis: RedisServer, tmp_path: Path
) -> None:
    a, b = await cluster_nodes(start_gateway, redis, tmp_path)
    sent = [
        envelope("conversion", CONVERSION, "CATS", "m-conversion"),
        envelope("stats_update", js_client.STATS_UPDATE, "CATS", "m-stats"),
    ]
    with trio.fail_after(60):
        async with js_client.live_node(b.url, b.tokens["dashboard"], len(sent)) as js:
            first = await js_client.message(js)
            assert first["type"] == "auth_success"
            async with a.client("CATS", "cats") as cats:
                for text in sent:
                    await cats.send(text)
                assert [await js_client.message(js) for _ in sent] == [json.loads(t) for t in sent]
                assert await js.finish() == (0, []), js.stderr
