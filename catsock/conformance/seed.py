"""The ``seed`` profile: exactly what seed 000 §4 and §7 define, and what the
seed's PHP client (§5.2) and browser client (§9.6) rely on. Any gateway that
claims the protocol passes these; none of catsock's own choices (error codes
beyond §7.1, close codes, validation, the DASHBOARD copy, user channels) is
checked here: those are the ``strict`` profile's.

Events compare as JSON (the envelope arrives whole, §4.2), not byte for byte:
that a gateway forwards the publisher's exact text is catsock's rule (§5).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from functools import cache
from typing import Any, Final

import trio

from protocol import ErrorCode
from protocol.conformance import load_decode_vectors

from .conn import _PING, _clip, _Conn, _describe, _open_stream
from .frames import _fresh_id
from .results import _Fail, _Skip
from .runner import CheckFn, _Check, _Ctx
from .session_vectors import _json_equal
from .tokens import TOKEN_KINDS, _client_type

#: Seed 000 §7.1's codes; one of the two for a frame that is not JSON.
_NOT_JSON_CODES: Final = (ErrorCode.INVALID_MESSAGE, ErrorCode.PROCESSING_ERROR)

#: Seed 000 §4.3's direction column: event vectors (protocol/vectors) by publisher,
#: with the client type each goes to. budget_update (§5.4 only) is left out.
_DIRECTIONS: Final = {
    "CATS": (
        "AFAD",
        (
            "conversion_seed_example",
            "click_php_dispatch_with_reward",
            "tier_reward_php_dispatch",
            "budget_alert_php_dispatch",
            "fraud_alert_php_dispatch",
        ),
    ),
    "AFAD": ("CATS", ("adware_update_seed_example",)),
}
_DASHBOARD_EVENTS: Final = ("stats_update_full", "user_online")


def seed_checks() -> list[_Check]:
    """The seed profile's checks, in the order a run performs them."""
    return [
        _Check(
            "seed.handshake",
            _handshake,
            rule="the handshake answers with the status line '101 Switching Protocols', "
            "which the seed PHP client looks for (seed 000 §5.2)",
            section="§11.1",
        ),
        _Check(
            "seed.auth_success",
            _auth_success,
            rule="auth is answered first of all with auth_success carrying a connection_id "
            "(seed 000 §4.1)",
            section="§2",
        ),
        _Check(
            "seed.auth_failed",
            _auth_failed,
            rule="a bad token gets error AUTH_FAILED, then the connection is closed "
            "(seed 000 §7.1, §5.9)",
            section="§2",
        ),
        _Check(
            "seed.auth_required",
            _auth_required,
            ("CATS",),
            rule="a message before auth gets error AUTH_REQUIRED and no pong; auth still "
            "works afterwards (seed 000 §7.1, §5.9)",
            section="§2",
        ),
        _Check(
            "seed.ping_pong",
            _ping_pong,
            ("DASHBOARD",),
            rule="after auth, a ping is answered with pong (seed 000 §4.1, §4.3)",
            section="§3.1",
        ),
        _Check(
            "seed.not_json",
            _not_json,
            ("CATS",),
            rule="a frame that is not JSON gets an error with a seed code (INVALID_MESSAGE or "
            "PROCESSING_ERROR) and payload.error_message; the connection stays open "
            "(seed 000 §7.1)",
            section="§6.1",
        ),
        _Check(
            "seed.cats_to_afad",
            _route("CATS"),
            ("CATS", "AFAD"),
            rule="conversion, click, tier_reward, budget_alert and fraud_alert from CATS reach "
            "AFAD with their envelope, not another CATS and not the publisher "
            "(seed 000 §4.2, §4.3)",
            section="§8.1",
        ),
        _Check(
            "seed.afad_to_cats",
            _route("AFAD"),
            ("AFAD", "CATS"),
            rule="adware_update from AFAD reaches CATS with its envelope, not another AFAD and "
            "not the publisher (seed 000 §4.2.2, §4.3)",
            section="§8.1",
        ),
        _Check(
            "seed.cats_to_dashboard",
            _dashboard,
            ("CATS", "DASHBOARD"),
            rule="stats_update and user_online from CATS reach DASHBOARD with their envelope "
            "(seed 000 §4.3)",
            section="§8.1",
        ),
    ]


@cache
def _vector_frames() -> Mapping[str, str | bytes]:
    return {v.name: v.data() for v in load_decode_vectors() if v.accepts}


def _fresh(name: str) -> str:
    text = _fresh_id(_vector_frames()[name])
    assert isinstance(text, str)
    return text


async def _handshake(ctx: _Ctx) -> None:
    target = ctx.runner.target
    ctx.waiting = "the handshake's status line"
    stream = await _open_stream(target)
    try:
        request = (
            f"GET {target.resource} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(request.encode())
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            head += chunk
    finally:
        await trio.aclose_forcefully(stream)
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if not status.startswith("HTTP/1.1 101"):
        raise _Fail(f"the handshake was answered with {status!r}")
    if status != "HTTP/1.1 101 Switching Protocols":
        raise _Fail(f"the status line is {status!r}, not 'HTTP/1.1 101 Switching Protocols'")


async def _auth_success(ctx: _Ctx) -> None:
    kinds = [k for k in TOKEN_KINDS if ctx.has(k)]
    if not kinds:
        raise _Skip("no token given")
    for kind in kinds:
        conn = await ctx.connect(kind)
        auth = {"type": "auth", "token": ctx.runner.tokens[kind], "client_type": _client_type(kind)}
        await conn.send(json.dumps(auth))
        msg = await conn.recv("auth_success")
        if not isinstance(msg.obj, dict) or msg.obj.get("type") != "auth_success":
            raise _Fail(f"{kind}: the first message after auth is {_describe(msg)}")
        connection_id = msg.obj.get("connection_id")
        if not isinstance(connection_id, str) or not connection_id:
            raise _Fail(f"{kind}: auth_success has no connection_id string: {_clip(msg.data)}")
        await conn.aclose()


async def _auth_failed(ctx: _Ctx) -> None:
    conn = await ctx.connect("bad token")
    token = f"conformance-wrong-{uuid.uuid4().hex}"
    await conn.send(json.dumps({"type": "auth", "token": token, "client_type": "CATS"}))
    await _expect_seed_error(conn, (ErrorCode.AUTH_FAILED,))
    ctx.waiting = "bad token: the close after AUTH_FAILED"
    msg = await _next_or_close(conn)
    if msg is not None:
        raise _Fail(f"after AUTH_FAILED the gateway sent {_describe(msg)} instead of closing")
    ctx.notes.append(f"closed with {conn.close_code}")


async def _auth_required(ctx: _Ctx) -> None:
    conn = await ctx.connect("CATS")
    await conn.send(_PING)
    await _expect_seed_error(conn, (ErrorCode.AUTH_REQUIRED,))
    auth = {"type": "auth", "token": ctx.runner.tokens["CATS"], "client_type": "CATS"}
    await conn.send(json.dumps(auth))
    # The next message after the error is auth_success: the ping got no pong.
    await conn.expect_type("auth_success")
    await conn.send(_PING)
    await conn.expect_type("pong")


async def _ping_pong(ctx: _Ctx) -> None:
    conn = await ctx.login("DASHBOARD")  # the seed browser client's 30-s ping
    await conn.send(_PING)
    await conn.expect_type("pong")


async def _not_json(ctx: _Ctx) -> None:
    conn = await ctx.login("CATS")
    await conn.send("this is not JSON")
    await _expect_seed_error(conn, _NOT_JSON_CODES)
    await conn.send(_PING)
    await conn.expect_type("pong")


def _route(publisher: str) -> CheckFn:
    recipient, names = _DIRECTIONS[publisher]

    async def run(ctx: _Ctx) -> None:
        await _publish_and_watch(ctx, publisher, recipient, [_fresh(n) for n in names])

    return run


async def _dashboard(ctx: _Ctx) -> None:
    await _publish_and_watch(ctx, "CATS", "DASHBOARD", [_fresh(n) for n in _DASHBOARD_EVENTS])


async def _publish_and_watch(ctx: _Ctx, publisher: str, recipient: str, texts: list[str]) -> None:
    sender = await ctx.login(publisher, "publisher")
    watcher = await ctx.login(recipient, "recipient")
    same = await ctx.login(publisher, "observer") if publisher != recipient else None
    for text in texts:
        await sender.send(text)
    for text in texts:
        await _expect_envelope(watcher, text)
    await sender.quiet()  # no echo
    if same is not None:
        await same.quiet()  # not routed back to the publishing client type


async def _expect_envelope(conn: _Conn, text: str) -> None:
    """The next message is the event ``text`` as JSON: the whole envelope, unchanged."""
    want = json.loads(text)
    msg = await conn.recv(f"the {want['type']} event")
    if _json_equal(msg.obj, want):
        return
    if isinstance(msg.obj, dict) and msg.obj.get("message_id") == want["message_id"]:
        changed = sorted(
            k for k in set(want) | set(msg.obj) if not _json_equal(msg.obj.get(k), want.get(k))
        )
        raise _Fail(f"{conn.label}: the {want['type']} event arrived changed (keys {changed})")
    raise _Fail(f"{conn.label}: expected the {want['type']} event, got {_clip(msg.data)}")


async def _expect_seed_error(conn: _Conn, codes: tuple[str, ...]) -> None:
    """The next message is a seed ``error``: payload.error_code one of ``codes`` and
    a payload.error_message string (seed 000 §5.9's sendError)."""
    what = f"error {' or '.join(codes)}"
    msg = await conn.recv(what)
    payload = msg.obj.get("payload") if isinstance(msg.obj, dict) else None
    if not isinstance(msg.obj, dict) or msg.obj.get("type") != "error":
        raise _Fail(f"{conn.label}: expected {what}, got {_describe(msg)}")
    if not isinstance(payload, dict) or payload.get("error_code") not in codes:
        code = payload.get("error_code") if isinstance(payload, dict) else None
        raise _Fail(f"{conn.label}: expected {what}, got error_code {code!r}")
    if not isinstance(payload.get("error_message"), str):
        raise _Fail(f"{conn.label}: the error has no payload.error_message string")


async def _next_or_close(conn: _Conn) -> Any:
    """The next message, or None once the gateway closed the connection."""
    try:
        return await conn.recv("the close")
    except _Fail:
        if conn.closed:
            return None
        raise
