"""The gateway's configuration: defaults < TOML file < ``CATSOCK_*`` env < CLI flags.

Every setting lives in one attrs tree (``Config``). Environment variables name a
setting by its path with ``__`` between levels: ``CATSOCK_PORT=9000``,
``CATSOCK_LOG__POLICY=metadata``, ``CATSOCK_ALLOW__IPS=10.0.0.0/8,127.0.0.1``.
The optional shared token is no setting: it is read from the environment
variable the seed used (``SOCKET_AUTH_TOKEN``). The one secret that is a setting,
``jwt.secret`` (best given as ``CATSOCK_JWT__SECRET``), is never printed; nor is the
password in ``cluster.redis`` (``CATSOCK_CLUSTER__REDIS``).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import attrs
import cattrs

from protocol import DEFAULT_RATE_LIMITS, RateLimit, Route
from protocol.privacy import DEFAULT_PERSONAL_FIELDS, ProjectionRule, Projections, parse_rule_key
from protocol.registry import valid_type_name

__all__ = ["ClusterConfig", "Config", "ConfigError", "load_config", "redacted_url", "to_toml"]

SHARED_TOKEN_ENV = "SOCKET_AUTH_TOKEN"


class ConfigError(Exception):
    """A setting is missing, malformed or contradicts another."""


@attrs.frozen
class HeartbeatConfig:
    """Offered to clients that negotiate it; seed clients never get protocol pings."""

    enabled: bool = True
    interval: float = 30.0
    min_interval: float = 5.0
    max_interval: float = 300.0


@attrs.frozen
class KeepaliveConfig:
    """TCP keepalive finds dead peers that never ping (the seed's PHP receiver)."""

    enabled: bool = True
    idle: int = 60
    interval: int = 15
    count: int = 4


@attrs.frozen
class RateConfig:
    per_minute: float
    burst: int


def _default_rates() -> dict[str, RateConfig]:
    return {k: RateConfig(v.per_minute, v.burst) for k, v in DEFAULT_RATE_LIMITS.items()}


@attrs.frozen
class LimitsConfig:
    max_message_size: int = 64 * 1024
    #: Fragments one WebSocket message may arrive in (RFC 6455 §5.4); more close 1009.
    max_fragments: int = 1000
    max_connections: int = 10_000
    #: Connections one token may hold at once, by client type (seed 002: 3 per
    #: user for dashboards); client types not listed get ``per_identity_default``.
    per_identity: dict[str, int] = attrs.Factory(lambda: {"DASHBOARD": 3})
    per_identity_default: int = 100
    #: Messages waiting for one connection's writer before it counts as too slow.
    send_queue: int = 10_000
    #: The same for a live-only recipient (a dashboard), if smaller: what it holds
    #: is seconds of every event for each of possibly thousands, and a feed that
    #: far behind helps nobody (issue 19: at twice the capacity, 10,000 each held
    #: 400 MiB and showed events 15 s late; 2,000 held 180 MiB, 1.5 s).
    live_send_queue: int = 2_000
    #: The same bound in bytes (the events' text): 10,000 messages of 64 KiB would be
    #: 640 MiB held for one slow reader.
    send_queue_bytes: int = 8 * 1024 * 1024
    rate_limits_enabled: bool = True
    rate: dict[str, RateConfig] = attrs.Factory(_default_rates)
    #: Rate-limit rejections tolerated (refilled at the client's rate) before close 1008.
    abuse_limit: int = 100


@attrs.frozen
class LogConfig:
    policy: str = "full"
    redact: list[str] = attrs.Factory(lambda: ["ipaddress", "useragent"])
    retention_days: float = 30.0
    retention_rows: int = 1_000_000


def _default_priorities() -> dict[str, str]:
    return {
        "fraud_alert": "CRITICAL",
        "budget_alert": "CRITICAL",
        "conversion": "HIGH",
        "tier_reward": "HIGH",
        "adware_update": "HIGH",
        "budget_update": "HIGH",
        "click": "NORMAL",
        "stats_update": "LOW",
        "user_online": "LOW",
    }


@attrs.frozen
class DeliveryConfig:
    """The event log and durable delivery (docs/delivery.md)."""

    #: Off: a live relay only (no seq, replay, idempotency or durable acks).
    log: bool = True
    #: Client types whose identities are durable recipients.
    durable_types: list[str] = attrs.Factory(lambda: ["CATS", "AFAD"])
    #: Soft limits: events every durable recipient has had go after this many days
    #: or past this many rows; what one still needs is kept (docs/delivery.md).
    retention_days: float = 7.0
    retention_rows: int = 1_000_000
    #: The hard limit that protects the disk: past this many events the oldest go
    #: whoever still needs them, and each such loss is recorded (ledger, metrics,
    #: the resume grant).
    retention_hard_rows: int = 10_000_000
    #: Seconds at least between two commits of the event log: events arriving
    #: meanwhile share the next transaction (0: commit as soon as the last ended).
    commit_interval: float = 0.001
    #: Events accepted but not yet committed before publishers are made to wait.
    max_pending: int = 10_000
    #: Events read from the log per catch-up query.
    replay_batch: int = 500
    #: Seconds at most between writes to a live-only (non-durable) recipient: what a
    #: commit brings it is written with the next round, at most this late, so a
    #: thousand dashboards cost a write each per round, not per commit. CRITICAL
    #: events go at once. 0: after every commit, like durable recipients.
    live_interval: float = 0.05
    #: Seconds the gateway may run behind (its event loop, or the pacer's round)
    #: before publishers are held until it has caught up (catsock/admission.py).
    #: 0: never hold them.
    admission_lag: float = 0.2
    #: Seconds a durable recipient that does not send acks (the seed's clients) must
    #: have taken an event in (its TCP acknowledged it and it left nothing unread)
    #: before the event counts as delivered; what it had not taken when it leaves is
    #: sent again when it returns (docs/delivery.md). 0: delivered once written.
    legacy_confirm: float = 1.0
    #: Seconds a non-durable recipient's queue may stay full before close 4001.
    queue_full_grace: float = 5.0
    #: Seconds after which an event type is no longer delivered (none: never).
    ttl: dict[str, float] = attrs.Factory(lambda: {"stats_update": 60.0, "user_online": 60.0})
    #: CRITICAL, HIGH, NORMAL or LOW by event type; unlisted types are NORMAL.
    priority: dict[str, str] = attrs.Factory(_default_priorities)
    #: Record written/acked/expired/dropped rows for `python -m catsock ledger`.
    ledger: bool = True


@attrs.frozen
class TlsConfig:
    cert: str = ""
    key: str = ""


@attrs.frozen
class AllowConfig:
    """CIDRs allowed to connect (seed 000 §8.3); empty allows everyone."""

    ips: list[str] = attrs.Factory(list)


@attrs.frozen
class HttpConfig:
    """The plain-HTTP side of the port (docs/http-api.md)."""

    #: Origins (``https://host[:port]``) whose browser pages may open a WebSocket,
    #: besides the gateway's own; requests without an Origin header always pass.
    allowed_origins: list[str] = attrs.Factory(list)
    #: Seconds a client has to send a whole request head (and then its body).
    request_timeout: float = 10.0
    #: Connections served as plain HTTP at once; more get 503.
    max_connections: int = 1000
    #: Requests on one keep-alive connection before it is closed.
    keepalive_requests: int = 100
    #: Longest ``wait`` a long-poll (``GET /api/events``) may ask for, in seconds.
    max_wait: float = 60.0


@attrs.frozen
class GuardConfig:
    """Per-address limits and failed-auth throttling (catsock/guard.py; operations.md §5)."""

    #: Addresses and CIDRs no per-address limit or throttle applies to: the gateway's
    #: own host, where a local proxy connects from (behind it every client would
    #: share one address; name the proxy in ``trusted_proxies`` instead).
    exempt: list[str] = attrs.Factory(lambda: ["127.0.0.1", "::1"])
    #: Proxies (addresses, CIDRs) whose forwarding header names the client, for the
    #: allow-list, the per-address limits and the logs.
    trusted_proxies: list[str] = attrs.Factory(list)
    #: The header those proxies write: ``X-Forwarded-For`` (nginx) or ``Forwarded``
    #: (RFC 7239). Only that one is read: the other may be the client's own.
    forwarded_header: str = "X-Forwarded-For"
    #: Connections, WebSocket and plain HTTP, one address may hold at once.
    max_connections_per_address: int = 500
    #: WebSocket connections of one address that have not authenticated yet.
    max_unauthenticated_per_address: int = 50
    #: Failed authentications from one address answered at once.
    auth_free_failures: int = 5
    #: The wait before answering the next failure, doubling up to ``auth_max_delay``.
    auth_delay: float = 0.5
    auth_max_delay: float = 8.0
    #: Failures after which the address is locked out for ``auth_lockout`` seconds.
    auth_lockout_after: int = 30
    auth_lockout: float = 300.0
    #: Seconds after its last failure that an address starts afresh.
    auth_forget_after: float = 900.0


#: Every JWS algorithm ``[jwt] algorithms`` may name; ``none`` is never one of them.
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
#: The shortest ``[jwt] secret`` (UTF-8 bytes) per HMAC algorithm: RFC 7518 §3.2
#: wants a key at least as long as the hash. Under 32 the secret is refused; an
#: algorithm whose minimum it misses is not accepted (nor may it be listed).
HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_JWT_SECRET_LENGTH = HMAC_KEY_BYTES["HS256"]


@attrs.frozen
class JwtConfig:
    """Signed identity (catsock/jwtauth.py; operations.md §2.2). Nothing set: off."""

    #: HMAC key for HS256/384/512 (at least 32 characters). Prefer the variable
    #: ``CATSOCK_JWT__SECRET`` to the file; ``config`` never prints it.
    secret: str = attrs.field(default="", repr=False)
    #: PEM file with one public key (RSA: RS*/PS*, EC: ES*, Ed25519/Ed448: EdDSA).
    public_key: str = ""
    #: JWKS file; a token's ``kid`` picks its key. Read again when the file changes.
    jwks: str = ""
    #: Algorithms accepted; empty: every one the configured keys can verify.
    algorithms: list[str] = attrs.Factory(list)
    #: Required ``iss`` (empty: not checked).
    issuer: str = ""
    #: Required ``aud`` (empty: a token that has an ``aud`` is refused).
    audience: str = ""
    #: Seconds of clock skew allowed for ``exp``, ``nbf`` and ``iat``.
    leeway: float = 0.0
    client_type_claim: str = "client_type"
    user_id_claim: str = "user_id"

    @property
    def enabled(self) -> bool:
        return bool(self.secret or self.public_key or self.jwks)


@attrs.frozen
class RouteConfig:
    """An operator route; a name the registry lacks becomes a free-form event type."""

    senders: list[str]
    to: list[str] = attrs.Factory(list)
    user_fields: list[str] = attrs.Factory(list)
    channels: list[str] = attrs.Factory(list)


@attrs.frozen
class ProjectionConfig:
    """What one recipient class is sent (docs/privacy.md); the table's key is
    ``RECIPIENTS`` or ``RECIPIENTS/EVENT_TYPE``, RECIPIENTS being ``TYPE``
    (unbound tokens), ``TYPE@user`` (user-bound tokens), ``*`` or ``*@user``."""

    #: Top-level payload keys delivered; empty: every key not removed otherwise.
    allow: list[str] = attrs.Factory(list)
    #: Keys removed at any depth, in any case.
    deny: list[str] = attrs.Factory(list)
    #: Also remove ``privacy.personal_fields``.
    strip_personal: bool = True


def _default_projections() -> dict[str, ProjectionConfig]:
    return {"*@user": ProjectionConfig()}


@attrs.frozen
class PrivacyConfig:
    """Who sees visitors' personal data, and for how long it is kept (docs/privacy.md)."""

    #: Payload keys that carry a visitor's personal data (any depth, any case).
    personal_fields: list[str] = attrs.Factory(lambda: list(DEFAULT_PERSONAL_FIELDS))
    #: Hours the event log keeps personal fields before redacting them.
    personal_retention_hours: float = 24.0
    projections: dict[str, ProjectionConfig] = attrs.Factory(_default_projections)


@attrs.frozen
class ClusterConfig:
    """Cluster mode (docs/scaling.md): several gateways share one event log in Redis.

    ``redis`` empty: embedded (one process, the SQLite file holds the log)."""

    #: ``redis://[user:password@]host:port/db`` or ``rediss://...`` (TLS). Best
    #: given as ``CATSOCK_CLUSTER__REDIS`` when it holds a password; ``config``
    #: never prints the password.
    redis: str = attrs.field(default="", repr=False)
    #: Prefix of every key this cluster uses, so several clusters can share one Redis.
    key_prefix: str = "catsock"
    #: Replicas that must have an event before its publisher is answered (Redis
    #: ``WAIT``); 0: the primary alone.
    wait_replicas: int = 0
    #: Milliseconds ``WAIT`` may take before the publish counts as failed (retried).
    wait_timeout_ms: int = 1000
    #: Seconds a Redis command may take before Redis counts as unreachable.
    timeout: float = 2.0
    #: This node's ``node`` label on /metrics; empty: ``hostname:port`` (with
    #: ``#pid`` added for a worker of ``serve --workers``).
    node_name: str = ""


@attrs.frozen
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    database: str = "catsock.db"
    auth_timeout: float = 10.0
    shutdown_timeout: float = 10.0
    #: Bind with SO_REUSEPORT, so that several gateways share the port (``serve
    #: --workers``, catsock/workers.py); the kernel spreads connections over them.
    reuse_port: bool = False
    #: Accept the seed's single shared token from $SOCKET_AUTH_TOKEN (migration aid).
    allow_shared_token: bool = False
    heartbeat: HeartbeatConfig = attrs.Factory(HeartbeatConfig)
    keepalive: KeepaliveConfig = attrs.Factory(KeepaliveConfig)
    limits: LimitsConfig = attrs.Factory(LimitsConfig)
    log: LogConfig = attrs.Factory(LogConfig)
    delivery: DeliveryConfig = attrs.Factory(DeliveryConfig)
    tls: TlsConfig = attrs.Factory(TlsConfig)
    allow: AllowConfig = attrs.Factory(AllowConfig)
    http: HttpConfig = attrs.Factory(HttpConfig)
    guard: GuardConfig = attrs.Factory(GuardConfig)
    jwt: JwtConfig = attrs.Factory(JwtConfig)
    routes: dict[str, RouteConfig] = attrs.Factory(dict)
    privacy: PrivacyConfig = attrs.Factory(PrivacyConfig)
    cluster: ClusterConfig = attrs.Factory(ClusterConfig)

    def projections(self) -> Projections:
        return Projections(
            {
                key: ProjectionRule(tuple(p.allow), tuple(p.deny), p.strip_personal)
                for key, p in self.privacy.projections.items()
            },
            self.privacy.personal_fields,
        )

    def redact_fields(self) -> frozenset[str]:
        """Keys redacted in the message log: ``log.redact`` and the personal fields."""
        return frozenset(self.log.redact) | frozenset(self.privacy.personal_fields)

    def rate_limits(self) -> dict[str, RateLimit] | None:
        if not self.limits.rate_limits_enabled:
            return None
        return {k: RateLimit(v.per_minute, v.burst) for k, v in self.limits.rate.items()}

    def extra_routes(self) -> list[Route]:
        return [
            Route(
                name,
                frozenset(r.senders),
                tuple(r.to),
                tuple(r.user_fields),
                tuple(r.channels),
            )
            for name, r in self.routes.items()
        ]

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(cidr, strict=False) for cidr in self.allow.ips]


_conv = cattrs.Converter(forbid_extra_keys=True)


def _rate_problems(limits: LimitsConfig) -> list[str]:
    """A bucket needs a positive, finite rate and room for one message, and the abuse
    allowance at least one rejection: anything else would fail at the first login of
    that client type, not at start-up (checked whether or not limits are enabled)."""
    problems = []
    for client_type, rate in limits.rate.items():
        where = f"limits.rate.{client_type}"
        # Divided as the bucket divides it: a rate so small it underflows is zero too.
        if not (math.isfinite(rate.per_minute) and rate.per_minute / 60.0 > 0):
            problems.append(
                f"{where}.per_minute must be a positive number of messages a minute,"
                f" not {rate.per_minute!r}"
            )
        if rate.burst < 1:
            problems.append(f"{where}.burst must be at least 1 message, not {rate.burst!r}")
    if limits.abuse_limit < 1:
        problems.append(
            f"limits.abuse_limit must be at least 1 rejection, not {limits.abuse_limit!r}"
        )
    return problems


def _validate(config: Config) -> Config:
    problems = _rate_problems(config.limits)
    if not 0 <= config.port <= 65535:
        problems.append(f"port {config.port} is not in 0-65535")
    if config.log.policy not in ("full", "metadata", "off"):
        problems.append(f"log.policy must be full, metadata or off, not {config.log.policy!r}")
    if bool(config.tls.cert) != bool(config.tls.key):
        problems.append("tls.cert and tls.key go together")
    for cidr in config.allow.ips:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(f"allow.ips: {cidr!r} is not an IP address or CIDR")
    for name, route in config.routes.items():
        if not valid_type_name(name):
            problems.append(f"routes.{name}: not a valid event type name")
        if not route.senders:
            problems.append(f"routes.{name}: needs at least one sender client type")
    for field in ("auth_timeout", "shutdown_timeout"):
        if getattr(config, field) <= 0:
            problems.append(f"{field} must be positive")
    for origin in config.http.allowed_origins:
        if not _valid_origin(origin):
            problems.append(f"http.allowed_origins: {origin!r} is not scheme://host[:port]")
    if config.http.request_timeout <= 0 or config.http.max_wait < 0:
        problems.append("http.request_timeout must be positive and http.max_wait not negative")
    if config.http.max_connections < 1 or config.http.keepalive_requests < 1:
        problems.append("http.max_connections and http.keepalive_requests must be at least 1")
    delivery = config.delivery
    for event_type, level in delivery.priority.items():
        if level not in ("CRITICAL", "HIGH", "NORMAL", "LOW"):
            problems.append(
                f"delivery.priority.{event_type}: {level!r} is not CRITICAL, HIGH, NORMAL or LOW"
            )
    for event_type, ttl in delivery.ttl.items():
        if ttl <= 0:
            problems.append(f"delivery.ttl.{event_type} must be positive")
    if delivery.max_pending < 1 or delivery.replay_batch < 1:
        problems.append("delivery.max_pending and delivery.replay_batch must be at least 1")
    if not 0 <= delivery.commit_interval <= 1:
        problems.append("delivery.commit_interval must be between 0 and 1 (seconds)")
    if not 0 <= delivery.legacy_confirm <= 60:
        problems.append("delivery.legacy_confirm must be between 0 and 60 (seconds)")
    if not 0 <= delivery.live_interval <= 1:
        problems.append("delivery.live_interval must be between 0 and 1 (seconds)")
    if not 0 <= delivery.admission_lag <= 60:
        problems.append("delivery.admission_lag must be between 0 and 60 (seconds)")
    if delivery.queue_full_grace < 0 or delivery.retention_days <= 0:
        problems.append("delivery.queue_full_grace must be >= 0, retention_days > 0")
    if delivery.retention_hard_rows < max(delivery.retention_rows, 1):
        problems.append(
            "delivery.retention_hard_rows must be at least delivery.retention_rows (and 1):"
            f" {delivery.retention_hard_rows} < {delivery.retention_rows}"
        )
    if config.limits.max_message_size < 256:
        problems.append("limits.max_message_size must be at least 256")
    if config.limits.max_fragments < 1:
        problems.append("limits.max_fragments must be at least 1")
    limits = config.limits
    if (
        limits.send_queue < 1
        or limits.live_send_queue < 1
        or limits.send_queue_bytes < limits.max_message_size
    ):
        problems.append(
            "limits.send_queue and limits.live_send_queue must be at least 1 and"
            f" limits.send_queue_bytes at least limits.max_message_size ({limits.max_message_size})"
        )
    problems += _guard_problems(config.guard)
    problems += _jwt_problems(config.jwt)
    problems += _privacy_problems(config.privacy)
    problems += _cluster_problems(config.cluster)
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def _guard_problems(guard: GuardConfig) -> list[str]:
    problems = []
    for field in ("exempt", "trusted_proxies"):
        for cidr in getattr(guard, field):
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                problems.append(f"guard.{field}: {cidr!r} is not an IP address or CIDR")
    for field in (
        "max_connections_per_address",
        "max_unauthenticated_per_address",
        "auth_lockout_after",
    ):
        if getattr(guard, field) < 1:
            problems.append(f"guard.{field} must be at least 1")
    if guard.forwarded_header.lower() not in ("x-forwarded-for", "forwarded"):
        problems.append(
            "guard.forwarded_header must be X-Forwarded-For or Forwarded, "
            f"not {guard.forwarded_header!r}"
        )
    if guard.auth_free_failures < 0:
        problems.append("guard.auth_free_failures must not be negative")
    for field in ("auth_delay", "auth_max_delay", "auth_lockout", "auth_forget_after"):
        if not 0 <= getattr(guard, field) < float("inf"):
            problems.append(f"guard.{field} must be a number of seconds, 0 or more")
    return problems


def _jwt_problems(jwt: JwtConfig) -> list[str]:
    problems = []
    known = {*HMAC_ALGORITHMS, *PUBLIC_KEY_ALGORITHMS}
    for alg in jwt.algorithms:
        if alg.strip().lower() == "none":
            problems.append("jwt.algorithms: 'none' is never accepted")
        elif alg not in known:
            problems.append(f"jwt.algorithms: {alg!r} is not one of {', '.join(sorted(known))}")
    secret_bytes = len(jwt.secret.encode("utf-8"))
    if jwt.secret and secret_bytes < MIN_JWT_SECRET_LENGTH:
        problems.append(f"jwt.secret must be at least {MIN_JWT_SECRET_LENGTH} bytes")
    hmac_listed = [a for a in jwt.algorithms if a in HMAC_ALGORITHMS]
    if hmac_listed and not jwt.secret:
        problems.append(f"jwt.algorithms: {hmac_listed[0]} needs jwt.secret")
    elif jwt.secret and secret_bytes >= MIN_JWT_SECRET_LENGTH:
        for alg in hmac_listed:
            if secret_bytes < HMAC_KEY_BYTES[alg]:
                problems.append(
                    f"jwt.algorithms: {alg} needs a jwt.secret of at least "
                    f"{HMAC_KEY_BYTES[alg]} bytes"
                )
    keyed_listed = [a for a in jwt.algorithms if a in PUBLIC_KEY_ALGORITHMS]
    if keyed_listed and not (jwt.public_key or jwt.jwks):
        problems.append(f"jwt.algorithms: {keyed_listed[0]} needs jwt.public_key or jwt.jwks")
    if not 0 <= jwt.leeway <= 3600:
        problems.append("jwt.leeway must be between 0 and 3600 (seconds)")
    for field in ("client_type_claim", "user_id_claim"):
        if not getattr(jwt, field):
            problems.append(f"jwt.{field} must name a claim")
    if jwt.client_type_claim == jwt.user_id_claim:
        problems.append("jwt.client_type_claim and jwt.user_id_claim must differ")
    if not jwt.enabled and (jwt.algorithms or jwt.issuer or jwt.audience):
        problems.append("jwt: set jwt.secret, jwt.public_key or jwt.jwks to verify tokens")
    return problems


def _privacy_problems(privacy: PrivacyConfig) -> list[str]:
    problems = []
    if not 0 < privacy.personal_retention_hours < float("inf"):
        problems.append("privacy.personal_retention_hours must be a positive number of hours")
    if any(not field.strip() for field in privacy.personal_fields):
        problems.append("privacy.personal_fields: a field name must not be empty")
    for key, projection in privacy.projections.items():
        try:
            parse_rule_key(key)
        except ValueError as exc:
            problems.append(f"privacy.projections: {exc}")
        if any(not field.strip() for field in (*projection.allow, *projection.deny)):
            problems.append(f"privacy.projections.{key}: a field name must not be empty")
    return problems


def _cluster_problems(cluster: ClusterConfig) -> list[str]:
    problems = []
    if cluster.redis:
        url = urllib.parse.urlsplit(cluster.redis)
        if url.scheme not in ("redis", "rediss"):
            problems.append(
                "cluster.redis must be a redis:// or rediss:// URL"
                f" (redis://[user:password@]host:port/db), not {redacted_url(cluster.redis)!r}"
            )
        else:
            try:
                _ = url.port  # raises on a port that is not a number
            except ValueError:
                problems.append(f"cluster.redis: bad port in {redacted_url(cluster.redis)!r}")
            if not url.hostname:
                problems.append(f"cluster.redis: no host in {redacted_url(cluster.redis)!r}")
            db = url.path.strip("/")
            if db and not db.isdigit():
                problems.append(f"cluster.redis: the database must be a number, not {db!r}")
    if not cluster.key_prefix or any(c.isspace() or c in "{}" for c in cluster.key_prefix):
        problems.append("cluster.key_prefix must be a non-empty word without spaces or braces")
    if cluster.wait_replicas < 0 or cluster.wait_timeout_ms < 1:
        problems.append("cluster.wait_replicas must be >= 0 and cluster.wait_timeout_ms >= 1")
    if not 0 < cluster.timeout <= 60:
        problems.append("cluster.timeout must be between 0 and 60 (seconds)")
    return problems


def redacted_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to print or log."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _valid_origin(origin: str) -> bool:
    scheme, sep, rest = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and bool(rest) and "/" not in rest


def _parse_env_value(raw: str, kind: Any, name: str) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is str:
            return raw
        if get_origin(kind) is list:
            return [item.strip() for item in raw.split(",") if item.strip()]
        return tomllib.loads(f"v = {raw}")["v"]
    except (ValueError, tomllib.TOMLDecodeError):
        raise ConfigError(f"{name}={raw!r}: expected {getattr(kind, '__name__', kind)}") from None


def _env_overrides(environ: Mapping[str, str], cls: type, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in attrs.fields(cls):
        name = f"{prefix}{field.name.upper()}"
        kind = field.type
        if attrs.has(kind):
            nested = _env_overrides(environ, kind, name + "__")
            if nested:
                out[field.name] = nested
        elif name in environ:
            out[field.name] = _parse_env_value(environ[name], kind, name)
        elif get_origin(kind) is dict and (sub := _dict_env(environ, name + "__", kind)):
            out[field.name] = sub
    return out


def _dict_env(environ: Mapping[str, str], prefix: str, kind: Any) -> dict[str, Any]:
    _, value_kind = get_args(kind)
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if attrs.has(value_kind):
                head, _, field = rest.partition("__")
                out.setdefault(head, {})[field.lower()] = _parse_env_value(raw, Any, key)
            else:
                out[rest] = _parse_env_value(raw, value_kind, key)
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective config. ``path=None`` uses ``$CATSOCK_CONFIG`` if set,
    else defaults. ``overrides`` are CLI flags (a nested dict). Raises ``ConfigError``."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("CATSOCK_CONFIG") or None
    data: dict[str, Any] = _conv.unstructure(Config())
    if path is not None:
        try:
            file_data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {os.fspath(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {os.fspath(path)!r}: {exc}") from None
        data = _merge(data, file_data)
    data = _merge(data, _env_overrides(environ, Config, "CATSOCK_"))
    if overrides:
        data = _merge(data, overrides)
    try:
        config = _conv.structure(data, Config)
    except cattrs.BaseValidationError as exc:
        raise ConfigError("; ".join(cattrs.transform_error(exc, path="config"))) from None
    return _validate(config)


#: What ``to_toml`` prints instead of a secret that is set.
HIDDEN = "(set; not shown)"


def to_toml(config: Config) -> str:
    """The effective config as TOML (what ``python -m catsock config`` prints); a
    ``jwt.secret`` that is set shows as ``HIDDEN``, never itself."""
    data = _conv.unstructure(config)
    if data["jwt"]["secret"]:
        data["jwt"]["secret"] = HIDDEN
    data["cluster"]["redis"] = redacted_url(data["cluster"]["redis"])
    return _emit(data, [])


def _emit(table: Mapping[str, Any], path: list[str]) -> str:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    lines = [f"[{'.'.join(path)}]"] if path and (scalars or not tables) else []
    lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    out = "\n".join(lines)
    for key, sub in tables.items():
        chunk = _emit(sub, [*path, _key(key)])
        out = f"{out}\n\n{chunk}" if out else chunk
    return out


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    # A JSON string is a valid TOML basic string (same escapes), control chars included.
    return json.dumps(str(value), ensure_ascii=False)
