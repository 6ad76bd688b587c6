"""The dashboard's browser client (catsock.js) authenticating with a JWT in real
Chromium, as tests/browser/test_dashboard.py drives it (its helpers are reused): a
user-bound JWT sees only its affiliate's events, and an expired one ends the
session (TOKEN_EXPIRED, then the reconnect is refused as ``token expired``)."""

from __future__ import annotations

import trio

from catsock.config import JwtConfig
from catsock.jwtauth import mint
from tests.catsock.harness import CONVERSION, GatewayFactory
from tests.catsock.jwtkit import SECRET

from .test_dashboard import (
    PAGE_TIMEOUT,
    BrowserThread,
    Tab,
    _login,
    _publish,
    _tab,
    _wait_connected,
    _wait_event,
    browser_thread,
    pytestmark,
)

__all__ = ["browser_thread", "pytestmark"]  # the fixture and the skip markers, reused

FEED_IDS = "[...document.querySelectorAll('#feed li')].map(li => li.dataset.messageId)"


async def test_a_user_bound_jwt_logs_in_and_sees_only_its_affiliate(
    browser_thread: BrowserThread, start_gateway: GatewayFactory
) -> None:
    with trio.fail_after(40):
        gw = await start_gateway(jwt={"secret": SECRET})
        token = mint(
            JwtConfig(secret=SECRET),
            sub="affiliate-500",
            client_type="DASHBOARD",
            ttl=3600,
            user_id="500",
        )
        other = {**CONVERSION, "owner_id": 501, "tier_rewards": []}
        mine = {**CONVERSION, "owner_id": 500, "tier_rewards": []}
        async with _tab(browser_thread, gw) as tab:
            await browser_thread.run(_login, tab, token)
            await browser_thread.run(_wait_connected, tab)
            (conn,) = [c for c in gw.gateway.connections if c.principal is not None]
            assert conn.principal is not None
            assert conn.principal.credential == "jwt"
            assert conn.principal.identity == "affiliate-500"
            await _publish(gw, ("conversion", other, "conv-501"), ("conversion", mine, "conv-500"))
            await browser_thread.run(_wait_event, tab, "conv-500")
            assert await browser_thread.run(tab.page.evaluate, FEED_IDS) == ["conv-500"]
            assert tab.page_errors == []


def _wait_failed(tab: Tab) -> None:
    tab.page.wait_for_selector('#status[data-state="failed"]', timeout=PAGE_TIMEOUT)


async def test_an_expired_jwt_ends_the_browser_session(
    browser_thread: BrowserThread, start_gateway: GatewayFactory
) -> None:
    # Real time (Chromium's): a token that lives a few seconds.
    with trio.fail_after(60):
        gw = await start_gateway(jwt={"secret": SECRET})
        token = mint(JwtConfig(secret=SECRET), sub="kiosk", client_type="DASHBOARD", ttl=3)
        async with _tab(browser_thread, gw) as tab:
            await browser_thread.run(_login, tab, token)
            await browser_thread.run(_wait_connected, tab)
            # At exp the gateway sends TOKEN_EXPIRED and closes 4002; catsock.js
            # reconnects with the same token, which is refused for good.
            await browser_thread.run(_wait_failed, tab)
            assert gw.gateway.stats.errors.get("TOKEN_EXPIRED") == 1
