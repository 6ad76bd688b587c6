"""The gateway: one nursery holding the listener, the log writer and every connection.

``Gateway.serve`` binds, starts accepting and reports the bound address through
``task_status``; ``Gateway.shutdown`` stops accepting, closes every connection
with 1001, flushes the log and ends ``serve``. Before a WebSocket handshake a
TCP connection is checked against the IP allow-list and given TCP keepalive.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable

import attrs
import trio

import storage
from protocol import (
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

from .auth import Authenticator
from .config import SHARED_TOKEN_ENV, Config
from .connection import Connection, ConnectionContext
from .delivery import Delivery
from .httpapi import HttpApi
from .hub import Hub
from .logsink import LogSink
from .transport.frontdoor import error_response
from .transport.handshake import accept_response, check_upgrade
from .transport.link import Link

__all__ = ["Gateway", "GatewayStats", "StartupError"]

logger = logging.getLogger("catsock.server")

HANDSHAKE_TIMEOUT = 10.0
CREDENTIAL_REFRESH = 2.0
#: Identities whose rate-limit bucket is remembered after they disconnect, so
#: reconnecting is no way around the limiter.
MAX_REMEMBERED_BUCKETS = 10_000
#: Beyond our own limit (which answers with an error first), the frame reader
#: closes 1009 by itself without buffering more.
HARD_SIZE_FACTOR = 4


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
    internal_errors: int = 0
    errors: dict[str, int] = attrs.Factory(dict)
    #: By message type: decoded types only (registry and control types), so bounded;
    #: frames that do not decode count as "other".
    messages_in: dict[str, int] = attrs.Factory(dict)
    messages_out: dict[str, int] = attrs.Factory(dict)

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def count_in(self, type_: str) -> None:
        self.messages_in[type_] = self.messages_in.get(type_, 0) + 1

    def count_out(self, type_: str, n: int = 1) -> None:
        self.messages_out[type_] = self.messages_out.get(type_, 0) + n

    def count_delivered(self, n: int) -> None:
        self.delivered += n

    def count_slow_consumer(self) -> None:
        self.slow_consumers += 1


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
        self.auth = Authenticator(
            config.database, shared_token=shared or None, shared_client_types=known_types
        )
        self._log_db = storage.open_db(config.database)
        db_lock = trio.Lock()
        self.log = LogSink(
            self._log_db,
            lock=db_lock,
            policy=storage.LogPolicy(config.log.policy),
            redact_fields=frozenset(config.log.redact),
            retention_max_age=config.log.retention_days * 86400,
            retention_max_rows=config.log.retention_rows,
        )
        self.hub = Hub()
        self.delivery = Delivery(
            config.delivery,
            self.hub,
            self._log_db,
            db_lock,
            config.database,
            wall_clock=wall_clock,
        )
        self.stats = GatewayStats()
        limits = config.limits
        self.context = ConnectionContext(
            codec=self.codec,
            machine_config=self.machine_config,
            wall_clock=wall_clock,
            stats=self.stats,
            record_log=self.log.record,
            auth_timeout=config.auth_timeout,
            send_queue=limits.send_queue,
            queue_full_grace=config.delivery.queue_full_grace,
            replay_batch=config.delivery.replay_batch,
            max_frame_size=limits.max_message_size * HARD_SIZE_FACTOR,
            max_fragments=limits.max_fragments,
            events_logged=config.delivery.log,
            legacy_confirm=config.delivery.legacy_confirm,
        )
        self.http = HttpApi(self)
        self.connections: set[Connection] = set()
        self._identities: dict[str, set[Connection]] = {}
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
        """Run until ``shutdown`` (or cancellation). Reports ``(host, port)`` bound."""
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(
            await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        )
        sock = listeners[0].socket  # type: ignore[attr-defined]
        host, port = sock.getsockname()[:2]
        if self._ssl_context is not None:
            context = self._ssl_context
            listeners = [trio.SSLListener(lst, context, https_compatible=True) for lst in listeners]
        await self.auth.refresh()
        # Before the log writer starts, so the two never share the connection.
        await trio.to_thread.run_sync(storage.close_dangling, self._log_db)
        try:
            with self._serve_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.log.run)
                    await nursery.start(self.delivery.run)
                    nursery.start_soon(self._watch_credentials)
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
                conn.close(1001, "server shutting down")
            if self.connections:
                await self._drained.wait()
            await self.delivery.flush()
            await self.log.flush()
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

    async def _watch_credentials(self) -> None:
        """Pick up tokens created or revoked by the CLI; revoked ones are cut off."""
        while True:
            await trio.sleep(CREDENTIAL_REFRESH)
            if await self.auth.refresh():
                for conn in list(self.connections):
                    p = conn.principal
                    if p is not None and not self.auth.is_active(p.identity):
                        conn.close(1008, "token revoked")

    # -- one TCP connection --------------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        try:
            await self._serve_stream(stream)
        except Exception:
            # Any other fault in one connection ends that connection only.
            logger.warning("connection ended by an internal error", exc_info=True)
            self.stats.internal_errors += 1
            await trio.aclose_forcefully(stream)

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        sock = _socket_of(stream)
        remote = _peer(sock)
        if self._closing or not self._allowed(remote):
            self.stats.refused_ip += not self._closing
            await trio.aclose_forcefully(stream)
            return
        self._keepalive(sock)
        if isinstance(stream, trio.SSLStream):
            # Done here, not lazily on the first read, so a peer that does not
            # speak TLS is dropped at once instead of holding a slot until timeout.
            secured = False
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                try:
                    await stream.do_handshake()
                    secured = True
                except trio.BrokenResourceError:
                    pass
            if not secured:
                await trio.aclose_forcefully(stream)
                return
        # The front door serves plain HTTP itself, and hands back WebSocket upgrades
        # (GET /ws, origin checked) with their head parsed.
        front_door = self.http.front_door
        upgrade = await front_door.serve(stream)
        if upgrade is None:
            return
        refusal = check_upgrade(upgrade.method, upgrade.http_version, upgrade.headers)
        if refusal is not None:
            response = error_response(
                refusal.status, refusal.code, refusal.message, refusal.headers
            )
            await front_door.refuse(stream, response)
            return
        taken = len(self.connections) + self._handshakes
        if self._closing or taken >= self.config.limits.max_connections:
            self.stats.refused_full += not self._closing
            response = error_response(503, "CONNECTION_LIMIT", "connection limit reached")
            await front_door.refuse(stream, response)
            return
        # The slot is taken now, not once the 101 is out, so concurrent handshakes
        # cannot exceed max_connections together.
        self._handshakes += 1
        link: Link | None = None
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                await stream.send_all(accept_response(upgrade.headers))
                link = Link.over(stream, upgrade.rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer left during the handshake: its business, not our fault
        finally:
            self._handshakes -= 1
        if link is None:
            await trio.aclose_forcefully(stream)
            return
        conn = Connection(
            self.context, self, self.delivery, link, f"conn_{secrets.token_hex(8)}", remote
        )
        self.connections.add(conn)
        self.stats.accepted += 1
        if self._closing:
            # shutdown() closed everyone while the 101 went out: this one too.
            conn.close(1001, "server shutting down")
        await conn.run()

    def _allowed(self, remote: str) -> bool:
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(remote.rsplit(":", 1)[0].strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def _keepalive(self, sock: socket.socket | None) -> None:
        ka = self.config.keepalive
        if sock is None or not ka.enabled:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, ka.idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, ka.interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, ka.count)

    # -- called by connections -----------------------------------------------------------

    async def authenticate(
        self, conn: Connection, token: str, client_type: str
    ) -> Principal | tuple[str, ErrorCode]:
        principal = await self.auth.verify(token, client_type)
        if principal is None:
            self.stats.auth_failures += 1
            return ("invalid authentication token", ErrorCode.AUTH_FAILED)
        limits = self.config.limits
        allowed = limits.per_identity.get(principal.client_type, limits.per_identity_default)
        held = self._identities.setdefault(principal.identity, set())
        if len(held) >= allowed:
            return (f"this token already holds {allowed} connections", ErrorCode.CONNECTION_LIMIT)
        held.add(conn)
        return principal

    def connections_of(self, identity: str) -> int:
        """How many authenticated connections ``identity`` holds now."""
        return len(self._identities.get(identity, ()))

    def identity_bucket(self, principal: Principal) -> TokenBucket | None:
        limit = self.machine_config.rate_limit(principal.client_type)
        if limit is None:
            return None
        bucket = self._buckets.get(principal.identity)
        if bucket is None:
            bucket = self._buckets[principal.identity] = limit.bucket(trio.current_time())
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
        p = conn.principal
        if p is not None:
            held = self._identities.get(p.identity)
            if held is not None:
                held.discard(conn)
                if not held:
                    del self._identities[p.identity]
        if self._closing and not self.connections:
            self._drained.set()

    def statistics(self) -> GatewayStats:
        return self.stats


def _socket_of(stream: trio.abc.Stream) -> socket.socket | None:
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    return sock if isinstance(sock, socket.socket | trio.socket.SocketType) else None  # type: ignore[return-value]


def _peer(sock: socket.socket | None) -> str:
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("?", 0)
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


