"""The operator's console API: ``/api/admin/*`` (docs/http-api.md §"Admin").

Who is behind and by how much (recipients), what happened to one event (the
ledger), what was refused, who is connected, which tokens exist. Every endpoint
wants an admin token, a ``DASHBOARD`` token bound to no user; any other valid
token gets 403. Lists are bounded (``limit``). Every write (close a connection,
create or revoke a token, retry a refused event) is recorded in the audit table
(storage/audit.py) with the admin's token name, address and the outcome.

The token travels in the ``Authorization`` header, never in a cookie, so a page
on another origin cannot make a browser act for the operator (CSRF): it cannot
set that header without a CORS preflight, which the gateway never grants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import sqlite_utils
import trio

import storage
from protocol import ErrorCode, Principal, subscriptions_for

from . import params
from .auth import CredentialsUnavailable
from .entries import events_json
from .eventlog import LogUnavailable
from .lag import SORTS, read_aside
from .ledger import explain, refusals
from .refused_sink import refused_store
from .transport.frontdoor import Request, Response, error_response, json_response
from .views import cluster_snapshot, recent

if TYPE_CHECKING:
    from .httpapi import Endpoint, HttpApi

__all__ = ["AdminApi"]

T = TypeVar("T")

#: Rows a list returns unless ``limit`` says otherwise, and the most it may ask.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: A recipient this many seconds behind is highlighted (``threshold`` overrides).
DEFAULT_LAG_THRESHOLD = 60.0
#: The close code and reason prefix of a connection an operator closes.
CLOSE_CODE = 1008
#: The window GET /api/history covers unless ``seconds`` says otherwise, the most
#: it may cover, the events it returns by default, and how far back in the log it
#: looks at most.
HISTORY_SECONDS = 3600.0
MAX_HISTORY_SECONDS = 86400.0
HISTORY_LIMIT = 500
HISTORY_SCAN = 50_000
#: A close frame's reason is at most 123 bytes; keep room for the prefix.
MAX_REASON = 80


class AdminApi:
    def __init__(self, http: HttpApi) -> None:
        self.http = http
        self.gateway = http.gateway
        self._write_lock = trio.Lock()
        #: The node's file, or in cluster mode the cluster's Redis (every node's).
        self.refused = refused_store(self.gateway.config, self.gateway.shared_log)
        self.routes: dict[str, dict[str, Endpoint]] = {
            "/api/admin/recipients": {"GET": self._recipients},
            "/api/admin/ledger": {"GET": self._ledger},
            "/api/admin/refused": {"GET": self._refused},
            "/api/admin/refused/retry": {"POST": self._retry},
            # The older path of the same action (``python -m catsock refused retry``).
            "/api/refused/retry": {"POST": self._retry},
            "/api/admin/connections": {"GET": self._connections},
            "/api/admin/connections/close": {"POST": self._close},
            "/api/admin/tokens": {"GET": self._tokens, "POST": self._create_token},
            "/api/admin/tokens/revoke": {"POST": self._revoke},
            "/api/admin/audit": {"GET": self._audit},
            # Not admin-only: any DASHBOARD token, its own channels' events.
            "/api/history": {"GET": self._history},
        }

    # -- who may ------------------------------------------------------------------

    async def admin(self, request: Request) -> Principal | Response:
        """The caller if it holds an admin token, else the answer to send (401,
        429 or 403)."""
        caller = await self.http._principal(request)
        if isinstance(caller, Response):
            return caller
        assert caller is not None  # untyped_shared is off
        if caller.client_type != "DASHBOARD" or caller.user_id is not None:
            return error_response(
                403,
                ErrorCode.EVENT_NOT_ALLOWED,
                f"{request.path} needs an admin token (a DASHBOARD token bound to no user)",
            )
        return caller

    async def _listing(self, request: Request) -> int | Response:
        """An admin's list request: its ``limit`` (1 to ``MAX_LIMIT``), or the answer
        to send (401, 403, or 400 for a bad limit)."""
        caller = await self.admin(request)
        if isinstance(caller, Response):
            return caller
        try:
            return params.int_(params.query(request), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        except params.BadRequest as exc:
            return params.bad(str(exc))

    # -- reads ----------------------------------------------------------------------

    async def _recipients(self, request: Request) -> Response:
        caller = await self.admin(request)
        if isinstance(caller, Response):
            return caller
        try:
            query = params.query(request)
            limit = params.int_(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            threshold = params.float_(query, "threshold", DEFAULT_LAG_THRESHOLD, 0.0, 1e9)
            sort = params.choice(query, "sort", "lag_seconds", SORTS)
        except params.BadRequest as exc:
            return params.bad(str(exc))
        try:
            rows = [dict(row) for row in await self.http.lag.refresh(0.0)]
        except LogUnavailable as exc:
            return _unreachable(exc)
        rows.sort(key=SORTS[sort])
        for row in rows:
            row["lagging"] = row["lag_seconds"] is not None and row["lag_seconds"] > threshold
        return json_response(
            200,
            {
                "head": self.gateway.delivery.head,
                "threshold_seconds": threshold,
                "total": len(rows),
                "recipients": rows[:limit],
            },
        )

    async def _ledger(self, request: Request) -> Response:
        caller = await self.admin(request)
        if isinstance(caller, Response):
            return caller
        query = params.query(request)
        message_id = params.text(query, "message_id")
        recipient = params.text(query, "recipient")
        if not message_id:
            return params.bad("send ?message_id=<the event's message_id>[&recipient=<token name>]")
        durable = self.gateway.config.delivery.durable_types
        try:
            if self.gateway.shared_log is None:
                stories, refused = await self._read(_ledger_of, message_id, recipient, durable)
            else:
                snapshot = await cluster_snapshot(self.gateway.shared_log, self.refused, message_id)
                try:
                    stories, refused = await trio.to_thread.run_sync(
                        _ledger_of, snapshot, message_id, recipient, durable
                    )
                finally:
                    snapshot.close()
        except LogUnavailable as exc:
            return _unreachable(exc)
        return json_response(
            200, {"message_id": message_id, "refusals": refused, "events": stories}
        )

    async def _refused(self, request: Request) -> Response:
        caller = await self.admin(request)
        if isinstance(caller, Response):
            return caller
        try:
            query = params.query(request)
            limit = params.int_(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        except params.BadRequest as exc:
            return params.bad(str(exc))
        filters = {
            name: params.text(query, name) for name in ("reason", "identity", "message_id", "since")
        }
        try:
            rows = await self.refused.find(limit=limit, **filters)
        except LogUnavailable as exc:
            return _unreachable(exc)
        return json_response(200, {"refused": rows})

    async def _connections(self, request: Request) -> Response:
        limit = await self._listing(request)
        if isinstance(limit, Response):
            return limit
        rows = []
        for conn in sorted(self.gateway.connections, key=lambda c: c.connected_at):
            p = conn.principal
            rows.append(
                {
                    "id": conn.id,
                    "identity": p.identity if p else None,
                    "client_type": p.client_type if p else None,
                    "user_id": p.user_id if p else None,
                    "remote": conn.remote,
                    "connected_at": storage.iso(conn.connected_at),
                    "queued": conn.queued,
                    "transport": "websocket",
                    "closing": conn.closing,
                }
            )
        return json_response(
            200,
            {
                "total": len(rows),
                "long_polls": self.http.open_polls,
                "connections": rows[:limit],
            },
        )

    async def _tokens(self, request: Request) -> Response:
        limit = await self._listing(request)
        if isinstance(limit, Response):
            return limit
        store = self.gateway.credential_store
        try:
            tokens = (
                await self._read(storage.list_tokens)
                if store is None
                else list(getattr(await store.load(), "rows", ()))
            )
        except CredentialsUnavailable as exc:
            return _store_down(exc)
        rows = [
            {
                "name": t.name,
                "client_type": t.client_type,
                "user_id": t.user_id,
                "publish_only": t.publish_only,
                "created_at": t.created_at,
                "revoked_at": t.revoked_at,
                "admin": t.client_type == "DASHBOARD" and t.user_id is None,
                "connections": self.gateway.connections_of(t.name),
            }
            for t in tokens
        ]
        return json_response(200, {"total": len(rows), "tokens": rows[:limit]})

    async def _audit(self, request: Request) -> Response:
        limit = await self._listing(request)
        if isinstance(limit, Response):
            return limit
        rows = await self._read(_list_audit, limit)
        return json_response(200, {"audit": rows})

    async def _history(self, request: Request) -> Response:
        """The newest events of the last ``seconds`` on the caller's channels, oldest
        first, each with ``seq`` first (as ``GET /api/events`` gives them), and
        ``at``: when each was logged, by the gateway's clock, like ``now``; a
        dashboard starts its counters and rate chart from them."""
        caller = await self.http._principal(request)
        if isinstance(caller, Response):
            return caller
        assert caller is not None  # untyped_shared is off
        if caller.client_type != "DASHBOARD":
            return error_response(
                403, ErrorCode.EVENT_NOT_ALLOWED, "/api/history is for DASHBOARD tokens"
            )
        try:
            query = params.query(request)
            seconds = params.float_(query, "seconds", HISTORY_SECONDS, 1.0, MAX_HISTORY_SECONDS)
            limit = params.int_(query, "limit", HISTORY_LIMIT, 1, MAX_LIMIT)
        except params.BadRequest as exc:
            return params.bad(str(exc))
        now = self.gateway.wall_clock()
        channels = subscriptions_for(caller.client_type, caller.user_id)
        shared = self.gateway.shared_log
        if not self.gateway.delivery.enabled:
            found: list[storage.Recent] = []
            more = False
        elif shared is not None:
            # Cluster mode: the shared log, so every node shows every node's events.
            try:
                found, more = await recent(shared, channels, now - seconds, limit, HISTORY_SCAN)
            except LogUnavailable as exc:
                return _unreachable(exc)
        else:
            found, more = await self._read(
                storage.recent_events, channels, now - seconds, limit, HISTORY_SCAN
            )
        # The same projection as over a WebSocket (docs/privacy.md): a user-bound
        # dashboard never gets the visitor's fields, from history either.
        projector = self.gateway.projections.for_recipient(
            caller.client_type, caller.user_id is not None
        )
        events = events_json(found, projector)
        at = orjson.dumps([round(e.created_at, 3) for e in found])
        tail = orjson.dumps({"now": now, "seconds": seconds, "more": more})[1:]
        return Response(200, b'{"events":[' + events + b'],"at":' + at + b"," + tail + b"\n")

    # -- writes (each audited) ----------------------------------------------------------

    async def _retry(self, request: Request) -> Response:
        """Submit a kept refused event again, as the identity that sent it, through
        ``HttpApi.submit``: body ``{"id": N}``. The answer is the publish's own;
        the refused row records the outcome."""
        caller = await self.admin(request)
        if isinstance(caller, Response):
            return caller
        gateway = self.gateway
        body = await params.body(request)
        id_ = body.get("id") if body is not None else None
        if not isinstance(id_, int) or isinstance(id_, bool):
            return params.bad('send {"id": <refused event id>}')
        try:
            row = await self.refused.get(id_)
        except LogUnavailable as exc:
            return _unreachable(exc)
        if row is None:
            response = error_response(
                404,
                ErrorCode.INVALID_MESSAGE,
                f"no refused event {id_} (never kept, or past log.retention_days or"
                " log.retention_rows)",
            )
        elif row["body"] is None:
            response = error_response(
                409,
                ErrorCode.INVALID_MESSAGE,
                f"refused event {id_} has no body to send again (too large, not UTF-8,"
                " or log.policy kept no payloads)",
            )
        else:
            sender = Principal(row["identity"], row["client_type"], row["user_id"])
            response = await self.http.submit(row["body"], sender, row["size"])
        answer = orjson.loads(response.body) if response.body else {}
        if response.status == 202:
            result = "duplicate" if answer.get("duplicate") else "accepted"
        else:
            result = str(answer.get("error_code", response.status))
        if row is not None:
            gateway.record_log(
                storage.RefusedRetried(id_, gateway.wall_clock(), result, answer.get("seq"))
            )
        seq = answer.get("seq")
        await self._audit_write(
            caller, request, "retry", str(id_), "" if seq is None else f"seq {seq}", result
        )
        return response

    async def _close(self, request: Request) -> Response:
        caller = await self.admin(request)
        if isinstance(caller, Response):
            return caller
        body = await params.body(request)
        id_ = body.get("id") if body is not None else None
        reason = body.get("reason", "") if body is not None else ""
        if not isinstance(id_, str) or not isinstance(reason, str):
            return params.bad('send {"id": <connection id>, "reason": <text>}')
        conn = next((c for c in self.gateway.connections if c.id == id_), None)
        if conn is None:
            return error_response(
                404, ErrorCode.INVALID_MESSAGE, f"no open connection {id_[:100]}"
            )
        said = _truncate(reason.strip() or "no reason given", MAX_REASON)
        conn.close(CLOSE_CODE, f"closed by an operator: {said}")
        p = conn.principal
        await self._audit_write(caller, request, "close", id_, said, p.identity if p else "")
        return json_response(200, {"id": id_, "code": CLOSE_CODE, "reason": said})

    async def _create_token(self, request: Request) -> Response:
        caller = await self.admin(request)
        if isinstance(caller, Response):
            return caller
        body = await params.body(request)
        if body is None:
            return params.bad('send {"name": ..., "client_type": ..., "user_id": null}')
        name, client_type = body.get("name"), body.get("client_type")
        user_id, publish_only = body.get("user_id"), body.get("publish_only", False)
        if user_id is not None and not isinstance(user_id, str):
            return params.bad("user_id must be a string or null")
        if not isinstance(publish_only, bool):
            return params.bad("publish_only must be true or false")
        if not isinstance(name, str) or not isinstance(client_type, str):
            return params.bad("name and client_type must be strings")
        store = self.gateway.credential_store
        try:
            if store is None:
                token = await self._write(
                    lambda db: storage.create_token(
                        db,
                        name=name,
                        client_type=client_type,
                        user_id=user_id or None,
                        publish_only=publish_only,
                        now=self.gateway.wall_clock(),
                    )
                )
            else:  # cluster mode: in the store every node reads
                token, row = storage.new_credential(
                    name=name,
                    client_type=client_type,
                    user_id=user_id or None,
                    publish_only=publish_only,
                    now=self.gateway.wall_clock(),
                )
                await store.create(row)
        except CredentialsUnavailable as exc:
            return _store_down(exc)
        except storage.CredentialError as exc:
            result = str(exc)
            await self._audit_write(caller, request, "create_token", name[:64], "", result)
            status = 409 if "exists" in result else 400
            return error_response(status, ErrorCode.INVALID_MESSAGE, result)
        await self.gateway.auth.sync()
        detail = f"{client_type} user {user_id}" if user_id else client_type
        await self._audit_write(caller, request, "create_token", name, detail, "created")
        return json_response(
            201,
            {
                "name": name,
                "client_type": client_type,
                "user_id": user_id or None,
                "publish_only": publish_only,
                "token": token,
            },
        )

    async def _revoke(self, request: Request) -> Response:
        caller = await self.admin(request)
        if isinstance(caller, Response):
            return caller
        body = await params.body(request)
        name = body.get("name") if body is not None else None
        if not isinstance(name, str) or not name:
            return params.bad('send {"name": <token name>}')
        now = self.gateway.wall_clock()
        store = self.gateway.credential_store
        try:
            if store is None:
                revoked = await self._write(lambda db: storage.revoke_token(db, name, now))
            else:  # cluster mode: the other nodes cut it at their next poll
                revoked = await store.revoke(name, storage.iso(now))
        except CredentialsUnavailable as exc:
            return _store_down(exc)
        except storage.CredentialError as exc:
            return error_response(400, ErrorCode.INVALID_MESSAGE, str(exc))
        if not revoked:
            await self._audit_write(caller, request, "revoke", name[:64], "", "not found")
            return error_response(
                404, ErrorCode.INVALID_MESSAGE, f"no active token named {name[:64]!r}"
            )
        await self.gateway.auth.sync()
        cut = 0
        # Its connections go now, not at the next credential refresh.
        for conn in list(self.gateway.connections):
            p = conn.principal
            if p is not None and p.identity == name and not conn.closing:
                conn.close(1008, "token revoked")
                cut += 1
        await self._audit_write(
            caller, request, "revoke", name, f"{cut} connection(s) closed", "revoked"
        )
        return json_response(200, {"name": name, "revoked": True, "connections_closed": cut})

    async def _read(self, func: Callable[..., T], *args: object) -> T:
        return await read_aside(self.gateway.config.database, func, *args)

    async def _write(self, func: Callable[[sqlite_utils.Database], T]) -> T:
        """``func(db)`` on a short-lived write connection, off the event loop: admin
        writes are rare, and the event log's writer must not wait for them."""

        def run() -> T:
            db = storage.open_db(self.gateway.config.database)
            try:
                return func(db)
            finally:
                db.close()

        async with self._write_lock:
            return await trio.to_thread.run_sync(run)

    async def _audit_write(
        self,
        caller: Principal,
        request: Request,
        action: str,
        target: str,
        detail: str,
        result: str,
    ) -> None:
        at = self.gateway.wall_clock()

        def add(db: sqlite_utils.Database) -> None:
            with db.conn:
                storage.write_audit(
                    db.conn,
                    at=at,
                    actor=caller.identity,
                    remote=request.client,
                    action=action,
                    target=target,
                    detail=detail,
                    result=result,
                )

        await self._write(add)


# -- helpers -------------------------------------------------------------------------------


def _ledger_of(
    db: sqlite_utils.Database, message_id: str, recipient: str | None, durable: list[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    stories = []
    for story in explain(db, message_id, recipient=recipient, durable_types=durable):
        seq = story.event["seq"]
        timeline = [
            {
                "at": storage.iso(row["at"]),
                "identity": row["identity"],
                "kind": row["kind"],
                "first_seq": row["first_seq"],
                "last_seq": row["last_seq"],
                "connection_id": row["connection_id"],
                "detail": row["detail"],
            }
            for row in storage.ledger_rows(db, seq, recipient)
        ]
        event = dict(story.event)
        event["created_at"] = storage.iso(event["created_at"])
        if event["expires_at"] is not None:
            event["expires_at"] = storage.iso(event["expires_at"])
        stories.append(
            {
                "event": event,
                "lines": story.lines,
                "recipients": story.recipients,
                "timeline": timeline,
            }
        )
    return stories, refusals(db, message_id)


def _unreachable(exc: LogUnavailable) -> Response:
    return error_response(503, ErrorCode.OVERLOADED, str(exc))


def _list_audit(db: sqlite_utils.Database, limit: int) -> list[dict[str, Any]]:
    return storage.list_audit(db, limit=limit)


def _store_down(exc: CredentialsUnavailable) -> Response:
    """Cluster mode, Redis not answering: nothing was changed."""
    return error_response(503, ErrorCode.OVERLOADED, f"the token store is unreachable: {exc}")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
