"""Per-address limits: connections, unauthenticated WebSockets and failed authentication.

No single host may take more than a small share of the gateway. ``AddressGuard``
counts, per client address, the connections it holds (WebSocket and plain HTTP)
and its WebSocket connections that have not authenticated yet; one more than
``guard.max_connections_per_address`` or ``guard.max_unauthenticated_per_address``
is refused (the caller answers 503 with ``Retry-After: RETRY_AFTER``).

Failed authentication is throttled per address (``failed``, ``locked_for``):

    failures 1 .. auth_free_failures          answered at once
    each further failure                       answered after auth_delay, doubling,
                                               at most auth_max_delay
    failure number auth_lockout_after          the address is locked out for
                                               auth_lockout seconds: its tokens are
                                               not even checked
    after a lockout, one more failure          locks it out again
    auth_forget_after without a failure        the address starts afresh

Every count is per address, so a valid token used from another address is never
refused because of this one.

Addresses: IPv4 as they are, IPv6 by their /64 (one host usually holds a whole
/64). A peer in ``guard.trusted_proxies`` is a proxy: the client is the
right-most entry of its forwarding header that is not a trusted proxy itself
(``client_from``; ``client`` for an ``X-Forwarded-For`` value). The header is
``guard.forwarded_header``, ``X-Forwarded-For`` or RFC 7239's ``Forwarded``
(its ``for=`` parameters), and only that one: a proxy that writes one passes the
other through as the client sent it. From any other peer both are ignored.
Addresses in ``guard.exempt`` (the gateway's own host by default) are never
limited.

Refusals, delays and lockouts are counted (``statistics()``) and logged as one
WARNING per address and kind per ``WARN_EVERY`` seconds, never one per refusal.
The time comes from ``clock`` (``trio.current_time`` unless given), so tests
drive it with ``trio.testing.MockClock``.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from typing import Final

import attrs
import trio

from .config import GuardConfig

__all__ = [
    "RETRY_AFTER",
    "AddressGuard",
    "GuardStatistics",
    "Slot",
]

logger = logging.getLogger("catsock.guard")

#: Seconds a refused client is told to wait (``Retry-After``) before connecting again.
RETRY_AFTER: Final = 5
#: At most one WARNING per address and kind of refusal in this many seconds.
WARN_EVERY: Final = 60.0
#: Addresses whose failures (and warnings) are remembered at once; the oldest go first.
MAX_TRACKED: Final = 100_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Clients whose counting key ``AddressGuard`` remembers at most.
MAX_KEYS: Final = 4096


class Slot:
    """One counted connection (or unauthenticated WebSocket) of one address.

    ``release`` gives it back; releasing again does nothing."""

    __slots__ = ("_counts", "_key")

    def __init__(self, counts: dict[str, int] | None, key: str | None) -> None:
        self._counts = counts
        self._key = key

    def release(self) -> None:
        key, counts = self._key, self._counts
        if key is None or counts is None:
            return
        self._key = None
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]


#: The slot of an address no limit applies to.
UNCOUNTED: Final = Slot(None, None)


@attrs.define
class GuardStatistics:
    refused_connections: int = 0
    refused_unauthenticated: int = 0
    #: Failed authentications answered after a delay.
    auth_delayed: int = 0
    #: Times an address was locked out.
    auth_lockouts: int = 0
    #: Authentications refused unchecked because their address was locked out.
    auth_refused_locked: int = 0
    #: Addresses locked out now.
    locked_addresses: int = 0


@attrs.define
class _Failures:
    count: int
    last: float
    locked_until: float = 0.0


class AddressGuard:
    """See the module docstring. Not thread-safe: use it from the event loop."""

    def __init__(
        self, config: GuardConfig, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.config = config
        self.clock = clock
        self._exempt = _networks(config.exempt)
        self._proxies = _networks(config.trusted_proxies)
        self._forwarded_rfc7239 = config.forwarded_header.lower() == "forwarded"
        self._connections: dict[str, int] = {}
        self._unauthenticated: dict[str, int] = {}
        self._failures: collections.OrderedDict[str, _Failures] = collections.OrderedDict()
        self._warned: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        self._stats = GuardStatistics()
        #: ``_key`` of recent clients: parsing an address was a few percent of a
        #: connection's cost in a storm (issue 10). Emptied when full.
        self._keys: dict[str, str | None] = {}

    # -- addresses ------------------------------------------------------------------

    def is_proxy(self, peer: str) -> bool:
        """Whether ``peer`` (a socket's address) is a trusted proxy."""
        if not self._proxies:
            return False  # the usual case, without parsing ``peer``
        address = _address(peer)
        return address is not None and _within(address, self._proxies)

    def client_from(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client behind ``peer`` given a request's headers (lower-case names):
        ``peer`` itself unless it is a trusted proxy that sent the configured
        forwarding header (then that header's right-most untrusted entry)."""
        if self._forwarded_rfc7239:
            value = headers.get("forwarded")
            entries = None if value is None else _forwarded_for(value)
        else:
            value = headers.get("x-forwarded-for")
            entries = None if value is None else value.split(",")
        return self._walk(peer, entries)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The client behind ``peer``: ``peer`` itself unless it is a trusted proxy
        that sent ``X-Forwarded-For`` (then its right-most untrusted entry)."""
        return self._walk(peer, None if forwarded_for is None else forwarded_for.split(","))

    def _walk(self, peer: str, entries: list[str] | None) -> str:
        if entries is None or not self.is_proxy(peer):
            return peer
        client = peer
        for entry in reversed(entries):
            address = _address(entry)
            if address is None:
                break  # a malformed entry: trust nothing to its left
            client = str(address)
            if not _within(address, self._proxies):
                break
        return client

    def _key(self, client: str) -> str | None:
        """What ``client`` is counted as, or None if it is exempt."""
        try:
            return self._keys[client]
        except KeyError:
            pass
        if len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        key = self._keys[client] = self._parse_key(client)
        return key

    def _parse_key(self, client: str) -> str | None:
        address = _address(client)
        if address is None:
            return client  # not an IP address ("?"): counted under its own name
        if _within(address, self._exempt):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        return str(address)

    # -- connections ------------------------------------------------------------------

    def connection(self, client: str) -> Slot | None:
        """A slot for one more connection from ``client``, or None (refused: over
        ``max_connections_per_address``; counted and logged)."""
        slot = self._take(self._connections, client, self.config.max_connections_per_address)
        if slot is None:
            self._stats.refused_connections += 1
            self._warn(
                client,
                "connections",
                "refusing connections from %s: it holds %d, the most one address may",
                self.config.max_connections_per_address,
            )
        return slot

    def unauthenticated(self, client: str) -> Slot | None:
        """A slot for one more WebSocket from ``client`` that has not authenticated,
        or None (refused: over ``max_unauthenticated_per_address``)."""
        limit = self.config.max_unauthenticated_per_address
        slot = self._take(self._unauthenticated, client, limit)
        if slot is None:
            self._stats.refused_unauthenticated += 1
            self._warn(
                client,
                "unauthenticated",
                "refusing WebSocket handshakes from %s: %d of its connections have "
                "not authenticated yet",
                limit,
            )
        return slot

    def _take(self, counts: dict[str, int], client: str, limit: int) -> Slot | None:
        key = self._key(client)
        if key is None:
            return UNCOUNTED
        held = counts.get(key, 0)
        if held >= limit:
            return None
        counts[key] = held + 1
        return Slot(counts, key)

    def held(self, client: str) -> tuple[int, int]:
        """Connections and unauthenticated WebSockets ``client`` holds now."""
        key = self._key(client)
        if key is None:
            return 0, 0
        return self._connections.get(key, 0), self._unauthenticated.get(key, 0)

    # -- failed authentication ------------------------------------------------------------

    def locked_for(self, client: str) -> float:
        """Seconds ``client`` stays locked out (0.0: not locked); a positive answer
        is counted as one authentication refused unchecked."""
        key = self._key(client)
        record = self._failures.get(key) if key is not None else None
        if record is None:
            return 0.0
        left = record.locked_until - self.clock()
        if left <= 0:
            return 0.0
        self._stats.auth_refused_locked += 1
        return left

    def failed(self, client: str) -> float:
        """Record a failed authentication from ``client``; return how long to wait
        before answering it (0.0: at once). May start a lockout."""
        key = self._key(client)
        if key is None:
            return 0.0
        config = self.config
        now = self.clock()
        self._forget(now)
        record = self._failures.pop(key, None)
        if record is None or (
            now - record.last >= config.auth_forget_after and now >= record.locked_until
        ):
            record = _Failures(0, now)
        record.count += 1
        record.last = now
        self._failures[key] = record  # (re)inserted last: the dict stays in time order
        if len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        if record.count >= config.auth_lockout_after and now >= record.locked_until:
            record.locked_until = now + config.auth_lockout
            self._stats.auth_lockouts += 1
            self._warn(
                client,
                "lockout",
                "locking out %s for %gs after %d failed authentications",
                config.auth_lockout,
                record.count,
            )
        excess = record.count - config.auth_free_failures
        if excess <= 0:
            return 0.0
        self._stats.auth_delayed += 1
        return float(min(config.auth_max_delay, config.auth_delay * 2.0 ** min(excess - 1, 64)))

    def _forget(self, now: float) -> None:
        """Drop the oldest records once they are stale (the dict is in time order)."""
        config = self.config
        failures = self._failures
        while failures:
            key, record = next(iter(failures.items()))
            if now - record.last < config.auth_forget_after or now < record.locked_until:
                return
            del failures[key]

    # -- reporting ----------------------------------------------------------------------

    def _warn(self, client: str, kind: str, message: str, *args: object) -> None:
        key = (self._key(client) or client, kind)
        now = self.clock()
        last = self._warned.pop(key, None)
        if last is not None and now - last < WARN_EVERY:
            self._warned[key] = last
            return
        self._warned[key] = now
        if len(self._warned) > MAX_TRACKED:
            self._warned.popitem(last=False)
        logger.warning(message + " (logged once a minute per address)", key[0], *args)

    def statistics(self) -> GuardStatistics:
        now = self.clock()
        locked = sum(1 for record in self._failures.values() if record.locked_until > now)
        return attrs.evolve(self._stats, locked_addresses=locked)


_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("[^"]*"|[^;\s]*)', re.IGNORECASE)


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` nodes of a ``Forwarded`` header (RFC 7239 §4), one per element,
    as bare addresses: ``for="[2001:db8::1]:4711"`` is ``2001:db8::1``,
    ``for=192.0.2.60:80`` (quoted) ``192.0.2.60``. An element without one, or with
    ``unknown`` or an obfuscated name, gives an entry no address parses from, so
    nothing to its left is believed."""
    nodes = []
    for element in value.split(","):
        match = _FOR.search(element)
        node = match[1].strip('"') if match else ""
        if node.startswith("["):
            node = node[1 : node.find("]")] if "]" in node else ""
        elif node.count(":") == 1:
            node = node.split(":", 1)[0]  # IPv4 with a port
        nodes.append(node)
    return nodes


def _networks(cidrs: list[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: list[Network]
) -> bool:
    return any(address.version == n.version and address in n for n in networks)
