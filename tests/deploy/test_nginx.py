"""The nginx site ``python -m catsock deploy nginx`` prints, in a real nginx.

Each test starts a gateway with the configuration docs/deploy.md installs (its
``catsock.toml`` block: nginx is a trusted proxy), generates the site with the
command docs/deploy.md runs, and starts Debian's nginx on a free loopback port
with TLS from a trustme CA. Through it: the seed PHP client and an AFAD
(catsock.client) over ``wss://``, the dashboard and its WebSocket (the Origin
check sees the Host nginx forwards), the IP allow-list and the connection log
seeing the real client address, ``/metrics`` for loopback only, and ``nginx -s
reload`` in the middle of a stream losing no durable event.

Loopback has every 127.x.y.z address: a client bound to 127.0.0.5 is another
host as far as nginx and the gateway can tell.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import ssl
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

import storage
from catsock.backoff import Backoff
from catsock.client import _single_error, connect
from tests.catsock.harness import CONVERSION, GatewayFactory, RunningGateway
from tests.deploy.nginx import (
    Tls,
    catsock_cli,
    free_port,
    lay_out,
    make_tls,
    needs_nginx,
    nginx_test,
    running_nginx,
)
from tests.interop.live import lines, live_process

pytestmark = needs_nginx

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
PHP = shutil.which("php")
PHP_CLIENT = ROOT / "tests" / "interop" / "php" / "seed_client.php"
TIMEOUT = 60


def doc_config() -> dict[str, Any]:
    """The ``catsock.toml`` docs/deploy.md installs (its block that sets ``database``)."""
    for block in re.findall(r"```toml\n(.*?)```", DEPLOY_DOC, re.S):
        data = tomllib.loads(block)
        if "database" in data:
            return data
    raise AssertionError("docs/deploy.md has no catsock.toml block")


def doc_nginx_command() -> list[str]:
    """The ``deploy nginx`` command line of docs/deploy.md, as arguments."""
    match = re.search(r"python -m catsock deploy nginx (.*?) *(?:\||>|\n)", DEPLOY_DOC)
    assert match is not None, "docs/deploy.md runs no deploy nginx"
    return match[1].split()


async def site_for(gw: RunningGateway, port: int, tls: Tls | None, **replace: str) -> str:
    """The site docs/deploy.md generates, for this gateway, port and certificate."""
    args = doc_nginx_command()
    values = {
        "--server-name": "localhost",
        "--listen": f"127.0.0.1:{port}",
        "--upstream": f"127.0.0.1:{gw.port}",
        **replace,
    }
    if tls is not None:
        values.update({"--tls-cert": str(tls.cert), "--tls-key": str(tls.key)})
    out: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i]
        if flag.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            if flag == "--config":  # the test's gateway has its own; --upstream says where
                pass
            elif flag in values:
                out += [flag, values.pop(flag)]
            elif not (flag in ("--tls-cert", "--tls-key") and tls is None):
                out += [flag, args[i + 1]]
            i += 2
        else:
            out.append(flag)
            i += 1
    for flag, value in values.items():
        out += [flag, value]
    return await catsock_cli("deploy", "nginx", *out)


def gateway_overrides(**extra: Any) -> dict[str, Any]:
    config = doc_config()
    config.pop("database")
    config.pop("port", None)
    config.pop("host", None)
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def client_context(tls: Tls) -> ssl.SSLContext:
    context = ssl.create_default_context()
    tls.ca.configure_trust(context)
    return context


@contextlib.asynccontextmanager
async def ws_from(
    port: int,
    context: ssl.SSLContext,
    source: str = "127.0.0.1",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A WebSocket through nginx (``wss://127.0.0.1:PORT/ws``) from address ``source``."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1", https_compatible=True)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, f"127.0.0.1:{port}", "/ws", extra_headers=headers
            )
            try:
                yield ws
            finally:
                await ws.aclose()
    except BaseExceptionGroup as group:
        leaf = _single_error(group)  # a refused handshake, as itself
        if leaf is None:
            raise
        raise leaf from None
    finally:
        await trio.aclose_forcefully(stream)


async def authenticate(ws: trio_websocket.WebSocketConnection, token: str, kind: str) -> Any:
    await ws.send_message(json.dumps({"type": "auth", "token": token, "client_type": kind}))
    return json.loads(await ws.get_message())


def https_get(port: int, path: str, context: ssl.SSLContext, source: str) -> tuple[int, bytes]:
    """GET through nginx from address ``source``, in a worker thread's blocking client."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=context, source_address=(source, 0), timeout=20
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def get(port: int, path: str, tls: Tls, source: str = "127.0.0.1") -> tuple[int, bytes]:
    context = client_context(tls)
    return await trio.to_thread.run_sync(https_get, port, path, context, source)


# -- the generated files --------------------------------------------------------------


async def test_generated_sites_pass_nginx_t(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    with trio.fail_after(TIMEOUT):
        for name, extra in {
            "tls": ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)],
            "plain": [],
            "v6-metrics": ["--listen", "[::1]:8443", "--metrics-allow", "10.0.0.0/8"],
        }.items():
            site = await catsock_cli(
                "deploy", "nginx", "--server-name", "socket.example.com", "--listen", "8443",
                *extra,
            )  # fmt: skip
            prefix = tmp_path / name
            lay_out(prefix, site)
            done = await nginx_test(prefix)
            assert done.returncode == 0, (name, done.stderr.decode(), site)
            assert "test is successful" in done.stderr.decode()
    assert "ssl_protocols       TLSv1.2 TLSv1.3;" in await catsock_cli(
        "deploy", "nginx", "--server-name", "x", "--tls-cert", "/c", "--tls-key", "/k"
    )


async def test_deploy_nginx_refuses_bad_input() -> None:
    with trio.fail_after(TIMEOUT):
        for args in (
            ["--server-name", "a b"],
            ["--server-name", "x", "--tls-cert", "/c"],
            ["--server-name", "x", "--listen", "70000"],
            ["--server-name", "x", "--upstream", "nohost"],
            ["--server-name", "x", "--metrics-allow", "10.0.0.0/33"],
        ):
            done = await trio.run_process(
                [sys.executable, "-m", "catsock", "deploy", "nginx", *args],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert done.returncode == 1, (args, done.stderr)
            assert done.stderr.startswith(b"Error: "), done.stderr
            assert b"Traceback" not in done.stderr


# -- through a running nginx ------------------------------------------------------------


@pytest.mark.skipif(PHP is None, reason="php not found: apt-get install php-cli")
async def test_php_seed_client_and_afad_over_wss_through_nginx(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path)
    gw = await start_gateway(**gateway_overrides())
    port = free_port()
    url = f"wss://127.0.0.1:{port}/ws"
    php_token = gw.token("cats-php", "CATS")
    afad_token = gw.token("afad", "AFAD")
    assert PHP is not None
    php = [PHP, "-d", f"openssl.cafile={tls.ca_file}", str(PHP_CLIENT)]
    async with running_nginx(tmp_path / "nginx", await site_for(gw, port, tls)):
        with trio.fail_after(TIMEOUT):
            context = client_context(tls)
            async with connect(url, afad_token, "AFAD", ssl_context=context) as afad:
                events = afad.events()
                # PHP (CATS) publishes a conversion through nginx; AFAD gets its bytes.
                done = await trio.run_process(
                    [*php, "publish", url, php_token, "conversion", json.dumps(CONVERSION)],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                assert done.returncode == 0, done.stderr.decode()
                auth_line, sent = lines(done.stdout)
                assert json.loads(auth_line)["type"] == "auth_success"
                event = await events.__anext__()
                # The frame PHP sent, byte for byte, after the seq the acks extension adds.
                assert event.text == f'{{"seq":{event.seq},{sent[1:]}'
                assert event.payload == CONVERSION

                # AFAD publishes an adware_update; the PHP receiver (§5.4) reads it.
                async with live_process([*php, "listen", url, php_token, "CATS", "1"]) as rx:
                    assert json.loads(await rx.line())["type"] == "auth_success"
                    update = {"adware_id": 100, "action": "UPDATE", "data": {"money": 1000}}
                    accepted = await afad.publish("adware_update", update)
                    code, received = await rx.finish()
                assert code == 0, rx.stderr.decode()
                (text,) = received
                message = json.loads(text)
                assert (message["message_id"], message["payload"]) == (accepted.message_id, update)

    # The gateway logged the connections with the clients' address, not nginx's port.
    await gw.gateway.log.flush()  # rows are written in batches, off the event loop
    db = storage.open_db(gw.database)
    try:
        rows = storage.recent_connections(db, limit=10)
    finally:
        db.close()
    assert {row["identity"] for row in rows} == {"cats-php", "afad"}
    assert {row["remote_addr"] for row in rows} == {"127.0.0.1"}


async def test_dashboard_and_its_websocket_through_nginx(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path)
    gw = await start_gateway(**gateway_overrides())
    port = free_port()
    token = gw.token("admin", "DASHBOARD")
    async with running_nginx(tmp_path / "nginx", await site_for(gw, port, tls)):
        with trio.fail_after(TIMEOUT):
            status, body = await get(port, "/", tls)
            assert status == 200
            assert b"catsock" in body
            assert (await get(port, "/static/favicon.svg", tls))[0] == 200
            status, body = await get(port, "/health", tls)
            assert (status, json.loads(body)["status"]) == (200, "ok")
            # A browser on the dashboard's page sends its Origin: the gateway's own,
            # as nginx forwards the Host the browser asked for, port included.
            origin = [(b"Origin", f"https://127.0.0.1:{port}".encode())]
            async with ws_from(port, client_context(tls), headers=origin) as ws:
                assert (await authenticate(ws, token, "DASHBOARD"))["type"] == "auth_success"
            elsewhere = [(b"Origin", b"https://evil.example")]
            with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                async with ws_from(port, client_context(tls), headers=elsewhere):
                    pass
            assert refused.value.status_code == 403


async def test_allow_list_and_limits_see_the_client_behind_nginx(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path)
    gw = await start_gateway(**gateway_overrides(allow={"ips": ["127.0.0.1", "127.0.0.5"]}))
    port = free_port()
    token = gw.token("afad", "AFAD")
    async with running_nginx(tmp_path / "nginx", await site_for(gw, port, tls)):
        with trio.fail_after(TIMEOUT):
            context = client_context(tls)
            async with ws_from(port, context, source="127.0.0.5") as ws:
                assert (await authenticate(ws, token, "AFAD"))["type"] == "auth_success"
            # 127.0.0.6 is not on the list: nginx connects from 127.0.0.1, but the
            # gateway checks the client nginx names, and refuses it.
            with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                async with ws_from(port, context, source="127.0.0.6"):
                    pass
            assert refused.value.status_code == 403
            assert b"ADDRESS_NOT_ALLOWED" in (refused.value.body or b"")
            # A forged X-Forwarded-For is only the left part of what nginx sends on.
            forged = [(b"X-Forwarded-For", b"127.0.0.5")]
            with pytest.raises(trio_websocket.ConnectionRejected):
                async with ws_from(port, context, source="127.0.0.6", headers=forged):
                    pass
            assert (await get(port, "/health", tls, source="127.0.0.5"))[0] == 200
            status, body = await get(port, "/health", tls, source="127.0.0.6")
            assert status == 403
            assert b"ADDRESS_NOT_ALLOWED" in body
            # /metrics: nginx lets loopback's 127.0.0.1 in, and no one else.
            status, body = await get(port, "/metrics", tls, source="127.0.0.1")
            assert status == 200
            assert b"catsock_" in body
            status, body = await get(port, "/metrics", tls, source="127.0.0.5")
            assert status == 403
            assert b"nginx" in body

    await gw.gateway.log.flush()  # rows are written in batches, off the event loop
    db = storage.open_db(gw.database)
    try:
        rows = storage.recent_connections(db, limit=10)
    finally:
        db.close()
    assert [row["remote_addr"] for row in rows] == ["127.0.0.5"]
    assert gw.gateway.stats.refused_ip >= 3


async def test_nginx_reload_during_a_stream_loses_no_durable_event(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    tls = make_tls(tmp_path)
    fast_publisher = {"rate": {"CATS": {"per_minute": 60_000.0, "burst": 1000}}}
    gw = await start_gateway(**gateway_overrides(limits=fast_publisher))
    port = free_port()
    url = f"wss://127.0.0.1:{port}/ws"
    cats_token = gw.token("cats", "CATS")
    afad_token = gw.token("afad", "AFAD")
    context = client_context(tls)
    fast = Backoff(base=0.05, factor=2.0, cap=0.5)
    published: list[str] = []
    received: list[str] = []
    site = await site_for(gw, port, tls)
    # The old workers close what they still serve a second after the reload, so the
    # stream is really cut (without it they would serve it until it ends).
    async with running_nginx(tmp_path / "nginx", site, worker_shutdown_timeout=1) as nginx:
        with trio.fail_after(TIMEOUT):
            async with (
                connect(url, afad_token, "AFAD", ssl_context=context, backoff=fast) as afad,
                connect(url, cats_token, "CATS", ssl_context=context, backoff=fast) as cats,
                trio.open_nursery() as nursery,
            ):
                everything = trio.Event()

                async def receive() -> None:
                    async for event in afad.events():
                        received.append(event.message_id)
                        if everything.is_set() and len(received) >= len(published):
                            return

                async def publish(count: int) -> None:
                    for _ in range(count):
                        n = len(published) + 1
                        accepted = await cats.publish("conversion", {**CONVERSION, "pay_id": n})
                        published.append(accepted.message_id)
                        await trio.sleep(0.01)  # a stream, not a burst

                receiver = trio.CancelScope()

                async def receiving() -> None:
                    with receiver:
                        await receive()

                nursery.start_soon(receiving)
                await publish(30)
                await nginx.reload()
                # The stream goes on while the old worker is cut and both clients
                # reconnect through the new one; then 30 more.
                # (Not a cancel scope: a publish cancelled after the gateway took it
                # would be delivered without being counted here.)
                until = trio.current_time() + 2.5
                while trio.current_time() < until:
                    await publish(1)
                await publish(30)
                everything.set()
                # The receiver ends once it has as many as were published.
                if len(received) >= len(published):
                    receiver.cancel()
            assert afad.connections >= 2, "the reload did not cut the AFAD's connection"
            assert cats.connections >= 2, "the reload did not cut the publisher's connection"
    assert len(published) >= 60
    assert len(set(published)) == len(published)
    assert received == published  # every event, once, in order
