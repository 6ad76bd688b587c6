"""The operator's console (catsock/static/console.js, issue 15) in a real headless
Chromium against a live gateway: every view with real data, driven as an operator
would, and an affiliate's token denied it.

The gateway's wall clock is the test's own, so a recipient is minutes behind
without waiting minutes; the page refreshes its views every 5 s, and every wait is
playwright's ``wait_for_*`` (see tests/browser/test_dashboard.py). Screenshots of
each view are saved under the test's tmp_path, and also under
``$CATSOCK_SCREENSHOTS`` when that is set (docs/console.png comes from there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from tests.catsock.harness import CONVERSION, Client, GatewayFactory, envelope

from .test_dashboard import (
    HAS_CHROMIUM,
    HAS_PLAYWRIGHT,
    BrowserThread,
    Tab,
    _login,
    _tab,
    _text,
    _wait_connected,
    browser_thread,
    pytestmark,
)

__all__ = ["HAS_CHROMIUM", "HAS_PLAYWRIGHT", "browser_thread", "pytestmark"]

ACKS: dict[str, Any] = {"acks": {}, "resume": {}}
T0 = 1_800_000_000.0


class Wall:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _shoot(tab: Tab, directory: Path, name: str) -> None:
    tab.page.screenshot(path=str(directory / name), full_page=True)
    extra = os.environ.get("CATSOCK_SCREENSHOTS")
    if extra:
        tab.page.screenshot(path=str(Path(extra) / name), full_page=True)


def _view(tab: Tab, name: str) -> None:
    tab.page.click(f'.console-tabs [data-view="{name}"]')
    tab.page.wait_for_selector(f"#view-{name}", state="visible")


def _wait(tab: Tab, selector: str, state: str = "visible") -> None:
    tab.page.wait_for_selector(selector, state=state)  # type: ignore[arg-type]


async def _closed(client: Client) -> tuple[int, str]:
    reason = None
    try:
        while True:
            await client.ws.get_message()
    except trio_websocket.ConnectionClosed as exc:
        reason = exc.reason
    assert reason is not None
    return reason.code, reason.reason or ""


async def test_an_operator_sees_lag_explains_retries_closes_and_revokes(
    browser_thread: BrowserThread, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    bt = browser_thread
    wall = Wall()
    with trio.fail_after(120):
        # Burst 3, then one a second: the fourth conversion is refused.
        gw = await start_gateway(
            wall_clock=wall, limits={"rate": {"CATS": {"per_minute": 60.0, "burst": 3}}}
        )
        admin = gw.token("admin", "DASHBOARD")
        gw.token("afad", "AFAD")
        texts = [envelope("conversion", CONVERSION, "CATS", f"m-{i}") for i in range(4)]
        async with gw.client("CATS", "cats") as cats:
            for text in texts:
                await cats.send(text)
            reply = await cats.recv()
            assert reply["payload"]["error_code"] == "RATE_LIMIT_EXCEEDED"
        wall.now += 120.0  # afad, offline, is two minutes behind
        async with _tab(bt, gw) as tab:
            await bt.run(_login, tab, admin)
            await bt.run(_wait_connected, tab)
            await bt.run(_wait, tab, "#console")

            # Recipients: afad is 3 events and 120 s behind, highlighted, an alert.
            lagging = '#recipients-body tr[data-identity="afad"][data-lagging="true"]'
            await bt.run(_wait, tab, lagging)
            assert await bt.run(_text, tab, lagging + " .lag-events") == "3"
            assert await bt.run(_text, tab, lagging + " .lag-seconds") == "120.0"
            alert = '#alerts li.lag-alert[data-identity="afad"]'
            await bt.run(_wait, tab, alert)
            assert await bt.run(_text, tab, alert + " .event-summary") == (
                "afad is 3 events (120 s) behind, offline"
            )
            await bt.run(_shoot, tab, tmp_path, "console-recipients.png")

            async with gw.client("AFAD", "afad", extensions=ACKS) as afad:
                seqs = [json.loads(await afad.recv_text())["seq"] for _ in range(3)]
                await afad.send({"type": "ack", "seq": seqs[-1]})
                # It returned and acked: the lag clears, and so does the alert.
                await bt.run(
                    _wait, tab, '#recipients-body tr[data-identity="afad"][data-lagging="false"]'
                )
                assert await bt.run(
                    _text, tab, '#recipients-body tr[data-identity="afad"] .lag-events'
                ) == "0"
                await bt.run(_wait, tab, alert, "detached")

                # Ledger: what became of m-0.
                await bt.run(_view, tab, "ledger")
                await bt.run(tab.page.fill, "#ledger-message-id", "m-0")
                await bt.run(tab.page.click, "#ledger-search")
                fact = '.ledger-recipient[data-recipient="afad"] li.fact'
                await bt.run(_wait, tab, fact)
                facts = await bt.run(tab.page.locator(fact).all_inner_texts)
                assert [f.split()[0] for f in facts] == ["written", "acked"]
                await bt.run(_shoot, tab, tmp_path, "console-ledger.png")

                # Refused: m-3, with its payload as text; retried and delivered.
                await bt.run(_view, tab, "refused")
                await bt.run(_wait, tab, "#refused-body tr button.retry")
                row = "#refused-body tr"
                assert texts[3] in await bt.run(_text, tab, row + " td.payload")
                assert "RATE_LIMIT_EXCEEDED" in await bt.run(_text, tab, row + " td.reason")
                await bt.run(_shoot, tab, tmp_path, "console-refused.png")
                await bt.run(tab.page.click, row + " button.retry")
                delivered = await afad.recv_text()
                assert delivered == '{"seq":4,' + texts[3][1:]  # as its publisher sent it
                await bt.run(_wait, tab, '#refused-body td.retried:has-text("accepted as seq 4")')

                # Connections: afad's is listed; closed from the console with a reason.
                await bt.run(_view, tab, "connections")
                conn = '#live-connections-body tr[data-identity="afad"]'
                await bt.run(_wait, tab, conn)
                await bt.run(_shoot, tab, tmp_path, "console-connections.png")
                await bt.run(tab.page.fill, conn + " input.close-reason", "maintenance")
                await bt.run(tab.page.click, conn + " button.close-connection")
                assert await _closed(afad) == (1008, "closed by an operator: maintenance")

            # Tokens: one created (shown once), used, revoked: its connection is cut.
            await bt.run(_view, tab, "tokens")
            await bt.run(tab.page.fill, "#token-name", "afad-2")
            await bt.run(tab.page.fill, "#token-type", "AFAD")
            await bt.run(tab.page.click, "#token-create")
            await bt.run(_wait, tab, "#token-created")
            token = await bt.run(_text, tab, "#token-created-value")
            assert token.startswith("cs_")
            gw.tokens["afad-2"] = token
            async with gw.client("AFAD", "afad-2") as fresh:
                await bt.run(_wait, tab, '#tokens-body tr[data-name="afad-2"] button.revoke')
                await bt.run(_shoot, tab, tmp_path, "console-tokens.png")
                await bt.run(tab.page.click, '#tokens-body tr[data-name="afad-2"] button.revoke')
                assert await _closed(fresh) == (1008, "token revoked")
            await bt.run(_wait, tab, '#tokens-body tr.revoked[data-name="afad-2"]')

            # The audit trail has every write, by admin.
            await bt.run(_view, tab, "audit")
            await bt.run(_wait, tab, "#audit-body tr:nth-child(4)")
            rows = await bt.run(tab.page.locator("#audit-body tr").all_inner_texts)
            actions = [r.split("\t")[3] for r in reversed(rows)]
            assert actions == ["retry", "close", "create_token", "revoke"]
            assert all(r.split("\t")[1] == "admin" for r in rows)
            assert tab.page_errors == []
            assert tab.csp_violations() == []


async def test_an_affiliate_token_sees_no_console_and_is_denied_its_endpoints(
    browser_thread: BrowserThread, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    bt = browser_thread
    with trio.fail_after(60):
        gw = await start_gateway()
        affiliate = gw.token("dash-500", "DASHBOARD", "500")
        async with _tab(bt, gw) as tab:
            await bt.run(_login, tab, affiliate)
            await bt.run(_wait_connected, tab)
            await bt.run(_wait, tab, '#console[data-access="denied"]', "attached")
            assert not await bt.run(tab.page.is_visible, "#console")
            statuses = await bt.run(
                tab.page.evaluate,
                """async (token) => {
                    const paths = ['recipients', 'ledger?message_id=x', 'refused',
                                   'connections', 'tokens', 'audit'];
                    const out = [];
                    for (const p of paths) {
                        const r = await fetch('/api/admin/' + p,
                            {headers: {Authorization: 'Bearer ' + token}});
                        out.push(r.status);
                    }
                    const posted = await fetch('/api/admin/tokens/revoke', {method: 'POST',
                        headers: {Authorization: 'Bearer ' + token},
                        body: JSON.stringify({name: 'dash-500'})});
                    out.push(posted.status);
                    return out;
                }""",
                affiliate,
            )
            assert statuses == [403] * 7
            await bt.run(_shoot, tab, tmp_path, "console-affiliate.png")
            assert tab.page_errors == []
            assert tab.csp_violations() == []


async def test_counters_and_the_rate_chart_start_from_the_log_at_login(
    browser_thread: BrowserThread, start_gateway: GatewayFactory
) -> None:
    """Events published before the page logged in are counted, charted and in the
    feed (GET /api/history), and an event that then arrives live is counted once."""
    bt = browser_thread
    with trio.fail_after(60):
        gw = await start_gateway()
        admin = gw.token("admin", "DASHBOARD")
        async with gw.client("CATS", "cats") as cats:
            for i in range(2):
                await cats.send(envelope("conversion", CONVERSION, "CATS", f"before-{i}"))
            await cats.send({"type": "ping"})
            assert (await cats.recv())["type"] == "pong"
            async with _tab(bt, gw) as tab:
                await bt.run(_login, tab, admin)
                await bt.run(_wait_connected, tab)
                await bt.run(_wait, tab, '#feed li[data-message-id="before-1"]')
                assert await bt.run(_text, tab, "#count-conversion") == "2"
                assert await bt.run(_text, tab, "#sum-sales") == "10,000"
                await cats.send(envelope("conversion", CONVERSION, "CATS", "live-0"))
                await bt.run(_wait, tab, '#feed li[data-message-id="live-0"]')
                assert await bt.run(_text, tab, "#count-conversion") == "3"
                assert await bt.run(_text, tab, "#count-total") == "3"
                charted = await bt.run(
                    tab.page.evaluate, "window.catsockDashboard.rate.reduce((a, b) => a + b, 0)"
                )
                assert charted == 3
                assert tab.page_errors == []
                assert tab.csp_violations() == []
