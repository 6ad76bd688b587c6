"""Seed 000's browser client (§9.6) in a real headless Chromium (docs/privacy.md).

The client is ``tests/interop/js/seed_client.mjs`` (our rewrite of the seed's
``CatsSocketClient``, which the Node interop tests run), loaded into a page of the
gateway's own origin without its Node-only command-line part. The page renders
every ``click`` it is handed; an affiliate's (user-bound) dashboard must show
clicks without the visitor's data, while an admin dashboard shows them whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from catsock.config import JwtConfig
from catsock.jwtauth import mint
from tests.catsock.harness import GatewayFactory, RunningGateway
from tests.catsock.test_privacy import SECRETS, click

from .test_dashboard import (
    EVENT_TIMEOUT,
    PAGE_TIMEOUT,
    BrowserThread,
    browser_thread,
    pytestmark,
)

__all__ = ["browser_thread", "pytestmark"]  # the fixture and the skip conditions

SEED_CLIENT = Path(__file__).parents[1] / "interop" / "js" / "seed_client.mjs"
JWT_SECRET = "seed-client-test-secret-long-enough-for-hs256-0123456789"


def _browser_source() -> str:
    """The client class as a classic script: no Node import, no ``export``, no CLI."""
    text = SEED_CLIENT.read_text(encoding="utf-8")
    text = text[: text.index("\nfunction main(")]
    text = re.sub(r"^import .*$", "", text, flags=re.MULTILINE)
    return text.replace("export class", "class")


#: Renders each click as a <pre> holding the JSON the client was handed.
PAGE_SCRIPT = """
([url, token]) => {
  window.__control = [];
  const client = new DashboardSocketClient(url, token, {
    heartbeatMs: 3600000,
    onControl: (data) => window.__control.push(data.type),
  });
  client.on('click', (data) => {
    const pre = document.createElement('pre');
    pre.className = 'click';
    pre.dataset.messageId = data.message_id;
    pre.textContent = JSON.stringify(data);
    document.body.appendChild(pre);
  });
  client.connect();
}
"""


class SeedPage:
    def __init__(self, bt: BrowserThread, origin: str, token: str) -> None:
        self.bt = bt
        self.origin = origin
        self.token = token
        self.context: Any = None
        self.page: Any = None

    def open(self) -> None:
        assert self.bt.browser is not None
        # The page is the gateway's JSON /health: a document of the gateway's origin
        # (so the WebSocket passes the origin check) with no script of its own.
        self.context = self.bt.browser.new_context(bypass_csp=True)
        self.page = self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT)
        self.page.goto(self.origin + "/health")
        self.page.add_script_tag(content=_browser_source())
        url = self.origin.replace("http://", "ws://") + "/ws"
        self.page.evaluate(PAGE_SCRIPT, [url, self.token])
        self.page.wait_for_function("window.__control.includes('auth_success')")

    def shown(self, message_id: str) -> dict[str, Any]:
        selector = f'pre.click[data-message-id="{message_id}"]'
        self.page.wait_for_selector(selector, timeout=EVENT_TIMEOUT)
        result: dict[str, Any] = json.loads(self.page.locator(selector).inner_text())
        return result


@asynccontextmanager
async def seed_page(bt: BrowserThread, gw: RunningGateway, token: str) -> AsyncIterator[SeedPage]:
    page = SeedPage(bt, f"http://127.0.0.1:{gw.port}", token)
    try:
        await bt.run(page.open)
        yield page
    finally:
        if page.context is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await bt.run(page.context.close)


async def test_seed_js_client_in_chromium_shows_clicks_without_visitor_data(
    start_gateway: GatewayFactory, browser_thread: BrowserThread
) -> None:
    gw = await start_gateway()
    mine = gw.token("dash-500", "DASHBOARD", user_id="500")
    admin = gw.token("admin", "DASHBOARD")
    text = click("k1")
    with trio.fail_after(60):
        async with (
            seed_page(browser_thread, gw, mine) as affiliate,
            seed_page(browser_thread, gw, admin) as operator,
        ):
            async with gw.client("CATS") as cats:
                await cats.send(text)
            shown = await browser_thread.run(affiliate.shown, "k1")
            whole = await browser_thread.run(operator.shown, "k1")
    rendered = json.dumps(shown)
    for secret in SECRETS:
        assert secret not in rendered
    assert shown["payload"]["owner_id"] == 500
    assert shown["payload"]["access_id"] == 67890
    assert whole == json.loads(text)  # the admin dashboard: everything, as sent


async def test_seed_js_client_authenticates_with_a_jwt(
    start_gateway: GatewayFactory, browser_thread: BrowserThread
) -> None:
    """Issue 13: the seed's browser client, unchanged, sends a JWT where it sent an
    opaque token ({"type":"auth","token":...}); a user-bound one gets its
    affiliate's clicks, projected like any user-bound token's."""
    gw = await start_gateway(jwt={"secret": JWT_SECRET})
    token = mint(
        JwtConfig(secret=JWT_SECRET), sub="aff-500", client_type="DASHBOARD", ttl=3600,
        user_id="500",
    )  # fmt: skip
    with trio.fail_after(60):
        async with seed_page(browser_thread, gw, token) as affiliate:
            (conn,) = [c for c in gw.gateway.connections if c.principal is not None]
            assert conn.principal is not None
            assert (conn.principal.credential, conn.principal.identity) == ("jwt", "aff-500")
            async with gw.client("CATS") as cats:
                await cats.send(click("j-other", 501))
                await cats.send(click("j1"))
            shown = await browser_thread.run(affiliate.shown, "j1")
            ids = await browser_thread.run(
                affiliate.page.evaluate,
                "[...document.querySelectorAll('pre.click')].map(p => p.dataset.messageId)",
            )
    assert ids == ["j1"]  # not the other affiliate's
    assert shown["payload"]["owner_id"] == 500
    assert not any(secret in json.dumps(shown) for secret in SECRETS)

