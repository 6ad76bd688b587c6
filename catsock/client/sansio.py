"""The client's decisions with no I/O: the sans-IO core every runtime drives.

Theory of operation (websockets' ``protocol.py`` style). ``ClientProtocol``
never touches a socket, a file or a clock. A runtime (trio, asyncio, or the
synchronous client's thread) owns the WebSocket and the outbox and:

1. connects, sends ``auth_frame()`` and hands the reply to ``connection_made``,
   which returns the ``Grant`` or raises ``AuthError`` (final), ``Refused`` or
   ``BadHandshake`` (both worth a reconnect);
2. feeds every frame it reads to ``receive_frame(data, now)`` and drains
   ``events()``: ``Incoming`` (an event for the handlers and the iterator),
   ``Answered`` (a publish's outcome: record its ``settlement`` in the outbox,
   then call ``settled`` and wake the publisher) and ``GatewayError`` (log it);
3. sends whatever ``next_frame(now)`` returns until it returns None, then waits
   until new work (``track``, ``handled``, a frame) or ``wake_at()``;
4. watches the link with ``ping_at()`` / ``dead_at()`` (``arrived`` on a pong);
5. calls ``connection_lost()`` when the connection ends and asks
   ``Reconnects`` how long to wait before the next attempt.

The core decides everything else: the envelope, the in-flight table and its
window, what goes again after a reconnect or a rate limit, the pacing, which
``accepted`` or ``error`` answers which publish, the cumulative acks, where to
resume, and which replayed events to drop. The same decisions therefore hold
on every runtime, and the tests of this module need no gateway.

Errors: ``AuthError`` (values.py) ends the client; ``Refused`` and
``BadHandshake`` are transient and subclass ``TransientError``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

import attrs
import orjson

from protocol.codec import json_object
from storage.outbox import Settlement

from ..backoff import Backoff
from .values import Accepted, AuthError, ConnectError, PublishError, ReceivedEvent, timestamp

#: The gateway's default frame limit (docs/protocol.md §4.1); bigger events are refused locally.
MAX_MESSAGE_SIZE: Final = 64 * 1024

#: The longest pause a rate limit may impose, whatever ``retry_after`` says.
MAX_PAUSE: Final = 60.0
#: Errors after which the named event is sent again after ``retry_after``: a rate
#: limit, and a gateway whose event log is unreachable (nothing was published).
RETRIED: Final = frozenset({"RATE_LIMIT_EXCEEDED", "OVERLOADED"})


class TransientError(Exception):
    """A connection attempt or a connection failed in a way a reconnect may cure."""


class Refused(TransientError):
    """The gateway answered ``auth`` with an error other than AUTH_FAILED
    (CONNECTION_LIMIT, CONNECTION_TIMEOUT, ...)."""


class BadHandshake(TransientError):
    """The gateway answered ``auth`` with something other than ``auth_success``."""


class LinkDead(TransientError):
    """Nothing arrived for two heartbeat intervals."""


@attrs.frozen
class Target:
    """Where a ``ws://`` or ``wss://`` URL points."""

    host: str
    port: int
    resource: str
    host_header: str
    tls: bool


def parse_url(url: str) -> Target:
    """``ValueError`` for anything but a ``ws://`` or ``wss://`` URL with a host."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    tls = scheme == "wss"
    port = parts.port or (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = port == (443 if tls else 80)
    return Target(parts.hostname, port, resource, shown if default else f"{shown}:{port}", tls)


# -- what the core hands the runtime ----------------------------------------------------


@attrs.frozen
class Incoming:
    """An event for the handlers and the iterator, in order."""

    event: ReceivedEvent


@attrs.frozen
class Answered:
    """A publish's outcome: record ``settlement`` in the outbox, then ``settled(message_id)``
    and finish the publisher's wait with ``outcome``."""

    message_id: str
    outcome: Accepted | PublishError
    settlement: Settlement


@attrs.frozen
class GatewayError:
    """An ``error`` frame that answers no publish of ours (worth a log line)."""

    code: str
    message: str


Event: TypeAlias = Incoming | Answered | GatewayError


@attrs.frozen
class Grant:
    """What ``auth_success`` granted this connection."""

    number: int
    connection_id: str
    extensions: dict[str, Any]
    acks: bool
    heartbeat: float | None


@attrs.define(eq=False)
class Pending:
    """A publish the core tracks until its answer is recorded."""

    message_id: str
    type: str
    text: str
    from_outbox: bool = False  # left PENDING by an earlier client: its next send is a retry
    answered: bool = False
    sends: int = 0
    sent_on: int = 0  # the connection it was last sent on
    queued: bool = False


class ClientProtocol:
    """The state of one client across its connections; see the module docstring."""

    def __init__(
        self,
        token: str,
        client_type: str = "CATS",
        *,
        acks: bool = True,
        resume: bool = True,
        since: int | None = None,
        receive: bool = True,
        heartbeat: float | None = 15.0,
        max_in_flight: int = 100,
        ack_delay: float = 0.05,
        ack_batch: int = 50,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.token = token
        self.client_type = client_type
        self.acks = acks
        self.receive = receive
        self.resume = resume and receive
        self.heartbeat = heartbeat
        self.max_in_flight = max_in_flight
        self.ack_delay = ack_delay
        self.ack_batch = ack_batch
        self.max_message_size = max_message_size
        #: Authenticated connections so far.
        self.connections = 0
        self.grant: Grant | None = None
        self.last_arrival = 0.0

        self._events: list[Event] = []
        self._inflight: dict[str, Pending] = {}
        self._queue: deque[Pending] = deque()
        self._outstanding: set[str] = set()  # sent on this connection, not answered
        self._retried: list[str] = []
        self._pause_until = -math.inf
        self._pace = 0.0

        self._cursor: int | None = since  # where to resume from after a reconnect
        self._received: int | None = None  # highest seq handed out as Incoming
        self._processed: int | None = None  # highest seq handled (what we ack)
        self._acked: int | None = None
        self._unacked = 0
        self._ack_due = False
        self._ack_deadline: float | None = None

    # -- publishing ----------------------------------------------------------------------

    def envelope(self, type_: str, payload: Mapping[str, Any], message_id: str, now: float) -> str:
        """The seed envelope (§4.2) as JSON text, ``sender`` = this client's type, stamped
        with the wall-clock time ``now``. ``TypeError`` for a payload that is no mapping,
        ``PublishError`` MESSAGE_TOO_LARGE over ``max_message_size``."""
        if not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a JSON object (a mapping), not {type(payload)}")
        text = orjson.dumps(
            {
                "version": "1.0",
                "type": type_,
                "timestamp": timestamp(now),
                "message_id": message_id,
                "sender": self.client_type,
                "payload": dict(payload),
            }
        ).decode()
        if len(text.encode()) > self.max_message_size:
            raise PublishError(
                "MESSAGE_TOO_LARGE", f"over {self.max_message_size} bytes", message_id
            )
        return text

    def track(self, message_id: str, type_: str, text: str, *, from_outbox: bool = False) -> bool:
        """Queue a publish (already stored in the outbox, if there is one). False when that
        ``message_id`` is in flight already: the earlier publish stands for both."""
        if message_id in self._inflight:
            return False
        pending = Pending(message_id, type_, text, from_outbox, queued=True)
        self._inflight[message_id] = pending
        self._queue.append(pending)
        return True

    def in_flight(self, message_id: str) -> bool:
        return message_id in self._inflight

    @property
    def unsettled(self) -> int:
        """Publishes tracked and not yet ``settled``."""
        return len(self._inflight)

    def settled(self, message_id: str) -> None:
        """The runtime recorded the answer: forget the publish."""
        self._inflight.pop(message_id, None)

    def take_retried(self) -> list[str]:
        """Message ids sent again since the last call (``retry_count += 1`` in the outbox)."""
        retried, self._retried = self._retried, []
        return retried

    def unanswered(self) -> list[str]:
        """Message ids tracked and not answered (they fail with ``ClientClosed`` on close)."""
        return [p.message_id for p in self._inflight.values() if not p.answered]

    # -- connecting ----------------------------------------------------------------------

    def auth_frame(self) -> str:
        extensions: dict[str, Any] = {}
        if self.acks:
            extensions["acks"] = {}
        if self.resume:
            extensions["resume"] = {} if self._cursor is None else {"since": self._cursor}
        if self.heartbeat is not None:
            extensions["heartbeat"] = {"interval": self.heartbeat}
        auth = {
            "type": "auth",
            "token": self.token,
            "client_type": self.client_type,
            "extensions": extensions,
        }
        return orjson.dumps(auth).decode()

    def connection_made(self, reply: str | bytes, now: float) -> Grant:
        """Read the answer to ``auth_frame``; on success the connection is open and
        everything unanswered is queued again, in order."""
        message = json_object(reply)
        kind = message.get("type")
        if kind == "error":
            code, text = error_fields(message)
            if code == "AUTH_FAILED":
                raise AuthError(code, text)
            raise Refused(f"{code}: {text}")
        if kind != "auth_success":
            raise BadHandshake(f"expected auth_success, got {kind!r}")
        granted = message.get("extensions")
        granted = granted if isinstance(granted, dict) else {}
        beat = granted.get("heartbeat")
        interval = beat.get("interval") if isinstance(beat, dict) else None
        if not isinstance(interval, int | float) or isinstance(interval, bool):
            interval = self.heartbeat
        self.connections += 1
        self.grant = Grant(
            self.connections,
            str(message.get("connection_id")),
            granted,
            "acks" in granted,
            None if interval is None else float(interval),
        )
        self.last_arrival = now
        self._resumed(granted.get("resume"))
        again = [p for p in self._inflight.values() if not p.answered]
        for pending in self._queue:
            pending.queued = False
        self._queue = deque(again)
        for pending in again:
            pending.queued = True
        self._outstanding.clear()
        self._acked = self._processed
        self._unacked = 0
        self._ack_due = False
        self._ack_deadline = None
        return self.grant

    def _resumed(self, grant: Any) -> None:
        """Where this connection's replay starts; a live start counts as having seen ``head``."""
        if isinstance(grant, dict) and self._cursor is None:
            since, head = grant.get("since"), grant.get("head")
            start = since if since is not None else head
            if isinstance(start, int) and not isinstance(start, bool):
                self._cursor = start
        if self._received is None:
            self._received = self._cursor

    def connection_lost(self) -> None:
        self.grant = None
        self._outstanding.clear()

    # -- reading -------------------------------------------------------------------------

    def receive_frame(self, data: str | bytes, now: float) -> None:
        """Interpret one frame from the gateway; drain ``events()`` afterwards."""
        self.last_arrival = now
        try:
            message = json_object(data)
        except ValueError:
            self._events.append(GatewayError("INVALID_FRAME", "a frame that is not a JSON object"))
            return
        if "payload" in message and "message_id" in message and "version" in message:
            self._on_event(message, data)
        elif message.get("type") == "accepted":
            self._on_accepted(message)
        elif message.get("type") == "error":
            self._on_error(message, now)

    def events(self) -> list[Event]:
        """What the frames fed so far (and ``next_frame``) produced, oldest first."""
        events, self._events = self._events, []
        return events

    def arrived(self, now: float) -> None:
        """Something other than a frame (a pong) came from the gateway."""
        self.last_arrival = now

    def _on_event(self, message: dict[str, Any], data: str | bytes) -> None:
        if not self.receive:
            return
        seq = message.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            seq = None
        elif self._received is not None and seq <= self._received:
            return  # replayed after a reconnect, but already handed out
        payload = message.get("payload")
        self._events.append(
            Incoming(
                ReceivedEvent(
                    seq,
                    str(message.get("type")),
                    str(message.get("message_id")),
                    str(message.get("sender")),
                    payload if isinstance(payload, dict) else {},
                    message,
                    data if isinstance(data, str) else data.decode("utf-8", "replace"),
                )
            )
        )

    def buffered(self, seq: int | None) -> None:
        """The runtime holds the ``Incoming`` event ``seq`` (in its receive buffer): a
        replay of it is dropped from now on. (Not before: an event lost with a cancelled
        reader must be taken again when it is replayed.)"""
        if seq is not None and (self._received is None or seq > self._received):
            self._received = seq

    def _on_accepted(self, message: dict[str, Any]) -> None:
        pending = self._inflight.get(str(message.get("message_id")))
        if pending is None or pending.answered:
            return  # an answer to a resend: the first one counted
        seq = message.get("seq")
        accepted = Accepted(
            pending.message_id,
            seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
            message.get("duplicate") is True,
        )
        self._answer(pending, accepted, Settlement(pending.message_id, accepted.seq))

    def _on_error(self, message: dict[str, Any], now: float) -> None:
        code, text = error_fields(message)
        payload = message.get("payload")
        message_id = payload.get("message_id") if isinstance(payload, dict) else None
        if code in RETRIED:
            retry_after = payload.get("retry_after") if isinstance(payload, dict) else None
            # A rate limit also sets the pace; an unreachable log only a pause.
            paced = code == "RATE_LIMIT_EXCEEDED"
            self._rate_limited(message_id, retry_after, now, paced=paced)
            return
        pending = self._inflight.get(message_id) if isinstance(message_id, str) else None
        if pending is None or pending.answered:
            self._events.append(GatewayError(code, text))
            return
        error = PublishError(code, text, pending.message_id)
        self._answer(pending, error, Settlement(pending.message_id, error=f"{code}: {text}"))

    def _rate_limited(
        self, message_id: Any, retry_after: Any, now: float, *, paced: bool = True
    ) -> None:
        """Pause for ``retry_after``, then send at that pace until caught up. The refused
        frame is resent: the named event, or (when the error names none) every event sent
        on this connection and not answered yet. Resending is safe: the gateway dedups."""
        wait = retry_after if isinstance(retry_after, int | float) and retry_after > 0 else 1.0
        wait = min(float(wait), MAX_PAUSE)
        if paced:
            self._pace = max(self._pace, wait)
        self._pause_until = max(self._pause_until, now + wait)
        if isinstance(message_id, str):
            named = self._inflight.get(message_id)
            suspects = [] if named is None else [named]
        else:
            suspects = list(self._inflight.values())
            self._ack_due = self._processed is not None  # it may have been the ack
            self._acked = None
        number = 0 if self.grant is None else self.grant.number
        again = [p for p in suspects if not p.answered and not p.queued and p.sent_on == number]
        for pending in reversed(again):
            pending.queued = True
            self._outstanding.discard(pending.message_id)
            self._queue.appendleft(pending)

    def _answer(self, pending: Pending, outcome: Accepted | PublishError, row: Settlement) -> None:
        pending.answered = True
        self._outstanding.discard(pending.message_id)
        self._events.append(Answered(pending.message_id, outcome, row))

    # -- receiving: acks -----------------------------------------------------------------

    def handled(self, seq: int | None, now: float) -> None:
        """The application is done with the event ``seq``: schedule a cumulative ack."""
        if seq is None or (self._processed is not None and seq <= self._processed):
            return
        self._processed = self._cursor = seq
        self._unacked += 1
        if self.grant is None or not self.grant.acks:
            return
        if self._unacked >= self.ack_batch:
            self._ack_due = True
        elif self._ack_deadline is None:
            self._ack_deadline = now + self.ack_delay

    def closing_ack(self) -> str | None:
        """The ack to send before a close frame, if anything handled is unacknowledged."""
        seq = self._processed
        if self.grant is None or not self.grant.acks or seq is None:
            return None
        if self._acked is not None and seq <= self._acked:
            return None
        self._acked = seq
        return ack_frame(seq)

    # -- writing -------------------------------------------------------------------------

    def next_frame(self, now: float) -> str | None:
        """The next frame to send on the current connection, or None (wait for new work
        or ``wake_at()``). Acks go first; a rate limit paces both kinds."""
        grant = self.grant
        if grant is None or self._pause_until > now:
            return None
        if self._ack_deadline is not None and self._ack_deadline <= now:
            self._ack_deadline = None
            self._ack_due = True
        if self._ack_due and grant.acks and self._processed is not None:
            self._ack_due = False
            self._ack_deadline = None
            if self._acked is None or self._processed > self._acked:
                self._acked, self._unacked = self._processed, 0
                self._paced(now)
                return ack_frame(self._processed)
        pending = self._next_pending(grant)
        if pending is None:
            self._pace = 0.0  # caught up
            return None
        if pending.sends or pending.from_outbox:
            pending.from_outbox = False
            self._retried.append(pending.message_id)
        pending.sends += 1
        pending.sent_on = grant.number
        if grant.acks:
            self._outstanding.add(pending.message_id)
        else:  # nothing more will come: sent is all we learn
            self._answer(
                pending, Accepted(pending.message_id, None), Settlement(pending.message_id)
            )
        self._paced(now)
        return pending.text

    def _next_pending(self, grant: Grant) -> Pending | None:
        while self._queue:
            if grant.acks and len(self._outstanding) >= self.max_in_flight:
                return None  # the window is full: wait for answers
            pending = self._queue.popleft()
            pending.queued = False
            if not pending.answered:
                return pending
        return None

    def _paced(self, now: float) -> None:
        if self._pace:
            self._pause_until = now + self._pace

    def wake_at(self) -> float | None:
        """When ``next_frame`` may have something without new input (a pause ending, an
        ack falling due); None: only new input can give it work."""
        times = [t for t in (self._ack_deadline,) if t is not None]
        if self._pause_until > -math.inf and (self._queue or self._ack_due or times):
            times.append(self._pause_until)
        return min(times) if times else None

    # -- heartbeat -----------------------------------------------------------------------

    def ping_at(self) -> float | None:
        """When the link has been quiet for a heartbeat interval: ping then."""
        if self.grant is None or self.grant.heartbeat is None:
            return None
        return self.last_arrival + self.grant.heartbeat

    def dead_at(self) -> float | None:
        """Nothing from the gateway until then (two intervals) means a dead link."""
        if self.grant is None or self.grant.heartbeat is None:
            return None
        return self.last_arrival + 2 * self.grant.heartbeat


class Reconnects:
    """The reconnect schedule: how long to wait before each attempt, when to give up.
    Every reconnect waits (the first after a lost connection too); the count starts
    again after each authenticated connection."""

    def __init__(
        self, backoff: Backoff, rng: random.Random, max_attempts: int | None, url: str
    ) -> None:
        self.backoff = backoff
        self.rng = rng
        self.max_attempts = max_attempts
        self.url = url
        self._attempt = 0
        self._failures = 0
        self._first = True

    def delay(self) -> float:
        """Seconds to wait before the next attempt (0 before the very first)."""
        if self._first:
            self._first = False
            return 0.0
        self._attempt += 1
        return self.backoff.delay(self._attempt, self.rng)

    def failed(self, reason: str) -> None:
        """An attempt failed; ``ConnectError`` once ``max_attempts`` failed in a row."""
        self._failures += 1
        if self.max_attempts is not None and self._failures >= self.max_attempts:
            raise ConnectError(
                f"{self._failures} attempts to connect to {self.url} failed; last: {reason}"
            )

    def connected(self) -> None:
        self._attempt = self._failures = 0


def ack_frame(seq: int) -> str:
    return f'{{"type":"ack","seq":{seq}}}'


def error_fields(message: dict[str, Any]) -> tuple[str, str]:
    payload = message.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    return str(payload.get("error_code", "UNKNOWN")), str(payload.get("error_message", ""))
