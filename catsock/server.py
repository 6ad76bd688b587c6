"""The gateway: one nursery holding the listener, the log writer and every connection.

``Gateway.serve`` binds, starts accepting and reports the bound address through
``task_status``; ``Gateway.shutdown`` stops accepting, closes every connection
with 1001, flushes the log and ends ``serve``. Before a WebSocket handshake a
TCP connection is checked against the IP allow-list and the per-address limits
(catsock/guard.py) and given TCP keepalive. A peer that resets or vanishes at
any point ends its connection quietly and is counted (``stats.peer_resets``);
``stats.internal_errors`` counts only faults of ours.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import math
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs
import trio

import storage
from protocol import (
    CloseCode,
    Codec,
    ErrorCode,
    EventRegistry,
    HeartbeatOffer,
    MachineConfig,
    Principal,
    RoutingTable,
    TokenBucket,
)
from protocol import messages as m
from storage.backup import DatabaseHeld
from storage.backup import hold as hold_database

from .auth import CREDENTIALS_UNAVAILABLE, Authenticator, AuthRefusal, Credentials
from .checkpoints import run_checkpoints
from .config import SHARED_TOKEN_ENV, Config
from .connection import Connection
from .delivery import PRIORITY_NAMES, Delivery
from .eventlog import ClientMissing, SharedEventLog, cluster_log
from .guard import RETRY_AFTER, UNCOUNTED, AddressGuard, Slot
from .httpapi import HttpApi
from .hub import Hub
from .jwtauth import JwtConfigError, JwtVerifier
from .logsink import LogSink
from .refused_sink import cluster_refusals
from .services import ConnectionContext
from .transport.frontdoor import Response, Upgrade, error_response
from .transport.handshake import accept_response, check_upgrade
from .transport.link import Link

if TYPE_CHECKING:
    from .eventlog.credentials import RedisCredentials
    from .eventlog.presence import Presence
    from .eventlog.rates import RateSync

__all__ = ["Gateway", "GatewayStats", "StartupError"]

logger = logging.getLogger("catsock.server")

HANDSHAKE_TIMEOUT = 10.0
CREDENTIAL_REFRESH = 2.0
#: Cluster mode polls the credential store's version this often, so a token
#: revoked on any node is cut on every node within about this long.
CLUSTER_CREDENTIAL_REFRESH = 0.5
#: Identities whose rate-limit bucket is remembered after they disconnect, so
#: reconnecting is no way around the limiter.
MAX_REMEMBERED_BUCKETS = 10_000
#: Beyond our own limit (which answers with an error first), the frame reader
#: closes 1009 by itself without buffering more.
HARD_SIZE_FACTOR = 4
#: What a peer that resets or vanishes raises (errno of an ``OSError``).
PEER_GONE = frozenset(
    {errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.ECONNABORTED}
)


class StartupError(Exception):
    """The gateway cannot start as configured (the message says why)."""


@attrs.define
class GatewayStats:
    """Counters for ``statistics()``; every label set is bounded by config."""

    accepted: int = 0
    refused_ip: int = 0
    refused_full: int = 0
    auth_failures: int = 0
    published: int = 0
    delivered: int = 0
    slow_consumers: int = 0
    #: Connections that ended by a fault of ours (never by the peer's behaviour).
    internal_errors: int = 0
    #: Connections the peer reset, half-closed or left, by stage (``metrics.PEER_STAGES``);
    #: the front door counts its own ("http").
    peer_resets: dict[str, int] = attrs.Factory(dict)
    errors: dict[str, int] = attrs.Factory(dict)
    #: Events refused from authenticated publishers and kept (storage/refused.py),
    #: by reason (an error code).
    refused: dict[str, int] = attrs.Factory(dict)
    #: By message type: decoded types only (registry and control types), so bounded;
    #: frames that do not decode count as "other".
    messages_in: dict[str, int] = attrs.Factory(dict)
    messages_out: dict[str, int] = attrs.Factory(dict)
    #: Events queued for connections and not yet written, by priority (each
    #: recipient's copy counts once; kept by the connections as they queue and write).
    backlog: list[int] = attrs.Factory(lambda: [0] * (max(PRIORITY_NAMES) + 1))

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def count_refused(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def count_in(self, type_: str) -> None:
        self.messages_in[type_] = self.messages_in.get(type_, 0) + 1

    def count_out(self, type_: str, n: int = 1) -> None:
        self.messages_out[type_] = self.messages_out.get(type_, 0) + n

    def count_delivered(self, n: int) -> None:
        self.delivered += n

    def count_slow_consumer(self) -> None:
        self.slow_consumers += 1

    def count_peer_reset(self, stage: str) -> None:
        self.peer_resets[stage] = self.peer_resets.get(stage, 0) + 1


class Gateway:
    def __init__(self, config: Config, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.wall_clock = wall_clock
        routes = config.extra_routes()
        registry = EventRegistry()
        registry = registry.with_types(r.event_type for r in routes if r.event_type not in registry)
        self.codec = Codec(registry, max_size=config.limits.max_message_size)
        hb = config.heartbeat
        self.machine_config = MachineConfig(
            routing=RoutingTable().with_routes(routes),
            rate_limits=config.rate_limits(),
            abuse_limit=config.limits.abuse_limit,
            heartbeat=HeartbeatOffer(hb.interval, hb.min_interval, hb.max_interval)
            if hb.enabled
            else None,
        )
        shared = os.environ.get(SHARED_TOKEN_ENV) if config.allow_shared_token else None
        known_types = {"CATS", "AFAD", "DASHBOARD"}
        for route in self.machine_config.routing.values():
            known_types |= route.senders | set(route.to_types)
        verifier: JwtVerifier | None = None
        try:
            if config.jwt.enabled:
                verifier = JwtVerifier(config.jwt, wall_clock=wall_clock)
        except JwtConfigError as exc:
            raise StartupError(str(exc)) from None
        #: Cluster mode: the event log every node shares (docs/scaling.md).
        self.shared_log = _shared_log(config)
        #: Cluster mode: the tokens every node shares (catsock/eventlog/credentials.py).
        self.credential_store = _credential_store(config, self.shared_log)
        self.auth = Authenticator(
            config.database,
            shared_token=shared or None,
            shared_client_types=known_types,
            jwt=verifier,
            wall_clock=wall_clock,
            source=_shared_credentials(config, self.credential_store),
        )
        # Its commits never checkpoint the WAL: run_checkpoints does (catsock/checkpoints.py).
        self._log_db = storage.open_db(config.database, checkpoints=False)
        db_lock = trio.Lock()
        self.log = LogSink(
            self._log_db,
            lock=db_lock,
            policy=storage.LogPolicy(config.log.policy),
            redact_fields=config.redact_fields(),
            retention_max_age=config.log.retention_days * 86400,
            retention_max_rows=config.log.retention_rows,
            wall_clock=wall_clock,
        )
        self.hub = Hub()
        #: Cluster mode: refused events go to the cluster's store (None: embedded,
        #: the log writer keeps them in the node's file).
        self.refusals = cluster_refusals(
            config, self.shared_log, self.log.record, self.log.flush, wall_clock
        )
        #: Where connections and the HTTP API record log rows (refusals included).
        self.record_log = self.log.record if self.refusals is None else self.refusals.record
        #: Cluster mode: connections per identity and rate buckets across nodes.
        self.presence, self.rates = _cluster_services(self.shared_log, config)
        #: Cluster mode: the ``node`` label of /metrics (set once the port is bound).
        self.node_name: str | None = None
        self.delivery = Delivery(
            config.delivery,
            self.hub,
            self._log_db,
            db_lock,
            config.database,
            wall_clock=wall_clock,
            personal_fields=config.privacy.personal_fields,
            personal_max_age=config.privacy.personal_retention_hours * 3600,
            shared_log=self.shared_log,
        )
        self.stats = GatewayStats()
        limits = config.limits
        self.projections = config.projections()
        self.context = ConnectionContext(
            codec=self.codec,
            machine_config=self.machine_config,
            wall_clock=wall_clock,
            stats=self.stats,
            record_log=self.record_log,
            auth_timeout=config.auth_timeout,
            send_queue=limits.send_queue,
            live_send_queue=min(limits.send_queue, limits.live_send_queue),
            send_queue_bytes=limits.send_queue_bytes,
            queue_full_grace=config.delivery.queue_full_grace,
            replay_batch=config.delivery.replay_batch,
            max_frame_size=limits.max_message_size * HARD_SIZE_FACTOR,
            max_fragments=limits.max_fragments,
            events_logged=config.delivery.log,
            legacy_confirm=config.delivery.legacy_confirm,
            projections=self.projections,
        )
        self.guard = AddressGuard(config.guard)
        self.http = HttpApi(self)
        self.connections: set[Connection] = set()
        self._identities: dict[str, set[Connection]] = {}
        #: Each authenticated connection's identity (what ``_identities`` holds it under).
        self._identity_of: dict[Connection, str] = {}
        self._type_of: dict[Connection, str] = {}
        #: Authenticated connections by client type, kept as they come and go, so that
        #: /metrics walks no connection (issue 19).
        self.by_type: dict[str, int] = {}
        #: Each connection's client address and, until it authenticates, its slot
        #: among the address's unauthenticated WebSockets.
        self._clients: dict[Connection, tuple[str, Slot]] = {}
        self._bad_rate_limits: set[str] = set()
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._networks = config.networks()
        # Built now so a bad certificate fails before anything binds.
        self._ssl_context = self._tls_context() if config.tls.cert else None
        self._closing = False
        self._handshakes = 0
        self._drained = trio.Event()
        self._accept_scope = trio.CancelScope()
        self._serve_scope = trio.CancelScope()

    # -- lifecycle -------------------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until ``shutdown`` (or cancellation). Reports ``(host, port)`` bound.

        Holds a shared lock on the database file meanwhile, so that ``python -m
        catsock db restore`` refuses to replace it (storage/backup.py)."""
        try:
            held = hold_database(self.config.database)
            held.__enter__()
        except DatabaseHeld as exc:
            raise StartupError(str(exc)) from None
        try:
            await self._serve(task_status)
        finally:
            held.__exit__(None, None, None)

    async def _serve(self, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(
            await _reuse_port_listeners(self.config.port, self.config.host)
            if self.config.reuse_port
            else await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        )
        sock = listeners[0].socket  # type: ignore[attr-defined]
        host, port = sock.getsockname()[:2]
        if self.shared_log is not None:
            self.node_name = _node_name(self.config, port)
        if self._ssl_context is not None:
            context = self._ssl_context
            listeners = [trio.SSLListener(lst, context, https_compatible=True) for lst in listeners]
        if self.shared_log is None:
            await self.auth.refresh()
        else:
            problem = await self.shared_log.probe()
            if problem is not None:
                raise StartupError(f"cluster.redis: {problem}")
        # Before the log writer starts, so the two never share the connection.
        await trio.to_thread.run_sync(storage.close_dangling, self._log_db)
        try:
            with self._serve_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.log.run)
                    await nursery.start(self.delivery.run)
                    if self.refusals is not None:
                        await nursery.start(self.refusals.run)
                    if self.shared_log is not None:
                        await self._load_shared_credentials()
                    if self.presence is not None and self.rates is not None:
                        await nursery.start(self.presence.run)
                        await nursery.start(self.rates.run)
                    nursery.start_soon(self._watch_credentials)
                    await nursery.start(run_checkpoints, self.config.database)
                    await nursery.start(self._accept, listeners, nursery)
                    task_status.started((host, port))
        finally:
            self.auth.close()

    async def _accept(
        self,
        listeners: list[trio.abc.Listener[trio.abc.Stream]],
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[list[trio.abc.Listener[trio.abc.Stream]]] = (
            trio.TASK_STATUS_IGNORED
        ),
    ) -> None:
        with self._accept_scope:
            await trio.serve_listeners(
                self._handle_stream, listeners, handler_nursery=nursery, task_status=task_status
            )

    async def shutdown(self) -> None:
        """Stop accepting, close every connection with 1001, flush logs, end ``serve``.

        Bounded by ``config.shutdown_timeout``; connections still open then are cut.
        """
        self._closing = True
        self._accept_scope.cancel()
        self.http.shutdown()
        with trio.move_on_after(self.config.shutdown_timeout):
            for conn in list(self.connections):
                conn.close(CloseCode.GOING_AWAY, "server shutting down")
            if self.connections:
                await self._drained.wait()
            await self.delivery.flush()
            if self.refusals is not None:
                await self.refusals.flush()
            await self.log.flush()
            if self.presence is not None:
                await self.presence.flush()  # the other nodes need not wait for the expiry
        self._serve_scope.cancel()

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(
                f"cannot load tls.cert {tls.cert!r} / tls.key {tls.key!r}: {exc}"
            ) from None
        return context

    async def _load_shared_credentials(self) -> None:
        """Cluster mode: the tokens come from Redis, which is open once delivery runs."""
        try:
            await self.auth.refresh()
        except CREDENTIALS_UNAVAILABLE as exc:
            raise StartupError(f"cluster.redis: cannot read the tokens: {exc}") from None

    async def _watch_credentials(self) -> None:
        """Pick up tokens created or revoked by the CLI; revoked ones are cut off.

        A store that cannot be read is logged once per outage and tried again
        every ``CREDENTIAL_REFRESH`` seconds (cluster mode:
        ``CLUSTER_CREDENTIAL_REFRESH``); the tokens in memory stay in use."""
        failing = False
        while True:
            interval = CREDENTIAL_REFRESH if self.shared_log is None else CLUSTER_CREDENTIAL_REFRESH
            await trio.sleep(interval)
            try:
                changed = await self.auth.refresh()
            except CREDENTIALS_UNAVAILABLE as exc:
                if not failing:
                    logger.warning(
                        "cannot read the tokens (%s); trying again every %gs, "
                        "with the tokens read before",
                        exc,
                        interval,
                    )
                failing = True
                continue
            if failing:
                logger.warning("reading the tokens again")
                failing = False
            if changed:
                self._cut_revoked()

    def _cut_revoked(self) -> None:
        for conn in list(self.connections):
            p = conn.principal
            if p is not None and not self.auth.is_active(p):
                conn.close(CloseCode.POLICY_VIOLATION, "token revoked")

    # -- one TCP connection --------------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        try:
            await self._serve_stream(stream)
        except Exception as exc:
            if _peer_gone(exc):
                # The peer reset or left where no code expected it: its business.
                logger.debug("connection reset by the peer: %r", exc)
                self.stats.count_peer_reset("other")
            else:
                # Any other fault in one connection ends that connection only.
                logger.warning("connection ended by an internal error", exc_info=True)
                self.stats.internal_errors += 1
            await trio.aclose_forcefully(stream)

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        sock = _socket_of(stream)
        remote = _peer(sock)
        peer = _host(remote)
        # Behind a trusted proxy the client is known from the request head only:
        # the allow-list and the per-address limits are applied to it there.
        proxied = self.guard.is_proxy(peer)
        if self._closing or not (proxied or self._allowed(remote)):
            self.stats.refused_ip += not self._closing
            await trio.aclose_forcefully(stream)
            return
        slot = UNCOUNTED if proxied else self.guard.connection(peer)
        if slot is None:
            if isinstance(stream, trio.SSLStream):
                # Answering needs the TLS handshake, the expensive part: just close.
                await trio.aclose_forcefully(stream)
            else:
                await self.http.front_door.refuse(stream, _address_full("connections"))
            return
        try:
            self._keepalive(sock)
            if isinstance(stream, trio.SSLStream) and not await self._tls_handshake(stream):
                return
            # The front door serves plain HTTP itself, and hands back WebSocket upgrades
            # (GET /ws, origin checked) with their head parsed.
            upgrade = await self.http.front_door.serve(stream, peer)
            if upgrade is not None:
                await self._upgrade(upgrade, remote, peer, proxied)
        finally:
            slot.release()

    async def _tls_handshake(self, stream: trio.SSLStream[trio.abc.Stream]) -> bool:
        """Done here, not lazily on the first read, so a peer that does not speak
        TLS is dropped at once instead of holding a slot until a timeout."""
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            try:
                await stream.do_handshake()
                return True
            except trio.BrokenResourceError:
                self.stats.count_peer_reset("tls")
        await trio.aclose_forcefully(stream)
        return False

    async def _upgrade(self, upgrade: Upgrade, remote: str, peer: str, proxied: bool) -> None:
        front_door = self.http.front_door
        stream = upgrade.stream
        refusal = check_upgrade(upgrade.method, upgrade.http_version, upgrade.headers)
        if refusal is not None:
            response = error_response(
                refusal.status, refusal.code, refusal.message, refusal.headers
            )
            await front_door.refuse(stream, response)
            return
        client = peer
        slot: Slot | None = UNCOUNTED
        if proxied:
            client = self.guard.client_from(peer, upgrade.headers)
            if not self.client_allowed(client):
                self.stats.refused_ip += 1
                await front_door.refuse(stream, _not_allowed())
                return
            remote = client  # what the connection log records
            slot = self.guard.connection(client)
        if slot is None:
            await front_door.refuse(stream, _address_full("connections"))
            return
        try:
            taken = len(self.connections) + self._handshakes
            if self._closing or taken >= self.config.limits.max_connections:
                self.stats.refused_full += not self._closing
                response = error_response(503, "CONNECTION_LIMIT", "connection limit reached")
                await front_door.refuse(stream, response)
                return
            unauthenticated = self.guard.unauthenticated(client)
            if unauthenticated is None:
                await front_door.refuse(stream, _address_full("unauthenticated"))
                return
            try:
                await self._handshake(upgrade, remote, client, unauthenticated)
            finally:
                unauthenticated.release()
        finally:
            slot.release()

    async def _handshake(
        self, upgrade: Upgrade, remote: str, client: str, unauthenticated: Slot
    ) -> None:
        stream = upgrade.stream
        # The slot is taken now, not once the 101 is out, so concurrent handshakes
        # cannot exceed max_connections together.
        self._handshakes += 1
        link: Link | None = None
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                await stream.send_all(accept_response(upgrade.headers))
                link = Link.over(stream, upgrade.rest)
        except trio.BrokenResourceError:
            self.stats.count_peer_reset("handshake")  # the peer left during the 101
        finally:
            self._handshakes -= 1
        if link is None:
            await trio.aclose_forcefully(stream)
            return
        conn = Connection(
            self.context, self, self.delivery, link, f"conn_{secrets.token_hex(8)}", remote
        )
        self.connections.add(conn)
        self._clients[conn] = (client, unauthenticated)
        self.stats.accepted += 1
        if self._closing:
            # shutdown() closed everyone while the 101 went out: this one too.
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        await conn.run()
        if conn.close_code is None:
            # No close frame either way: the peer reset, hung up or stopped reading.
            self.stats.count_peer_reset("websocket")

    def _allowed(self, remote: str) -> bool:
        """Whether the socket peer ``remote`` (``host:port``) passes ``allow.ips``."""
        return self.client_allowed(_host(remote))

    def client_allowed(self, client: str) -> bool:
        """Whether the address ``client`` passes ``allow.ips``; behind a trusted
        proxy, the client it names (the HTTP API asks this for every request)."""
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(client.strip().strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def _keepalive(self, sock: socket.socket | None) -> None:
        ka = self.config.keepalive
        if sock is None or not ka.enabled:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, ka.idle)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, ka.interval)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, ka.count)
        except OSError as exc:
            if exc.errno not in PEER_GONE and exc.errno != errno.EINVAL:
                raise
            # The peer is already gone (EINVAL on some systems): the first read says so.

    # -- called by connections -----------------------------------------------------------

    async def authenticate(
        self, conn: Connection, token: str, client_type: str
    ) -> Principal | tuple[str, ErrorCode]:
        """Check ``conn``'s token (under its address's failed-auth throttle) and
        register it with its identity; the refusal's detail and code otherwise.

        A failure is answered after the address's delay (this sleeps in ``conn``'s
        own task); an address locked out is refused without a check."""
        principal = await self._check_token(self._client_of(conn), token, client_type)
        if not isinstance(principal, Principal):
            return principal
        problem = self.login_problem(principal)
        if problem is not None:
            return (problem, ErrorCode.PROCESSING_ERROR)
        limits = self.config.limits
        allowed = limits.per_identity.get(principal.client_type, limits.per_identity_default)
        held = self._identities.get(principal.identity, set())
        if self.presence is None:
            taken = len(held) < allowed
        else:
            # Cluster mode: counted on every node (one Redis round trip).
            taken = await self.presence.take(principal.identity, allowed)
            held = self._identities.get(principal.identity, set())
        if not taken:
            return (f"this token already holds {allowed} connections", ErrorCode.CONNECTION_LIMIT)
        self._identities[principal.identity] = held
        held.add(conn)
        self._identity_of[conn] = principal.identity
        self._type_of[conn] = principal.client_type
        self.by_type[principal.client_type] = self.by_type.get(principal.client_type, 0) + 1
        entry = self._clients.get(conn)
        if entry is not None:
            entry[1].release()  # no longer an unauthenticated WebSocket of its address
        return principal

    async def reauthenticate(
        self, conn: Connection, token: str, client_type: str
    ) -> Principal | tuple[str, ErrorCode]:
        """Check the token of ``conn``'s refresh (an ``auth`` on an active connection
        whose credential expires), under the same failed-auth throttle. Whether it
        names the same identity is the state machine's to decide."""
        return await self._check_token(self._client_of(conn), token, client_type)

    async def _check_token(
        self, client: str, token: str, client_type: str
    ) -> Principal | tuple[str, ErrorCode]:
        locked = self.guard.locked_for(client)
        if locked:
            return (
                "too many failed authentications from this address; "
                f"try again in {math.ceil(locked)} s",
                ErrorCode.RATE_LIMIT_EXCEEDED,
            )
        principal = await self.auth.check(token, client_type)
        if isinstance(principal, AuthRefusal):
            self.stats.auth_failures += 1
            delay = self.guard.failed(client)
            if delay:
                await trio.sleep(delay)
            if not principal.expired:
                # A good token claimed as the wrong type says so: its holder could
                # learn its type by trying the others anyway.
                valid = await self.auth.identify(token)
                if valid is not None and valid.client_type != client_type:
                    return (
                        f"this token is for client type {valid.client_type}, not {client_type}",
                        ErrorCode.AUTH_FAILED,
                    )
            return (principal.detail, ErrorCode.AUTH_FAILED)
        return principal

    def _client_of(self, conn: Connection) -> str:
        entry = self._clients.get(conn)
        return entry[0] if entry is not None else _host(conn.remote)

    def login_problem(self, principal: Principal) -> str | None:
        """Why ``principal`` cannot log in although its token is good: its client
        type's rate limit makes no bucket (a zero rate, burst or abuse limit, which
        the configuration should have refused). Logged once per client type."""
        limit = self.machine_config.rate_limit(principal.client_type)
        if limit is None:
            return None
        now = trio.current_time()
        try:
            # What ConnectionMachine.auth_accepted builds.
            limit.bucket(now)
            TokenBucket(limit.per_minute / 60.0, self.machine_config.abuse_limit, now)
        except ValueError as exc:
            if principal.client_type not in self._bad_rate_limits:
                self._bad_rate_limits.add(principal.client_type)
                logger.error(
                    "%s clients cannot log in: limits.rate.%s or limits.abuse_limit "
                    "is unusable (%s)",
                    principal.client_type,
                    principal.client_type,
                    exc,
                )
            return "the gateway's rate limit for this client type is misconfigured"
        return None

    def connections_of(self, identity: str) -> int:
        """How many authenticated connections ``identity`` holds now. Cluster mode:
        on every node (the other nodes' as counted at its latest login here)."""
        if self.presence is not None:
            return self.presence.online(identity)
        return len(self._identities.get(identity, ()))

    def identity_bucket(self, principal: Principal) -> TokenBucket | None:
        """The rate-limit bucket every connection of ``principal``'s identity shares
        (None: no limit, or one that makes no bucket; see ``login_problem``)."""
        limit = self.machine_config.rate_limit(principal.client_type)
        if limit is None:
            return None
        bucket = self._buckets.get(principal.identity)
        if bucket is None:
            now = trio.current_time()
            try:
                if self.rates is None:
                    bucket = limit.bucket(now)
                else:
                    # Cluster mode: synced with the other nodes' spending (docs/scaling.md).
                    bucket = self.rates.bucket(
                        limit.per_minute / 60.0, limit.burst, now, principal.identity
                    )
            except ValueError:
                return None
            self._buckets[principal.identity] = bucket
            if len(self._buckets) > MAX_REMEMBERED_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(principal.identity)
        return bucket

    def subscribe(self, conn: Connection, channels: Iterable[str]) -> None:
        self.hub.subscribe(conn, channels)

    def publish(self, event: m.Event, channels: tuple[str, ...], sender: Connection) -> None:
        self.stats.published += 1
        principal = sender.principal
        assert principal is not None
        self.delivery.append(
            event, channels, principal.identity, publisher=sender, connection_id=sender.id
        )

    def connection_ended(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.hub.unsubscribe(conn)
        # By connection, not by principal: a login that failed half-way (after
        # ``authenticate``, before the machine took the principal) leaks nothing.
        client_type = self._type_of.pop(conn, None)
        if client_type is not None:
            self.by_type[client_type] -= 1
        identity = self._identity_of.pop(conn, None)
        if identity is not None:
            held = self._identities.get(identity)
            if held is not None:
                held.discard(conn)
                if not held:
                    del self._identities[identity]
            if self.presence is not None:
                self.presence.release(identity)
        entry = self._clients.pop(conn, None)
        if entry is not None:
            entry[1].release()
        if self._closing and not self.connections:
            self._drained.set()

    def statistics(self) -> GatewayStats:
        return self.stats


async def _reuse_port_listeners(port: int, host: str) -> list[trio.SocketListener]:
    """``trio.open_tcp_listeners`` with ``SO_REUSEPORT`` on every socket: several
    processes bind the same address and the kernel spreads connections over them."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    seen = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(0xFFFF)  # the kernel caps it at net.core.somaxconn
        except BaseException:
            sock.close()
            for listener in listeners:
                listener.socket.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


def _shared_log(config: Config) -> SharedEventLog | None:
    """The cluster's event log when ``cluster.redis`` is set (None: embedded)."""
    if not config.cluster.redis:
        return None
    if not config.delivery.log:
        raise StartupError("cluster.redis needs delivery.log = true (the log is what is shared)")
    try:
        return cluster_log(config)
    except ClientMissing as exc:
        raise StartupError(str(exc)) from None


def _credential_store(config: Config, log: SharedEventLog | None) -> RedisCredentials | None:
    """Cluster mode's credential store, on ``log``'s Redis pool (None: embedded)."""
    if log is None:
        return None
    from .eventlog.credentials import RedisCredentials
    from .eventlog.redis import RedisEventLog

    assert isinstance(log, RedisEventLog)
    return RedisCredentials.of(log, config.cluster.timeout)


def _shared_credentials(config: Config, store: RedisCredentials | None) -> Credentials | None:
    """The Authenticator's source in cluster mode (None: the SQLite file)."""
    if store is None:
        return None
    from .eventlog.credentials import SharedCredentials

    return SharedCredentials(store, config.database)


def _cluster_services(
    log: SharedEventLog | None, config: Config
) -> tuple[Presence | None, RateSync | None]:
    """Presence and rate sync over the shared log's Redis (None, None: embedded)."""
    if log is None:
        return None, None
    from .eventlog.presence import Presence
    from .eventlog.rates import RateSync
    from .eventlog.redis import RedisEventLog

    assert isinstance(log, RedisEventLog)
    timeout = config.cluster.timeout
    return Presence(log, timeout=timeout), RateSync(log, timeout=timeout)


def _node_name(config: Config, port: int) -> str:
    """``cluster.node_name``, or ``host:port`` (``host:port#pid`` for one of several
    workers sharing the port)."""
    if config.cluster.node_name:
        return config.cluster.node_name
    name = f"{socket.gethostname()}:{port}"
    return f"{name}#{os.getpid()}" if config.reuse_port else name


def _socket_of(stream: trio.abc.Stream) -> socket.socket | None:
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    return sock if isinstance(sock, socket.socket | trio.socket.SocketType) else None  # type: ignore[return-value]


def _host(remote: str) -> str:
    """The address of ``_peer``'s ``host:port`` (``[v6]:port``), or ``remote`` as is."""
    host, sep, _ = remote.rpartition(":")
    return host.strip("[]") if sep else remote


def _not_allowed() -> Response:
    """Behind a trusted proxy: the client it names is not in ``allow.ips``."""
    return error_response(403, "ADDRESS_NOT_ALLOWED", "your address may not connect")


def _address_full(what: str) -> Response:
    message = {
        "connections": "too many connections from your address",
        "unauthenticated": "too many unauthenticated WebSockets from your address",
    }[what]
    return error_response(503, "CONNECTION_LIMIT", message, (("retry-after", str(RETRY_AFTER)),))


def _peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (every exception in it, for a group) says the peer left."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_peer_gone(inner) for inner in exc.exceptions)
    if isinstance(exc, trio.BrokenResourceError):
        return True
    return isinstance(exc, OSError) and exc.errno in PEER_GONE


def _peer(sock: socket.socket | None) -> str:
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("?", 0)
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
