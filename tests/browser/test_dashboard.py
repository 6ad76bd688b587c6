"""The dashboard (catsock/static/) in a real headless Chromium against a live gateway.

Debian's ``chromium`` is driven by playwright's sync API with ``executable_path``
(no browser download). Playwright's sync API runs its own event loop and must be
called from the thread that started it, so every browser call runs on one
dedicated worker thread (``BrowserThread``); the trio side hops there with
``trio.to_thread.run_sync`` while the gateway keeps running on the trio loop.
Waiting is always playwright's ``wait_for_*`` with a timeout, never a sleep.
Timeouts only bound a wait that something else proves will end (an event the
gateway delivered, a reconnect it allows); no test measures how fast the page is,
since a busy two-core machine makes any such bound a coin toss.

The page is loaded from the gateway's own port, as an operator would open it:
the front door serves ``/`` and ``/static/*`` (``catsock/static_files.py``),
``/metrics`` for the connections panel, and ``/ws`` for the page's WebSocket.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import trio

from catsock.server import Gateway
from catsock.static_files import CONTENT_SECURITY_POLICY, static_response
from tests.catsock.harness import CONVERSION, GatewayFactory, RunningGateway, envelope

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HAS_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
HAS_CHROMIUM = shutil.which(CHROMIUM) is not None
#: Milliseconds a page action or a wait for the page's state may take; generous, as
#: Chromium on a busy machine is slow, and every wait ends early when it succeeds.
PAGE_TIMEOUT = 15_000
#: Milliseconds for an event the gateway has delivered to show in the feed.
EVENT_TIMEOUT = 10_000


pytestmark = [
    pytest.mark.skipif(
        not HAS_PLAYWRIGHT, reason="playwright not installed: pip install playwright"
    ),
    pytest.mark.skipif(not HAS_CHROMIUM, reason=f"{CHROMIUM} not found: apt-get install chromium"),
]

T = TypeVar("T")

#: A payload that runs code if anything renders it as HTML.
HOSTILE = "<script>window.__xss = 'script'</script><img src=x onerror=\"window.__xss = 'img'\">"


class BrowserThread:
    """Chromium on one worker thread; ``await bt.run(fn, ...)`` runs ``fn`` there."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self._playwright: Playwright | None = None
        self.browser: Browser | None = None

    def start(self) -> None:
        self._executor.submit(self._start).result(timeout=60)

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )

    def stop(self) -> None:
        self._executor.submit(self._stop).result(timeout=60)
        self._executor.shutdown()

    def _stop(self) -> None:
        if self.browser is not None:
            self.browser.close()
        if self._playwright is not None:
            self._playwright.stop()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        future = self._executor.submit(fn, *args)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)


@pytest.fixture(scope="module")
def browser_thread() -> Iterator[BrowserThread]:
    bt = BrowserThread()
    bt.start()
    try:
        yield bt
    finally:
        bt.stop()


class Tab:
    """One page in its own browser context, with what it logged and raised."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        self.websockets: list[str] = []
        self.document_status = 0
        self.document_headers: dict[str, str] = {}
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("dialog", self._dialog)
        page.on("websocket", lambda ws: self.websockets.append(ws.url))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def csp_violations(self) -> list[str]:
        return [e for e in self.console_errors if "Content Security Policy" in e]


def _open_tab(browser: Browser, origin: str) -> Tab:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT)
    tab = Tab(context, page)
    response = page.goto(origin + "/")
    assert response is not None
    tab.document_status = response.status
    tab.document_headers = response.all_headers()
    page.wait_for_selector("#login-form")
    return tab


def _login(tab: Tab, token: str) -> None:
    tab.page.fill("#token", token)
    tab.page.click("#login-button")


def _wait_connected(tab: Tab, timeout: float = PAGE_TIMEOUT) -> None:
    try:
        tab.page.wait_for_selector('#status[data-state="connected"]', timeout=timeout)
    except Exception as exc:
        status = tab.page.locator("#status").inner_text()
        raise AssertionError(
            f"not connected: status {status!r}, console errors {tab.console_errors},"
            f" page errors {tab.page_errors}"
        ) from exc
    tab.page.wait_for_selector("#dashboard", state="visible", timeout=timeout)


def _wait_event(tab: Tab, message_id: str, timeout: float = EVENT_TIMEOUT) -> None:
    """Wait until the feed shows ``message_id``."""
    tab.page.wait_for_selector(f'#feed li[data-message-id="{message_id}"]', timeout=timeout)


def _text(tab: Tab, selector: str) -> str:
    return tab.page.locator(selector).first.inner_text()


def _content(tab: Tab, selector: str) -> str:
    """All text, also of collapsed parts (a closed <details>)."""
    return tab.page.locator(selector).first.text_content() or ""


@asynccontextmanager
async def _tab(bt: BrowserThread, gw: RunningGateway) -> AsyncIterator[Tab]:
    assert bt.browser is not None
    tab = await bt.run(_open_tab, bt.browser, f"http://127.0.0.1:{gw.port}")
    try:
        yield tab
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await bt.run(tab.context.close)


class Served:
    """A gateway run in its own task, so a test can stop it and start another."""

    def __init__(self, factory: GatewayFactory) -> None:
        self.factory = factory

    async def start(
        self,
        nursery: trio.Nursery,
        *,
        port: int = 0,
        database: str | None = None,
        tokens: dict[str, str] | None = None,
    ) -> tuple[RunningGateway, trio.Event]:
        overrides: dict[str, Any] = {"port": port}
        if database is not None:
            overrides["database"] = database
        config = self.factory.config(**overrides)
        gateway = Gateway(config)
        done = trio.Event()

        async def serve(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
            try:
                await gateway.serve(task_status=task_status)
            finally:
                done.set()

        _, bound = await nursery.start(serve)
        return RunningGateway(gateway, bound, Path(config.database), tokens or {}), done


async def _publish(gw: RunningGateway, *events: tuple[str, dict[str, Any], str]) -> None:
    async with gw.client("CATS", "cats") as cats:
        for type_, payload, message_id in events:
            await cats.send(envelope(type_, payload, "CATS", message_id))
        # A ping answered means every event before it was read and routed.
        await cats.send({"type": "ping"})
        assert (await cats.recv())["type"] == "pong"


# -- tests -----------------------------------------------------------------------------------


async def test_static_files_have_types_and_csp() -> None:
    for path, content_type in [
        ("/", "text/html; charset=utf-8"),
        ("/static/catsock.js", "text/javascript; charset=utf-8"),
        ("/static/dashboard.js", "text/javascript; charset=utf-8"),
        ("/static/dashboard.css", "text/css; charset=utf-8"),
    ]:
        found = static_response(path)
        assert found is not None, path
        status, headers, body = found
        h = dict(headers)
        assert status == 200
        assert h["content-type"] == content_type
        assert h["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert h["x-content-type-options"] == "nosniff"
        assert int(h["content-length"]) == len(body) > 0
    html = static_response("/")
    assert html is not None
    # The CSP forbids inline code: the page has none.
    assert b"<script>" not in html[2]
    assert b"style=" not in html[2]
    assert b"<style" not in html[2]
    for path in ["/static/../server.py", "/static/", "/static/x.py", "/static/.x.js", "/api"]:
        assert static_response(path) is None, path


async def test_live_feed_survives_gateway_restart(
    browser_thread: BrowserThread,
    start_gateway: GatewayFactory,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    served = Served(start_gateway)
    with trio.fail_after(60):
        gw, stopped = await served.start(nursery)
        token = gw.token("admin-dashboard", "DASHBOARD")
        async with _tab(browser_thread, gw) as tab:
            # The front door served the page with its type and the strict CSP.
            assert tab.document_status == 200
            assert tab.document_headers["content-type"] == "text/html; charset=utf-8"
            assert tab.document_headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert tab.document_headers["x-content-type-options"] == "nosniff"

            await browser_thread.run(_login, tab, token)
            await browser_thread.run(_wait_connected, tab)
            # The token went in the auth message, never into a URL.
            assert token not in tab.page.url
            assert tab.websockets == [f"ws://127.0.0.1:{gw.port}/ws"]

            await _publish(gw, ("conversion", CONVERSION, "conv-1"))
            await browser_thread.run(_wait_event, tab, "conv-1")
            summary = await browser_thread.run(_text, tab, '#feed li[data-message-id="conv-1"]')
            assert "商品A" in summary
            assert "アフィリエイターX" in summary
            assert await browser_thread.run(_text, tab, "#count-conversion") == "1"
            assert await browser_thread.run(_text, tab, "#sum-sales") == "5,000"

            # Alerts are highlighted in their own panel.
            alert = {
                "adware_id": "100",
                "current_budget": 85500,
                "limit": 100000,
                "usage_percentage": 85.5,
            }
            fraud = {"fraud_type": "CLICK_FLOOD", "details": {"clicks": 57}}
            await _publish(
                gw,
                ("click", {"access_id": 1, "adware_id": 100, "owner_id": 500}, "click-1"),
                ("budget_alert", alert, "budget-1"),
                ("fraud_alert", fraud, "fraud-1"),
            )
            await browser_thread.run(_wait_event, tab, "fraud-1")
            await browser_thread.run(
                tab.page.wait_for_selector, '#alerts li.alert[data-message-id="budget-1"]'
            )
            assert await browser_thread.run(_text, tab, "#count-alerts") == "2"
            assert await browser_thread.run(_text, tab, "#count-click") == "1"
            counted = await browser_thread.run(
                tab.page.evaluate, "window.catsockDashboard.rate.reduce((a, b) => a + b, 0)"
            )
            assert counted == 4
            # Connections by client type, from /metrics: this dashboard is one.
            await browser_thread.run(
                tab.page.wait_for_selector, '#connections-body tr[data-client-type="DASHBOARD"]'
            )
            assert (
                await browser_thread.run(_text, tab, "#connections-title")
                == "Connections by client type"
            )

            shot = tmp_path / "dashboard.png"
            await browser_thread.run(lambda: tab.page.screenshot(path=str(shot), full_page=True))
            data = shot.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
            assert len(data) > 1_000

            # Restart: same port, same database (so the same token).
            await gw.gateway.shutdown()
            await stopped.wait()
            await browser_thread.run(
                tab.page.wait_for_selector, '#status[data-state="reconnecting"]'
            )
            gw2, _ = await served.start(
                nursery, port=gw.port, database=str(gw.database), tokens=gw.tokens
            )
            # Published while the dashboard waits to reconnect (its first retry comes
            # 2 s ±20 % after the close): catsock.js resumes from the last seq it saw.
            await _publish(gw2, ("conversion", {**CONVERSION, "pay_id": 3}, "conv-gap"))
            await browser_thread.run(_wait_connected, tab, 15_000)
            await browser_thread.run(_wait_event, tab, "conv-gap")
            await _publish(gw2, ("conversion", {**CONVERSION, "pay_id": 2}, "conv-2"))
            await browser_thread.run(_wait_event, tab, "conv-2")
            assert await browser_thread.run(_text, tab, "#count-conversion") == "3"

            assert tab.csp_violations() == []
            assert tab.page_errors == []
        await gw2.gateway.shutdown()


async def test_bad_token_is_refused_visibly(
    browser_thread: BrowserThread, start_gateway: GatewayFactory
) -> None:
    with trio.fail_after(30):
        gw = await start_gateway()
        good = gw.token("admin-dashboard", "DASHBOARD")
        async with _tab(browser_thread, gw) as tab:
            await browser_thread.run(_login, tab, "not-a-real-token")
            await browser_thread.run(_wait_visible, tab, "#login-error")
            message = await browser_thread.run(_text, tab, "#login-error")
            assert "AUTH_FAILED" in message
            assert "refused" in message
            assert await browser_thread.run(_text, tab, "#status") == "refused: AUTH_FAILED"
            assert await browser_thread.run(tab.page.is_hidden, "#dashboard")
            # Final: no reconnect is scheduled, and the token is not kept.
            client_state = await browser_thread.run(
                tab.page.evaluate,
                "({state: window.catsockDashboard.client.state,"
                " timer: window.catsockDashboard.client.reconnectTimer,"
                " saved: sessionStorage.getItem('catsock.dashboard.token')})",
            )
            assert client_state == {"state": "failed", "timer": None, "saved": None}
            assert gw.gateway.stats.auth_failures == 1
            assert "not-a-real-token" not in tab.page.url

            # A good token afterwards works, and the error goes away.
            await browser_thread.run(_login, tab, good)
            await browser_thread.run(_wait_connected, tab)
            assert await browser_thread.run(tab.page.is_hidden, "#login-error")
            assert tab.csp_violations() == []


def _wait_visible(tab: Tab, selector: str) -> None:
    tab.page.wait_for_selector(selector, state="visible")


async def test_payload_markup_is_shown_as_text_and_never_run(
    browser_thread: BrowserThread, start_gateway: GatewayFactory
) -> None:
    with trio.fail_after(30):
        gw = await start_gateway()
        token = gw.token("admin-dashboard", "DASHBOARD")
        async with _tab(browser_thread, gw) as tab:
            await browser_thread.run(_login, tab, token)
            await browser_thread.run(_wait_connected, tab)
            hostile = {
                **CONVERSION,
                "adware_name": HOSTILE,
                "owner_name": "<img src=x onerror=alert(1)>",
            }
            fraud = {"fraud_type": "<svg onload=alert(2)>", "details": {"note": HOSTILE}}
            await _publish(gw, ("conversion", hostile, "xss-1"), ("fraud_alert", fraud, "xss-2"))
            await browser_thread.run(_wait_event, tab, "xss-2")
            await browser_thread.run(_wait_event, tab, "xss-1")
            summary = await browser_thread.run(_text, tab, '#feed li[data-message-id="xss-1"]')
            assert HOSTILE in summary
            assert "<img src=x onerror=alert(1)>" in summary
            payload = await browser_thread.run(
                _content, tab, '#feed li[data-message-id="xss-1"] .event-payload'
            )
            assert json.loads(payload)["adware_name"] == HOSTILE
            alert_text = await browser_thread.run(_text, tab, '#alerts li[data-message-id="xss-2"]')
            assert "<svg onload=alert(2)>" in alert_text
            # Nothing became an element, nothing ran.
            injected = await browser_thread.run(
                tab.page.evaluate,
                "document.querySelectorAll('#feed img, #feed script, #feed svg,"
                " #alerts img, #alerts script, #alerts svg').length",
            )
            assert injected == 0
            assert await browser_thread.run(tab.page.evaluate, "window.__xss") is None
            assert tab.dialogs == []
            assert tab.page_errors == []


async def test_user_bound_token_sees_only_its_users_events(
    browser_thread: BrowserThread, start_gateway: GatewayFactory
) -> None:
    with trio.fail_after(40):
        gw = await start_gateway()
        admin_token = gw.token("admin-dashboard", "DASHBOARD")
        user_token = gw.token("affiliate-500", "DASHBOARD", user_id="500")
        other = {
            **CONVERSION,
            "owner_id": 501,
            "tier_rewards": [{"tier_level": 1, "user_id": 502, "amount": 100}],
        }
        mine = {**CONVERSION, "owner_id": 500, "tier_rewards": []}
        alert = {"adware_id": 100, "current_budget": 1, "limit": 2, "usage_percentage": 50}
        async with _tab(browser_thread, gw) as admin, _tab(browser_thread, gw) as user:
            await browser_thread.run(_login, admin, admin_token)
            await browser_thread.run(_login, user, user_token)
            await browser_thread.run(_wait_connected, admin)
            await browser_thread.run(_wait_connected, user)
            await _publish(
                gw,
                ("conversion", other, "conv-501"),
                ("budget_alert", alert, "budget-1"),
                ("conversion", mine, "conv-500"),
                ("click", {"access_id": 7, "adware_id": 100, "owner_id": "500"}, "click-500"),
            )
            # Events arrive in order, so once the last one is there the others
            # were either delivered before it or never will be.
            await browser_thread.run(_wait_event, user, "click-500")
            user_ids = await browser_thread.run(
                user.page.evaluate,
                "[...document.querySelectorAll('#feed li')].map(li => li.dataset.messageId)",
            )
            assert user_ids == ["click-500", "conv-500"]
            assert await browser_thread.run(_text, user, "#count-alerts") == "0"

            await browser_thread.run(_wait_event, admin, "click-500")
            admin_ids = await browser_thread.run(
                admin.page.evaluate,
                "[...document.querySelectorAll('#feed li')].map(li => li.dataset.messageId)",
            )
            assert admin_ids == ["click-500", "conv-500", "budget-1", "conv-501"]


#: catsock.js driven in the page against a scripted WebSocket: what it sends, how
#: it dispatches, when it reconnects. Resolves to a report object.
CLIENT_SCRIPT = """
async () => {
  const sockets = [];
  class FakeSocket {
    constructor(url) { this.url = url; this.sent = []; this.closed = null; sockets.push(this); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close(code, reason) { this.closed = {code, reason}; }
    open() { this.onopen && this.onopen({}); }
    deliver(obj) { this.onmessage && this.onmessage({data: JSON.stringify(obj)}); }
    drop(code) { this.onclose && this.onclose({code, reason: ''}); }
  }
  const report = {};
  const seen = [];
  const client = new CatsockClient({
    url: 'ws://gateway.test/ws', token: 'tok-1', WebSocket: FakeSocket,
    pingInterval: 30, random: () => 0.5,
  });
  const states = [];
  client.on('state', (s) => states.push(s));
  const off = client.on('conversion', (m) => seen.push('a:' + m.message_id));
  client.on('conversion', (m) => seen.push('b:' + m.message_id));
  client.on('conversion', () => { throw new Error('a broken handler'); });
  client.on('*', (m) => seen.push('*:' + m.type));
  client.connect();
  sockets[0].open();
  report.auth = sockets[0].sent[0];
  sockets[0].deliver({type: 'auth_success', connection_id: 'conn_1', extensions: {}});
  report.connectedState = client.state;
  sockets[0].deliver({type: 'conversion', message_id: 'm1', payload: {}});
  off();
  sockets[0].deliver({type: 'conversion', message_id: 'm2', payload: {}});
  sockets[0].onmessage({data: '{not json'});
  await new Promise((resolve) => {
    const t = setInterval(() => {
      if (sockets[0].sent.some((m) => m.type === 'ping')) { clearInterval(t); resolve(); }
    }, 5);
  });
  report.ping = sockets[0].sent.find((m) => m.type === 'ping');
  report.seen = seen;
  // The gateway goes away: a reconnect is scheduled with the first backoff delay.
  sockets[0].drop(1001);
  report.afterDrop = {state: client.state, timer: client.reconnectTimer !== null,
                      delay: client.nextRetryAt - Date.now()};
  client.close();
  report.afterClose = {state: client.state, timer: client.reconnectTimer};
  // A refused token: final, no reconnect.
  const refused = new CatsockClient({token: 'bad', WebSocket: FakeSocket});
  let authFailed = null;
  refused.on('auth_failed', (e) => { authFailed = e; });
  refused.connect();
  const s = sockets[sockets.length - 1];
  s.open();
  s.deliver({type: 'error', payload: {error_code: 'AUTH_FAILED', error_message: 'invalid'}});
  s.drop(1008);
  report.refused = {state: refused.state, timer: refused.reconnectTimer, authFailed,
                    sockets: sockets.length};
  report.backoff = [0, 0.5, 1].map((r) =>
    [1, 2, 3, 4, 5, 6, 7].map((a) => CatsockClient.backoffDelay(a, {random: () => r})));
  report.defaultUrl = CatsockClient.defaultUrl({protocol: 'https:', host: 'example.jp:8443'});
  report.states = states;
  return report;
}
"""


async def test_catsock_js_client_behaviour(
    browser_thread: BrowserThread, start_gateway: GatewayFactory
) -> None:
    with trio.fail_after(30):
        gw = await start_gateway()
        async with _tab(browser_thread, gw) as tab:
            report = await browser_thread.run(tab.page.evaluate, CLIENT_SCRIPT)
    assert report["auth"] == {
        "type": "auth",
        "token": "tok-1",
        "client_type": "DASHBOARD",
        "extensions": {"heartbeat": {}, "resume": {}},
    }
    assert report["connectedState"] == "connected"
    assert report["ping"] == {"type": "ping"}
    # Several handlers per type, unsubscribe, "*" after the type's own; a
    # throwing handler and a non-JSON frame break nothing.
    assert report["seen"] == [
        "*:auth_success",
        "a:m1",
        "b:m1",
        "*:conversion",
        "b:m2",
        "*:conversion",
    ]
    assert report["afterDrop"]["state"] == "reconnecting"
    assert report["afterDrop"]["timer"] is True
    assert 1_900 <= report["afterDrop"]["delay"] <= 2_000
    assert report["afterClose"] == {"state": "closed", "timer": None}
    refused = report["refused"]
    assert refused["state"] == "failed"
    assert refused["timer"] is None
    assert refused["authFailed"]["error_code"] == "AUTH_FAILED"
    assert refused["sockets"] == 2  # no second attempt with the refused token
    # 2 s doubling, capped at 60 s before a ±20 % jitter.
    assert report["backoff"] == [
        [1600, 3200, 6400, 12800, 25600, 48000, 48000],
        [2000, 4000, 8000, 16000, 32000, 60000, 60000],
        [2400, 4800, 9600, 19200, 38400, 72000, 72000],
    ]
    assert report["defaultUrl"] == "wss://example.jp:8443/ws"
    assert report["states"][:2] == ["connecting", "connected"]


async def test_refused_events_raise_a_gateway_alert(
    browser_thread: BrowserThread, start_gateway: GatewayFactory
) -> None:
    """Issue 11: a refusal the publisher never reads is shown to the operator: the
    dashboard turns a rise of catsock_refused_events_total into an alert naming the
    reason and the command that lists them."""
    with trio.fail_after(60):
        gw = await start_gateway(limits={"rate": {"CATS": {"per_minute": 60.0, "burst": 1}}})
        admin = gw.token("admin-dashboard", "DASHBOARD")
        async with _tab(browser_thread, gw) as tab:
            await browser_thread.run(_login, tab, admin)
            await browser_thread.run(_wait_connected, tab)
            async with gw.client("CATS", "cats") as cats:
                for i in range(2):  # burst 1: the second is refused
                    await cats.send(envelope("conversion", CONVERSION, "CATS", f"rf-{i}"))
                assert (await cats.recv())["payload"]["error_code"] == "RATE_LIMIT_EXCEEDED"
            selector = '#alerts li.gateway-alert[data-metric="catsock_refused_events_total"]'
            # The page polls /metrics every 5 s.
            await browser_thread.run(_wait_visible, tab, selector)
            summary = await browser_thread.run(_text, tab, selector + " .event-summary")
            assert summary == (
                "1 events refused from publishers (RATE_LIMIT_EXCEEDED 1):"
                " python -m catsock refused"
            )
            assert await browser_thread.run(_text, tab, "#count-alerts") == "1"
            assert tab.page_errors == []
            assert tab.csp_violations() == []
