"""Attacks in the JSON: deep nesting, duplicate keys, NaN and Infinity, huge
numbers, spoofed senders, script in payloads, and keys meant for redaction."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import trio

import storage
from tests.catsock.harness import CONVERSION, envelope

from .conftest import Arena, Target
from .tools import Wire, authenticate, differences, http, next_json, text_frame, ws_from


async def authenticated(target: Target, name: str, client_type: str, **kw: Any) -> Wire:
    token = await target.token(name, client_type, kw.get("user_id"))
    wire = await ws_from(target.port)
    await authenticate(wire, token, client_type)
    return wire


async def refusals(wire: Wire, texts: dict[str, str]) -> dict[str, str]:
    """Send each text, then a ping; the error code each got (texts in order), while the
    connection stays open."""
    for text in texts.values():
        await wire.stream.send_all(text_frame(text))
    await wire.stream.send_all(text_frame('{"type":"ping"}'))
    codes = []
    while (reply := await next_json(wire))["type"] != "pong":
        codes.append(reply["payload"]["error_code"] if reply["type"] == "error" else reply)
    return dict(zip(texts, codes, strict=True))


def published(target: Target, *message_ids: str) -> list[str]:
    """Which of ``message_ids`` made it into the event log."""
    db = storage.open_db(target.gw.database)
    try:
        return [mid for mid in message_ids if storage.events_by_message_id(db, mid)]
    finally:
        db.close()


def conversion_text(message_id: str, payload_json: str, sender: str = "CATS") -> str:
    """A conversion whose payload is given as JSON text (so it may be anything)."""
    head = json.dumps(
        {
            "version": "1.0",
            "type": "conversion",
            "timestamp": "2026-01-01T00:00:00Z",
            "message_id": message_id,
            "sender": sender,
        }
    )[:-1]
    return f'{head},"payload":{payload_json}}}'


BASE = json.dumps(CONVERSION)[:-1]  # the seed conversion's payload, without its "}"


def with_cost(value: str) -> str:
    return BASE.replace('"cost": 1000', f'"cost": {value}') + "}"


def with_pay_id(value: str) -> str:
    return BASE.replace('"pay_id": 12345', f'"pay_id": {value}') + "}"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _duplicate(message_id: str, key: str, first: str, second: str) -> str:
    text = conversion_text(message_id, BASE + "}")
    return text.replace(f'"{key}": "{first}"', f'"{key}": "{first}", "{key}": "{second}"')


OBJECTS = '{"a":' * 10_000 + "1" + "}" * 10_000

#: name: the text sent; its message_id is the name.
HOSTILE_JSON: dict[str, str] = {
    "nested-33-levels": conversion_text("nested-33-levels", f'{BASE},"x":{nested(31)}}}'),
    "nested-30000-arrays": conversion_text("nested-30000-arrays", f'{BASE},"x":{nested(30_000)}}}'),
    "nested-10000-objects": conversion_text("nested-10000-objects", f'{BASE},"x":{OBJECTS}}}'),
    "duplicate-sender": _duplicate("duplicate-sender", "sender", "CATS", "AFAD"),
    "duplicate-type": _duplicate("duplicate-type", "type", "conversion", "budget_update"),
    "duplicate-owner": conversion_text("duplicate-owner", f'{BASE},"owner_id":501}}'),
    "NaN": conversion_text("NaN", with_cost("NaN")),
    "Infinity": conversion_text("Infinity", with_cost("Infinity")),
    "-Infinity": conversion_text("-Infinity", with_cost("-Infinity")),
    "1e400": conversion_text("1e400", with_cost("1e400")),
    "pay-id-2^64": conversion_text("pay-id-2^64", with_pay_id("18446744073709551616")),
    "pay-id-30-digits": conversion_text("pay-id-30-digits", with_pay_id("1" + "2" * 29)),
    "5000-digit-number": conversion_text("5000-digit-number", f'{BASE},"x":1{"0" * 5000}}}'),
    "lone-surrogate": conversion_text("lone-surrogate", f'{BASE},"x":"\\ud800"}}'),
}


async def test_hostile_json_is_refused_and_the_connection_stays_usable(arena: Arena) -> None:
    """Nesting past 32 levels (by 1, by 30,000 arrays or 10,000 objects), duplicate
    keys (one of which would change the sender, the type or the owner), NaN,
    Infinity, numbers beyond a double or an integer, a lone surrogate: each is
    INVALID_MESSAGE, the connection stays open, and nothing is published, over
    WebSocket and over HTTP alike."""
    async with arena.attack() as target:
        with trio.fail_after(15):
            wire = await authenticated(target, "mallory", "CATS")
            async with wire.stream:
                codes = await refusals(wire, HOSTILE_JSON)
            token = target.gw.tokens["mallory"]
            headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            statuses = {
                name: (
                    await http(
                        target.port, "POST", "/api/publish", headers=headers, body=text.encode()
                    )
                ).status
                for name, text in HOSTILE_JSON.items()
            }
        leaked = published(target, *HOSTILE_JSON)
    assert not differences(codes, dict.fromkeys(HOSTILE_JSON, "INVALID_MESSAGE"))
    assert not differences(statuses, dict.fromkeys(HOSTILE_JSON, 400))
    assert leaked == []


# -- spoofed senders --------------------------------------------------------------------

SPOOFS: dict[str, tuple[str, str, str, str]] = {
    # name: (client type of the token, event type, sender claimed, the refusal)
    "cats-as-afad": ("CATS", "budget_update", "AFAD", "SENDER_MISMATCH"),
    "afad-as-cats": ("AFAD", "conversion", "CATS", "SENDER_MISMATCH"),
    "dashboard-as-cats": ("DASHBOARD", "conversion", "CATS", "SENDER_MISMATCH"),
    "dashboard-as-itself": ("DASHBOARD", "fraud_alert", "DASHBOARD", "EVENT_NOT_ALLOWED"),
    "afad-conversion": ("AFAD", "conversion", "AFAD", "EVENT_NOT_ALLOWED"),
    "empty-sender": ("CATS", "conversion", "", "INVALID_MESSAGE"),
    "lower-case-sender": ("CATS", "conversion", "cats", "SENDER_MISMATCH"),
}
PAYLOADS = {
    "budget_update": {"adware_id": 100, "limit": 5000},
    "conversion": CONVERSION,
    "fraud_alert": {"fraud_type": "spoof"},
}


async def test_spoofed_senders_are_refused(arena: Arena) -> None:
    """The envelope's ``sender`` is never believed: a client claiming another type is
    SENDER_MISMATCH, a type that may not publish the event is EVENT_NOT_ALLOWED, over
    WebSocket; over HTTP (where a missing sender is filled in from the token, and
    ``X-Client-Type`` names no type for a named token) the same with 403. Nothing
    reaches the event log."""
    codes: dict[str, str] = {}
    statuses: dict[str, int] = {}
    async with arena.attack() as target:
        with trio.fail_after(15):
            for name, (client_type, event_type, sender, _) in SPOOFS.items():
                wire = await authenticated(target, f"spoof-{name}", client_type, user_id="9")
                text = envelope(event_type, PAYLOADS.get(event_type, {}), sender, f"ws-{name}")
                async with wire.stream:
                    codes.update(await refusals(wire, {name: text}))
                token = target.gw.tokens[f"spoof-{name}"]
                headers = {
                    "authorization": f"Bearer {token}",
                    "x-client-type": sender or "CATS",
                }
                body = envelope(event_type, PAYLOADS.get(event_type, {}), sender, f"http-{name}")
                reply = await http(
                    target.port, "POST", "/api/publish", headers=headers, body=body.encode()
                )
                statuses[name] = reply.status
        leaked = published(target, *(f"{w}-{n}" for n in SPOOFS for w in ("ws", "http")))
    assert not differences(codes, {n: s[3] for n, s in SPOOFS.items()})
    expected_http = {n: 400 if s[3] == "INVALID_MESSAGE" else 403 for n, s in SPOOFS.items()}
    assert not differences(statuses, expected_http)
    assert leaked == []


# -- script in payloads (XSS in the dashboard's data path) ---------------------------------

SCRIPTS = {
    "adware_name": "<script>alert(1)</script>",
    "owner_name": '"><img src=x onerror=alert(document.cookie)>',
    "state": "PENDING",
    "x_html": "</script><svg onload=alert(1)>",
    "x_js": "javascript:alert(1)",
    "x_escape": "\u003cscript\u003e",
}


async def test_script_in_a_payload_reaches_the_dashboard_as_data(arena: Arena) -> None:
    """A conversion full of markup reaches a user-bound dashboard byte for byte as the
    publisher sent it (JSON text, never HTML), over WebSocket and GET /api/events
    (JSON, ``nosniff``); the dashboard's page forbids inline script (CSP) and its
    code never writes HTML; an error naming a hostile path is JSON too."""
    async with arena.attack() as target:
        with trio.fail_after(15):
            # Bound to a user of its own: the canary's conversions name user 500.
            dash_token = await target.token("xss-dash", "DASHBOARD", "777")
            async with (
                target.gw.client("DASHBOARD", "xss-dash") as dash,
                target.gw.client("CATS", "xss-cats") as cats,
            ):
                payload = {**CONVERSION, "owner_id": 777, "tier_rewards": [], **SCRIPTS}
                sent = envelope("conversion", payload, "CATS", "xss-1")
                await cats.send(sent)
                received = await dash.recv_text()
            headers = {"authorization": f"Bearer {dash_token}"}
            polled = await http(target.port, "GET", "/api/events?since=0", headers=headers)
            page = await http(target.port, "GET", "/")
            missing = await http(target.port, "GET", "/<script>alert(1)</script>")
    assert received == sent
    assert {k: json.loads(received)["payload"][k] for k in SCRIPTS} == SCRIPTS
    assert polled.headers["content-type"] == "application/json"
    assert polled.headers["x-content-type-options"] == "nosniff"
    events = polled.json()["events"]
    assert [e["payload"]["adware_name"] for e in events] == [SCRIPTS["adware_name"]]
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert missing.status == 404
    assert missing.headers["content-type"] == "application/json"
    for name in ("dashboard.js", "catsock.js", "console.js"):
        code = resources.files("catsock").joinpath("static", name).read_text()
        assert not re.search(
            r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", code
        )


# -- redaction ---------------------------------------------------------------------------

SECRETS = {
    "ipaddress": "203.0.113.1",
    "IPAddress": "203.0.113.2",
    "IpAddress": "203.0.113.3",
    "USERAGENT": "EvilAgent/4",
    "UserAgent": "EvilAgent/5",
}


async def test_redaction_keys_match_in_any_case(arena: Arena) -> None:
    """A click whose payload carries ``ipaddress`` and ``useragent`` spelled in other
    cases, at the top and nested: published (read back through the logs view) and
    refused (a messages row written at once), no value is kept in clear."""
    payload = {"access_id": 1, "adware_id": 2, "owner_id": 3, **SECRETS, "nested": [SECRETS]}
    async with arena.attack() as target:
        with trio.fail_after(15):
            async with target.gw.client("CATS", "redact-cats") as cats:
                await cats.send(envelope("click", payload, "CATS", "redact-ok"))
                await cats.send(envelope("click", payload, "AFAD", "redact-refused"))
                assert (await cats.recv())["payload"]["error_code"] == "SENDER_MISMATCH"
            await target.gateway.log.flush()
            await target.gateway.delivery.flush()
        db = storage.open_db(target.gw.database)
        try:
            rows = storage.recent_messages(
                db,
                limit=100,
                redact_fields=frozenset(target.gateway.config.log.redact),
            )
            stored = [
                r[0] for r in db.execute("SELECT payload FROM messages WHERE payload IS NOT NULL")
            ]
        finally:
            db.close()
    shown = [r["payload"] for r in rows if r["message_id"] in ("redact-ok", "redact-refused")]
    assert len(shown) == 2
    for text in [*shown, *stored]:
        assert not [v for v in SECRETS.values() if v in text], text
