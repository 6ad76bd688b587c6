"""The gateway's plain HTTP endpoints (docs/http-api.md), behind the front door.

``HttpApi.handle`` routes one request, its head read by ``catsock/transport/frontdoor.py``,
to its endpoint and returns the response. Only ``POST /api/publish`` reads a body,
and only once the bearer token is accepted; every other endpoint answers without
reading one (the front door then closes the connection). Failed tokens are
throttled per client address (catsock/guard.py). Every error is JSON,
``{"error_code": ..., "error_message": ...}``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

import storage
from protocol import (
    ConnectionMachine,
    ErrorCode,
    Principal,
    ProtocolError,
    Publish,
    Send,
    iso_timestamp,
    subscriptions_for,
)
from protocol import messages as m
from protocol.codec import json_object

from . import metrics, params
from .adminapi import AdminApi
from .entries import events_json, keys_in_front
from .eventlog import LogUnavailable
from .lag import LagWatch
from .refusals import refusal
from .static_files import static_response
from .transport.frontdoor import FrontDoor, Request, Response, error_response, json_response

if TYPE_CHECKING:
    from .server import Gateway

__all__ = ["HttpApi"]

Endpoint = Callable[[Request], Awaitable[Response]]

#: A /health answer is reused this long, so a busy health checker costs one probe a second.
HEALTH_CACHE_SECONDS = 1.0
#: How long the write probe may wait for SQLite's write lock.
HEALTH_PROBE_TIMEOUT = 2.0
#: A scrape reuses recipients' lag this many seconds old (catsock/lag.py).
LAG_METRICS_AGE = 5.0
#: How long the first scrape waits for a lag read; later ones answer at once with the
#: last reading (and start a new read if it is older than ``LAG_METRICS_AGE``): under
#: overload a scrape must not queue behind a read of the database (issue 19).
LAG_METRICS_PATIENCE = 0.5
#: Events one GET /api/events returns unless ``limit`` says otherwise.
DEFAULT_EVENTS_LIMIT = 100

#: The HTTP status for each protocol error code an /api request can meet.
STATUS_OF: dict[str, int] = {
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.AUTH_REQUIRED: 401,
    ErrorCode.AUTH_FAILED: 401,
    ErrorCode.SENDER_MISMATCH: 403,
    ErrorCode.EVENT_NOT_ALLOWED: 403,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.PROCESSING_ERROR: 500,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.OVERLOADED: 503,
}
#: The "connection" of a ledger row written by a long-poll (there is none).
LONG_POLL = "HTTP long-poll"
#: Seconds an HTTP publish waits for an overloaded gateway before it is refused.
OVERLOAD_WAIT = 2.0
_UNAUTHORIZED = (("www-authenticate", 'Bearer realm="catsock"'),)


@attrs.define
class HttpStats:
    #: Answers by (endpoint, status); endpoints are the route table's paths and "other".
    requests: dict[tuple[str, int], int] = attrs.Factory(dict)

    def count(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1


class HttpApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.stats = HttpStats()
        self.probe_timeout = HEALTH_PROBE_TIMEOUT
        self._shutting_down = False
        self._polls: set[trio.CancelScope] = set()
        self._health_lock = trio.Lock()
        self._health: tuple[float, str | None] | None = None
        self._started = gateway.wall_clock()
        limits = gateway.config.limits
        self.front_door = FrontDoor(
            self.handle,
            gateway.config.http,
            # Characters are at most 4 UTF-8 bytes; the codec then applies the real limit.
            max_body=limits.max_message_size * 4,
            closing=lambda: self._shutting_down,
            client_of=gateway.guard.client_from,
        )
        #: Each durable recipient's lag: the console's and the lag gauges' source.
        self.lag = LagWatch(gateway)
        self.registry = metrics.new_registry(gateway)
        self.routes: dict[str, dict[str, Endpoint]] = {
            "/health": {"GET": self._get_health},
            "/metrics": {"GET": self._get_metrics},
            "/ws": {"GET": self._get_ws},
            "/api/publish": {"POST": self._post_publish},
            "/api/events": {"GET": self._get_events},
        }
        # The operator's console (catsock/adminapi.py), admin tokens only.
        self.routes.update(AdminApi(self).routes)

    @property
    def open_polls(self) -> int:
        """Long-polls (``GET /api/events``) waiting for events now."""
        return len(self._polls)

    def shutdown(self) -> None:
        """The gateway is shutting down: /health says so, keep-alive ends, and
        long-polls answer now with what they have."""
        self._shutting_down = True
        for scope in self._polls:
            scope.cancel()

    async def handle(self, request: Request) -> Response:
        if not self.gateway.client_allowed(request.client):
            # Only behind a trusted proxy: other peers were checked on accept.
            self.gateway.stats.refused_ip += 1
            response = error_response(403, "ADDRESS_NOT_ALLOWED", "your address may not connect")
            self.stats.count(metrics.OTHER, response.status)
            return response
        methods = self.routes.get(request.path)
        if methods is None:
            found = static_response(request.path)
            if found is not None:
                response = self._static(request, *found)
                self.stats.count("static", response.status)
                return response
            response = error_response(404, "NOT_FOUND", f"no endpoint {request.path[:100]}")
            self.stats.count(metrics.OTHER, response.status)
            return response
        endpoint = methods.get(request.method)
        if endpoint is None:
            allow = ", ".join(methods)
            response = error_response(
                405,
                "METHOD_NOT_ALLOWED",
                f"{request.path} allows {allow}",
                (("allow", allow),),
            )
        else:
            response = await endpoint(request)
        self.stats.count(request.path, response.status)
        return response

    # -- endpoints -------------------------------------------------------------------

    def _static(
        self, request: Request, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        """The dashboard's files (catsock/static_files.py), GET or HEAD."""
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405,
                "METHOD_NOT_ALLOWED",
                f"{request.path} allows GET, HEAD",
                (("allow", "GET, HEAD"),),
            )
        content_type = dict(headers)["content-type"]
        return Response(status, body, content_type, tuple(headers))

    async def _get_ws(self, request: Request) -> Response:
        return error_response(
            426,
            "UPGRADE_REQUIRED",
            "/ws is the WebSocket endpoint: send Upgrade: websocket",
            (("upgrade", "websocket"),),
        )

    async def _get_health(self, request: Request) -> Response:
        gateway = self.gateway
        body: dict[str, object] = {
            "status": "ok",
            "connections": len(gateway.connections),
            "uptime_seconds": round(gateway.wall_clock() - self._started, 3),
        }
        if self._shutting_down:
            return json_response(503, {**body, "status": "shutting_down"})
        # Cluster mode: Redis, which holds the event log, does not answer.
        unreachable = gateway.delivery.unavailable
        if unreachable is not None:
            return json_response(503, {**body, "status": "unavailable", "event_log": unreachable})
        problem = await self._probe()
        if problem is not None:
            return json_response(503, {**body, "status": "unavailable", "database": problem})
        return json_response(200, {**body, "database": "writable"})

    async def _probe(self) -> str | None:
        """Whether the database takes writes: yes if the event log committed within
        ``HEALTH_CACHE_SECONDS`` (so a busy gateway answers at once, issue 19), else
        probed off the event loop at most once per ``HEALTH_CACHE_SECONDS`` however
        many checkers ask."""
        if self.gateway.delivery.wrote_within(HEALTH_CACHE_SECONDS):
            return None
        async with self._health_lock:
            now = trio.current_time()
            if self._health is not None and now - self._health[0] < HEALTH_CACHE_SECONDS:
                return self._health[1]
            probe = functools.partial(
                storage.probe_writable, self.gateway.config.database, self.probe_timeout
            )
            problem: str | None = "the write probe did not finish in time"
            with trio.move_on_after(self.probe_timeout + 1.0):
                problem = await trio.to_thread.run_sync(probe, abandon_on_cancel=True)
            self._health = (trio.current_time(), problem)
            return problem

    async def _get_metrics(self, request: Request) -> Response:
        with contextlib.suppress(LogUnavailable):  # cluster mode, Redis down: the last lag
            patience = 0.0 if self.lag.read_once else LAG_METRICS_PATIENCE
            await self.lag.refresh(LAG_METRICS_AGE, patience=patience)
        return Response(200, metrics.render(self.registry), metrics.CONTENT_TYPE)

    # -- the API ---------------------------------------------------------------------

    async def _principal(
        self, request: Request, *, untyped_shared: bool = False
    ) -> Principal | Response | None:
        """Who the bearer token says the caller is, or the answer to send: 401, or
        429 while the client's address is locked out after failed tokens (then the
        token is not even checked). A failure is answered after the address's delay.

        ``untyped_shared``: the seed's shared token without ``X-Client-Type`` gives
        None (its type is the body's ``sender``: see ``_post_publish``)."""
        token = _bearer(request)
        if token is None:
            return _api_error(ErrorCode.AUTH_REQUIRED, "send Authorization: Bearer <token>")
        gateway = self.gateway
        locked = gateway.guard.locked_for(request.client)
        if locked:
            return _api_error(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                "too many failed authentications from this address",
                locked,
            )
        shared_as = request.headers.get("x-client-type")
        principal = await gateway.auth.check(token, None, shared_as)
        if not isinstance(principal, Principal):
            if untyped_shared and shared_as is None and gateway.auth.is_shared(token):
                return None
            gateway.stats.auth_failures += 1
            delay = gateway.guard.failed(request.client)
            if delay:
                await trio.sleep(delay)
            # A JWT or an opaque token past its expiry says so ("token expired").
            return _api_error(ErrorCode.AUTH_FAILED, principal.detail)
        return self._may_log_in(principal)

    def _may_log_in(self, principal: Principal) -> Principal | Response:
        problem = self.gateway.login_problem(principal)
        if problem is not None:
            return _api_error(ErrorCode.PROCESSING_ERROR, problem)
        return principal

    async def _post_publish(self, request: Request) -> Response:
        """Publish one event, exactly as over a WebSocket; 202 once it is committed.
        The body is read only once the token is accepted."""
        gateway = self.gateway
        principal = await self._principal(request, untyped_shared=True)
        if isinstance(principal, Response):
            return principal
        body = await request.read_body()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _api_error(ErrorCode.INVALID_MESSAGE, "the body is not UTF-8")
        envelope = _json_object(text)
        if principal is None:
            # The seed's shared token (already checked) takes the envelope's sender
            # as its client type, if the gateway knows that type.
            sender = envelope.get("sender") if envelope is not None else None
            typed = None
            if isinstance(sender, str):
                typed = await gateway.auth.identify(_bearer(request) or "", sender)
            if typed is None:
                gateway.stats.auth_failures += 1
                return _api_error(
                    ErrorCode.AUTH_FAILED, "the shared token needs a known client type"
                )
            principal = self._may_log_in(typed)
            if isinstance(principal, Response):
                return principal
        if envelope is not None:
            text = _complete_envelope(text, envelope, principal, gateway.wall_clock())
        return await self.submit(text, principal, len(body))

    async def submit(self, text: str, principal: Principal, size: int) -> Response:
        """Validate, route and publish ``text`` as ``principal`` over HTTP: what
        ``POST /api/publish`` does once it knows who is publishing (and what
        ``POST /api/admin/refused/retry`` does with a kept event)."""
        gateway = self.gateway
        # One throw-away state machine per request: validation, sender checks,
        # routing and rate limits (the identity's bucket is shared with its
        # WebSocket connections) are the WebSocket path's own.
        machine = ConnectionMachine(
            f"http_{secrets.token_hex(8)}",
            gateway.machine_config,
            clock=trio.current_time,
            wall_clock=gateway.wall_clock,
        )
        machine.receive(m.Auth(token="", client_type=principal.client_type))
        machine.auth_accepted(principal, gateway.identity_bucket(principal))
        event = None
        try:
            message = gateway.codec.decode(text)
        except ProtocolError as error:
            gateway.stats.count_in(metrics.OTHER)
            actions = machine.receive_invalid(error)
        else:
            if not isinstance(message, m.Event):
                return _api_error(ErrorCode.INVALID_MESSAGE, "only events can be published")
            event = message
            gateway.stats.count_in(message.type)
            actions = machine.receive(message)
        for action in actions:
            if isinstance(action, Publish):
                return await self._publish(action, principal, size, text)
            if isinstance(action, Send) and isinstance(action.message, m.Error):
                payload = action.message.payload
                gateway.stats.count_error(payload.error_code)
                code, detail = payload.error_code, payload.error_message
                self._keep_refused(principal, code, detail, text, event)
                return _api_error(code, detail, payload.retry_after)
        return _api_error(ErrorCode.PROCESSING_ERROR, "the event was neither accepted nor refused")

    def _keep_refused(
        self, principal: Principal, reason: str, detail: str, text: str, event: m.Event | None
    ) -> None:
        gateway = self.gateway
        row = refusal(
            principal,
            reason,
            detail,
            text,
            event,
            connection_id=None,
            transport="http",
            at=gateway.wall_clock(),
            max_body=gateway.codec.max_size,
        )
        if row is not None:
            gateway.record_log(row)
            gateway.stats.count_refused(row.reason)

    async def _publish(
        self, action: Publish, principal: Principal, size: int, text: str
    ) -> Response:
        gateway = self.gateway
        event = action.event
        gateway.stats.published += 1
        gateway.log.record(
            storage.MessageLogged(
                "in", event.type, event.message_id, None, size, event.raw, gateway.wall_clock()
            )
        )
        delivery = gateway.delivery
        if delivery.congested:
            # Wait like a WebSocket publisher, but an HTTP caller has a timeout of
            # its own: past OVERLOAD_WAIT, a 503 it can act on is kinder.
            with trio.move_on_after(OVERLOAD_WAIT):
                await delivery.room()
            if delivery.congested:
                gateway.stats.count_error(ErrorCode.OVERLOADED)
                detail = "the gateway is overloaded; nothing was published, retry later"
                if delivery.unavailable is not None:
                    detail = "the event log is unreachable; nothing was published, retry later"
                self._keep_refused(principal, ErrorCode.OVERLOADED, detail, text, event)
                return _api_error(ErrorCode.OVERLOADED, detail, 1.0)
        entry = await delivery.publish(event, action.channels, principal)
        return json_response(
            202,
            {
                "message_id": event.message_id,
                "seq": entry.effective_seq,
                "duplicate": entry.duplicate_of is not None,
            },
        )

    async def _get_events(self, request: Request) -> Response:
        """Long-poll: the caller's events after ``since``, waiting up to ``wait`` seconds
        for one when there are none yet."""
        query = params.query(request)
        try:
            since = params.optional_int(query, "since", 0)
            wait = params.float_(query, "wait", 0.0, 0.0, self.gateway.config.http.max_wait)
            batch = self.gateway.config.delivery.replay_batch
            limit = params.int_(query, "limit", min(DEFAULT_EVENTS_LIMIT, batch), 1, batch)
        except params.BadRequest as exc:
            return _api_error(ErrorCode.INVALID_MESSAGE, str(exc))
        principal = await self._principal(request)
        if not isinstance(principal, Principal):
            assert principal is not None
            return principal
        delivery = self.gateway.delivery
        if not delivery.enabled:
            return _api_error(ErrorCode.PROCESSING_ERROR, "the event log is off (delivery.log)")
        channels = (
            subscriptions_for(principal.client_type, principal.user_id)
            if principal.receives
            else ()
        )
        identity = principal.identity
        if since is not None:
            since = min(since, delivery.head)
            if delivery.is_durable(principal):
                # Asking for what follows ``since`` acknowledges everything up to it.
                delivery.advance(identity, channels, since)
        start = await delivery.start_positions(principal, channels, since)
        positions = start if start is not None else dict.fromkeys(channels, delivery.head)
        deadline = trio.current_time() + wait
        while True:
            entries, scanned = await delivery.read(positions, identity, limit)
            positions = {c: max(p, scanned) for c, p in positions.items()}
            now = self.gateway.wall_clock()
            live = [e for e in entries if e.expires_at is None or now <= e.expires_at]
            if live or self._shutting_down or trio.current_time() >= deadline:
                break
            if entries:  # only expired ones: read on at once
                continue
            # Only the wait is cancellable (by the deadline or a shutdown), never a
            # read: events read and then dropped would be skipped by ``next``.
            with trio.CancelScope(deadline=deadline) as scope:
                self._polls.add(scope)
                try:
                    await delivery.wait_beyond(scanned)
                finally:
                    self._polls.discard(scope)
            if scope.cancelled_caught:
                break
        next_seq = min(positions.values(), default=delivery.head)
        if live:
            delivery.note(identity, "written", live[0].seq, live[-1].seq, LONG_POLL)
        # The same projection as over a WebSocket (docs/privacy.md).
        projector = self.gateway.projections.for_recipient(
            principal.client_type, principal.user_id is not None
        )
        events = events_json(live, projector)
        body = b'{"events":[' + events + b'],"next":' + str(next_seq).encode() + b"}\n"
        return Response(200, body)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _api_error(code: str, message: str, retry_after: float | None = None) -> Response:
    status = STATUS_OF.get(code, 400)
    headers: tuple[tuple[str, str], ...] = ()
    if status == 401:
        headers = _UNAUTHORIZED
    elif retry_after is not None:
        headers = (("retry-after", str(max(1, math.ceil(retry_after)))),)
    return error_response(status, code, message, headers)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        return json_object(text)
    except ValueError:
        return None  # the codec says what is wrong with it, once the sender is known


_FILLED = ("version", "timestamp", "message_id", "sender")


def _complete_envelope(
    text: str, envelope: dict[str, Any], principal: Principal, wall: float
) -> str:
    """``{type, payload}`` becomes a full seed 000 envelope: the missing keys are put
    in front of the publisher's own text, which stays as it was (so the codec still
    sees repeated keys, and recipients get the payload byte for byte)."""
    defaults = {
        "version": "1.0",
        "timestamp": iso_timestamp(wall),
        "message_id": str(uuid.uuid4()),
        "sender": principal.client_type,
    }
    missing = {key: defaults[key] for key in _FILLED if key not in envelope}
    if not missing:
        return text
    return keys_in_front(orjson.dumps(missing).decode()[:-1], text)


