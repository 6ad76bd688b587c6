"""protocol.machine: a test per entry of ``TRANSITIONS``, the misuse that raises
``LocalProtocolError``, then ``ConnectionMachine`` driven against a model of the spec."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import protocol as p
from protocol.machine import Input, State
from tests.protocol import strategies as S

WALL0 = 1_761_741_296.0  # 2025-10-29T12:34:56Z
CLIENT_TYPES = ("CATS", "AFAD", "DASHBOARD", "OTHER")
E, IN = p.ErrorCode, Input
A, U, C, X = State
POLICY = p.CloseCode.POLICY_VIOLATION


@attrs.define
class Clocks:
    """Monotonic and wall clocks the test moves by hand."""

    now: float = 0.0

    def wall(self) -> float:
        return WALL0 + self.now

    def stamp(self) -> str:
        """The seed's ``gmdate('Y-m-d\\TH:i:s\\Z')`` of the wall clock, made here
        rather than with ``protocol.iso_timestamp``, which is under test."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall()))


def machine_in(
    state: State, start: float = 0.0, **config: Any
) -> tuple[p.ConnectionMachine, Clocks]:
    """A fresh machine (principal CATS, no user) brought to ``state``."""
    clocks = Clocks(start)
    machine = p.ConnectionMachine(
        "conn-1", p.MachineConfig(**config), clock=lambda: clocks.now, wall_clock=clocks.wall
    )
    if state is not A:
        machine.receive(p.Auth(token="tok", client_type="CATS"))
    if state is C:
        machine.auth_accepted(p.Principal("id-1", "CATS"))
    if state is X:
        machine.closed()
    return machine, clocks


def summary(action: p.Action) -> tuple[Any, ...]:
    """The parts of an action the tests compare (error texts are free-form)."""
    match action:
        case p.Send(p.Error(payload=pl)):
            return ("error", pl.error_code, pl.message_id, pl.retry_after)
        case p.Send(p.Pong(timestamp=ts)):
            return ("pong", ts)
        case p.Send(p.AuthSuccess(connection_id=cid, extensions=ext)):
            return ("auth_success", cid, ext)
        case p.Close(code=code):
            return ("close", code)
        case p.Verify(token=token, client_type=client_type, refresh=refresh):
            return ("refresh" if refresh else "verify", token, client_type)
    return (type(action).__name__.lower(), *attrs.astuple(action, recurse=False))


def summaries(actions: list[p.Action] | None) -> list[tuple[Any, ...]]:
    return [summary(a) for a in actions or []]


def err(code: p.ErrorCode, mid: str | None = None, retry: float | None = None) -> tuple[Any, ...]:
    return ("error", code.value, mid, retry)


ENVELOPE = dict(type="budget_alert", version="1.0", timestamp="t", message_id="m-1", sender="CATS")
ALERT = p.Event(
    **ENVELOPE,
    payload=p.BudgetAlertPayload(adware_id=1, current_budget=9, limit=10, usage_percentage=0.5),
)
INVALID = p.ProtocolError(E.INVALID_MESSAGE, "bad", message_id="m-2")
FATAL = p.ProtocolError(E.MESSAGE_TOO_LARGE, "big", close_code=p.CloseCode.MESSAGE_TOO_BIG)
PEER_MESSAGES: dict[str, p.Message] = {
    "ping": p.Ping(),
    "pong": p.Pong(),
    "error": p.Error(payload=p.ErrorPayload(error_code="X", error_message="y")),
    "auth_success": p.AuthSuccess(connection_id="c"),
    "auth_failed": p.AuthFailed(),
    "event": ALERT,
    "spoofed": attrs.evolve(ALERT, sender="AFAD"),
    "ack": p.Ack(seq=3),
}
FEEDS: dict[str, Callable[[p.ConnectionMachine], Any]] = {
    "auth": lambda mc: mc.receive(p.Auth(token="tok", client_type="CATS")),
    **{name: (lambda mc, m=msg: mc.receive(m)) for name, msg in PEER_MESSAGES.items()},
    "invalid": lambda mc: mc.receive_invalid(INVALID),
    "fatal": lambda mc: mc.receive_invalid(FATAL),
    "pong twice": lambda mc: (mc.receive(p.Pong()), mc.receive(p.Pong()))[1],
    "accepted": lambda mc: mc.auth_accepted(p.Principal("id-1", "CATS")),
    "rejected": lambda mc: mc.auth_rejected(),
    "timeout": lambda mc: mc.timeout(),
    "closed": lambda mc: mc.closed(),
}
NEED_AUTH = [err(E.AUTH_REQUIRED)]
TIMED_OUT = [err(E.CONNECTION_TIMEOUT), ("close", POLICY)]
TOO_LARGE = [err(E.MESSAGE_TOO_LARGE), ("close", FATAL.close_code)]
SILENT = [("close", p.CloseCode.HEARTBEAT_TIMEOUT)]
STAMP = "2025-10-29T12:34:56Z"  # iso_timestamp(WALL0), the seed's gmdate format
ROWS: list[tuple[State, Input, str, list[tuple[Any, ...]]]] = [
    (A, IN.AUTH, "auth", [("verify", "tok", "CATS")]),
    (A, IN.PING, "ping", NEED_AUTH),
    (A, IN.PONG, "pong", NEED_AUTH),
    (A, IN.ACK, "ack", NEED_AUTH),
    (A, IN.EVENT, "event", NEED_AUTH),
    (A, IN.PEER_ERROR, "error", NEED_AUTH),
    (A, IN.SERVER_ONLY, "auth_success", NEED_AUTH),
    (A, IN.INVALID, "invalid", [err(E.INVALID_MESSAGE, "m-2")]),
    (A, IN.FATAL, "fatal", TOO_LARGE),
    (A, IN.TIMEOUT, "timeout", TIMED_OUT),
    (A, IN.CLOSE, "closed", []),
    (U, IN.AUTH_OK, "accepted", [("auth_success", "conn-1", None), ("subscribe", ("type:CATS",))]),
    (U, IN.AUTH_REJECTED, "rejected", [err(E.AUTH_FAILED), ("close", POLICY)]),
    (U, IN.TIMEOUT, "timeout", TIMED_OUT),
    (U, IN.CLOSE, "closed", []),
    (C, IN.AUTH, "auth", [err(E.ALREADY_AUTHENTICATED)]),
    (C, IN.PING, "ping", [("pong", STAMP)]),
    (C, IN.PONG, "pong", []),
    (C, IN.ACK, "ack", [err(E.INVALID_MESSAGE)]),  # acks not negotiated
    (C, IN.EVENT, "event", [("publish", ALERT, ("type:AFAD", "type:DASHBOARD"))]),
    (C, IN.REFUSED, "spoofed", [err(E.SENDER_MISMATCH, "m-1")]),
    (C, IN.PEER_ERROR, "error", []),
    (C, IN.SERVER_ONLY, "auth_failed", [err(E.INVALID_MESSAGE)]),
    (C, IN.INVALID, "invalid", [err(E.INVALID_MESSAGE, "m-2")]),
    (C, IN.RATE_LIMITED, "pong twice", [err(E.RATE_LIMIT_EXCEEDED, None, 1.0)]),
    (C, IN.FATAL, "fatal", TOO_LARGE),
    (C, IN.TIMEOUT, "timeout", SILENT),
    (C, IN.CLOSE, "closed", []),
    (X, IN.CLOSE, "closed", []),
]


def test_every_transition_has_a_row() -> None:
    assert len({(s, i) for s, i, *_ in ROWS}) == len(ROWS)
    assert {(s, i) for s, i, *_ in ROWS} == set(p.TRANSITIONS)


@pytest.mark.parametrize(
    ("state", "kind", "feed", "expected"), ROWS, ids=[f"{r[0].name}-{r[2]}" for r in ROWS]
)
def test_transition(state: State, kind: Input, feed: str, expected: list[tuple[Any, ...]]) -> None:
    machine, _ = machine_in(state, rate_limits={"CATS": p.RateLimit(60, 1)})
    assert summaries(FEEDS[feed](machine)) == expected
    assert machine.state is p.TRANSITIONS[state, kind]


START = {"awaiting": A, "authenticating": U, "active": C, "closed early": A, "closed": C}
MISUSE = [
    *[("authenticating", name) for name in [*PEER_MESSAGES, "auth", "invalid", "fatal"]],
    *[(start, name) for start in ("closed early", "closed") for name in FEEDS if name != "closed"],
    *[(start, name) for start in ("awaiting", "active") for name in ("accepted", "rejected")],
]


@pytest.mark.parametrize(("start", "feed"), MISUSE, ids=[f"{s}-{f}" for s, f in MISUSE])
def test_misuse_raises_local_protocol_error(start: str, feed: str) -> None:
    """Input the runtime may not feed in that state ("closed early": before any auth)."""
    machine, _ = machine_in(START[start])
    if start.startswith("closed"):
        machine.closed()
    before = machine.state
    with pytest.raises(p.LocalProtocolError):
        FEEDS[feed](machine)
    assert machine.state is before


def test_violations_refill_at_the_client_rate() -> None:
    machine, clocks = machine_in(C, rate_limits={"CATS": p.RateLimit(120, 1)}, abuse_limit=1)
    assert machine.receive(p.Pong()) == []  # the one token
    assert summaries(machine.receive(p.Pong())) == [err(E.RATE_LIMIT_EXCEEDED, None, 0.5)]
    clocks.now += 0.25  # half a token back, and half a violation: not enough
    assert summaries(machine.receive(p.Pong()))[-1] == ("close", POLICY)


def test_identity_bucket_is_shared() -> None:
    machine, _ = machine_in(U)
    machine.auth_accepted(p.Principal("id", "CATS"), identity_bucket=p.TokenBucket(1.0, 1, 0.0))
    assert machine.receive(p.Pong()) == []
    assert summaries(machine.receive(p.Pong())) == [err(E.RATE_LIMIT_EXCEEDED, None, 1.0)]


@given(st.floats(0, 0.6, exclude_max=True), st.floats(0, 10**6))
def test_obeying_retry_after_gets_through(gap: float, start: float) -> None:
    """An empty DASHBOARD bucket, ``gap`` seconds of refill, a refused ping: waiting
    exactly its ``retry_after`` must let the next ping through (default limits)."""
    machine, clocks = machine_in(U, start, abuse_limit=10**6)
    machine.auth_accepted(p.Principal("id", "DASHBOARD"))
    while not isinstance(machine.receive(p.Ping())[0].message, p.Error):  # type: ignore[union-attr]
        pass
    clocks.now += gap
    (reply,) = machine.receive(p.Ping())
    assume(isinstance(reply, p.Send) and isinstance(reply.message, p.Error))
    retry = reply.message.payload.retry_after  # type: ignore[union-attr]
    assert retry is not None
    assert retry > 0
    clocks.now += retry
    assert summaries(machine.receive(p.Ping())) == [("pong", clocks.stamp())]


# --- the model -----------------------------------------------------------------------

LIMITS = {"CATS": p.RateLimit(60, 3), "AFAD": p.RateLimit(120, 2), "DASHBOARD": p.RateLimit(30, 1)}
FALLBACK = p.RateLimit(60, 2)
AWAITING, AUTHENTICATING, ACTIVE, CLOSED = "awaiting auth", "authenticating", "active", "closed"
AS_STATE = dict(zip((AWAITING, AUTHENTICATING, ACTIVE, CLOSED), State, strict=True))
Expected = list[tuple[Any, ...]] | None  # None: the call must raise LocalProtocolError
Answer = Callable[[], tuple[Expected, Input]]
HEARTBEAT = st.just(True) | st.fixed_dictionaries({}, optional={"interval": st.floats(0, 12)})
EXT = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "heartbeat": HEARTBEAT,
        "acks": st.just({}),
        "resume": st.sampled_from([{"since": 3}, {}, {"since": -1}]),
    },
)


#: Seed 000 §4.3's direction column and §5.4's budget_update, written out here (the
#: machine uses protocol/routing.py's table, which is under test), with the CATS → AFAD
#: business events also going to DASHBOARD: event type -> (the one client type that
#: may send it, the client types it goes to, the payload fields that name users).
BUSINESS = ("AFAD", "DASHBOARD")
SPEC_ROUTES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "conversion": ("CATS", BUSINESS, ("owner_id", "tier_rewards")),
    "click": ("CATS", BUSINESS, ("owner_id",)),
    "tier_reward": ("CATS", BUSINESS, ("owner_id",)),
    "budget_alert": ("CATS", BUSINESS, ()),
    "fraud_alert": ("CATS", BUSINESS, ()),
    "adware_update": ("AFAD", ("CATS",), ()),
    "budget_update": ("AFAD", ("CATS",), ()),
    "stats_update": ("CATS", ("DASHBOARD",), ("owner_id",)),
    "user_online": ("CATS", ("DASHBOARD",), ()),
}


def spec_channels(ev: p.Event) -> tuple[str, ...]:
    """Where the spec sends ``ev``: its client types' channels, then one channel per
    user the payload names (an int, or a string of 1-64 characters), no repeats."""
    _, to_types, user_fields = SPEC_ROUTES[ev.type]
    users: list[Any] = []
    if "owner_id" in user_fields:
        users.append(ev.payload.owner_id)  # type: ignore[union-attr]
    if "tier_rewards" in user_fields:
        users.extend(t.user_id for t in ev.payload.tier_rewards)  # type: ignore[union-attr]
    named = [
        u
        for u in users
        if (isinstance(u, int) and not isinstance(u, bool))
        or (isinstance(u, str) and 1 <= len(u) <= 64)
    ]
    channels = [f"type:{t}" for t in to_types] + [f"user:{u}" for u in named]
    return tuple(dict.fromkeys(channels))


def test_spec_channels_of_a_conversion() -> None:
    """The model's own routing, on the seed's example conversion (§4.2)."""
    payload = p.ConversionPayload(
        pay_id=1, access_id=2, adware_id=100, owner_id=500, cost=1, sales=5, state="PENDING",
        tier_rewards=[p.TierRewardEntry(tier_level=1, user_id=499, amount=100)],
    )  # fmt: skip
    ev = attrs.evolve(ALERT, type="conversion", payload=payload)
    assert spec_channels(ev) == ("type:AFAD", "type:DASHBOARD", "user:500", "user:499")


class Model(RuleBasedStateMachine):
    """The connection from the spec, with its own bucket arithmetic. Rates of 0.5, 1 or 2
    tokens/s and time in quarter seconds keep every number exact, so agreement is exact."""

    @initialize(
        unauth=st.integers(0, 3), abuse=st.integers(1, 3), limits=st.booleans(), hb=st.booleans()
    )
    def start(self, unauth: int, abuse: int, limits: bool, hb: bool) -> None:
        self.clocks = Clocks(1000.0)
        self.config = p.MachineConfig(
            rate_limits=LIMITS if limits else None,
            fallback_rate_limit=FALLBACK,
            abuse_limit=abuse,
            max_unauthenticated=unauth,
            heartbeat=p.HeartbeatOffer(default=4.0, minimum=1.0, maximum=8.0) if hb else None,
        )
        self.machine = p.ConnectionMachine(
            "conn-1", self.config, clock=lambda: self.clocks.now, wall_clock=self.clocks.wall
        )
        self.phase, self.strikes, self.limited, self.client_type = AWAITING, 0, False, None
        self.requested: dict[str, Any] | None = None
        self.rate = self.tokens = self.burst = self.spare = 0.0  # spare: the abuse allowance
        self.deadline, self.silence = 1010.0, math.inf  # auth within 10 s; heartbeat silence

    def charge(self, message_id: str | None = None) -> tuple[Expected, Input] | None:
        if not self.limited or self.tokens >= 1:
            self.tokens -= self.limited
            return None
        if self.spare >= 1:
            self.spare -= 1
            retry = math.ceil((1 - self.tokens) / self.rate * 1000) / 1000  # whole ms, up
            return [err(E.RATE_LIMIT_EXCEEDED, message_id, retry)], IN.RATE_LIMITED
        self.phase = CLOSED
        return [err(E.RATE_LIMIT_EXCEEDED), ("close", POLICY)], IN.FATAL

    def strike(self, reply: tuple[Any, ...], kind: Input) -> tuple[Expected, Input]:
        self.strikes += 1
        if self.strikes <= self.config.max_unauthenticated:
            return [reply], kind
        self.phase = CLOSED
        return [err(E.AUTH_REQUIRED), ("close", POLICY)], IN.FATAL

    def check(self, call: Callable[[], Any], expected: Expected, kind: Input) -> None:
        before = self.machine.state
        if expected is None:
            with pytest.raises(p.LocalProtocolError):
                call()
            assert self.machine.state is before
            return
        actions = call() or []
        assert summaries(actions) == expected
        for action in actions:
            if isinstance(action, p.Send):
                assert getattr(action.message, "timestamp", None) == self.clocks.stamp()
        closes = [i for i, action in enumerate(actions) if isinstance(action, p.Close)]
        assert closes in ([], [len(actions) - 1])  # a Close is always the last action
        assert p.TRANSITIONS[before, kind] is self.machine.state
        if self.phase is ACTIVE:  # any message pushes the heartbeat deadline forward
            self.deadline = self.clocks.now + self.silence
        event(f"{before.value} + {kind.value}")  # see --hypothesis-show-statistics

    def receive(self, message: p.Message, kind: Input, answer: Answer) -> None:
        expected: Expected = None
        if self.phase is AWAITING and kind is not IN.AUTH:
            expected, kind = self.strike(err(E.AUTH_REQUIRED), kind)
        elif self.phase in (AWAITING, ACTIVE):
            mid = message.message_id if isinstance(message, p.Event) else None
            expected, kind = (self.charge(mid) if self.phase is ACTIVE else None) or answer()
        self.check(lambda: self.machine.receive(message), expected, kind)

    @rule(quarters=st.integers(0, 16) | st.sampled_from([40, 120]))
    def advance(self, quarters: int) -> None:
        self.clocks.now += quarters / 4
        if self.limited:
            self.tokens = min(self.burst, self.tokens + quarters / 4 * self.rate)
            self.spare = min(self.config.abuse_limit, self.spare + quarters / 4 * self.rate)
        if self.phase is not CLOSED and self.clocks.now >= self.deadline:
            expected = SILENT if self.phase is ACTIVE else TIMED_OUT
            self.phase = CLOSED  # the runtime saw the deadline pass
            self.check(self.machine.timeout, expected, IN.TIMEOUT)

    @rule(token=st.text(max_size=4), client_type=st.sampled_from(CLIENT_TYPES), ext=EXT)
    def auth(self, token: str, client_type: str, ext: dict[str, Any] | None) -> None:
        def answer() -> tuple[Expected, Input]:
            if self.phase is ACTIVE:
                return [err(E.ALREADY_AUTHENTICATED)], IN.AUTH
            self.phase, self.requested = AUTHENTICATING, ext
            return [("verify", token, client_type)], IN.AUTH

        self.receive(p.Auth(token=token, client_type=client_type, extensions=ext), IN.AUTH, answer)

    @rule(name=st.sampled_from(["ping", "pong", "error", "auth_success", "auth_failed"]))
    def control(self, name: str) -> None:
        kind, reply = {
            "ping": (IN.PING, [("pong", self.clocks.stamp())]),
            "pong": (IN.PONG, []),
            "error": (IN.PEER_ERROR, []),
        }.get(name, (IN.SERVER_ONLY, [err(E.INVALID_MESSAGE)]))
        self.receive(PEER_MESSAGES[name], kind, lambda: (reply, kind))

    @rule(ev=S.events(), own=st.booleans(), other=st.sampled_from(CLIENT_TYPES))
    def event(self, ev: p.Event, own: bool, other: str) -> None:
        ev = attrs.evolve(ev, sender=self.client_type if own and self.client_type else other)

        def answer() -> tuple[Expected, Input]:
            route = SPEC_ROUTES.get(ev.type)
            if ev.sender != self.client_type:
                return [err(E.SENDER_MISMATCH, ev.message_id)], IN.REFUSED
            if route is None or ev.sender != route[0]:
                return [err(E.EVENT_NOT_ALLOWED, ev.message_id)], IN.REFUSED
            return [("publish", ev, spec_channels(ev))], IN.EVENT

        self.receive(ev, IN.EVENT, answer)

    @rule(fatal=st.integers(0, 49).map(lambda n: n == 17), mid=st.sampled_from([None, "m-7"]))
    def invalid(self, fatal: bool, mid: str | None) -> None:
        close = p.CloseCode.INVALID_DATA if fatal else None
        error = p.ProtocolError(E.INVALID_MESSAGE, "x", close_code=close, message_id=mid)
        reply, expected, kind = err(E.INVALID_MESSAGE, mid), None, IN.INVALID
        if self.phase in (AWAITING, ACTIVE) and fatal:
            self.phase, expected, kind = CLOSED, [reply, ("close", close)], IN.FATAL
        elif self.phase is AWAITING:
            expected, kind = self.strike(reply, IN.INVALID)
        elif self.phase is ACTIVE:
            expected, kind = self.charge() or ([reply], IN.INVALID)
        self.check(lambda: self.machine.receive_invalid(error), expected, kind)

    @rule(
        ok=st.sampled_from([E.AUTH_FAILED, "accept", E.CONNECTION_LIMIT, "accept"]),
        client_type=st.sampled_from(CLIENT_TYPES),
        user=st.sampled_from([None, "499"]),
    )
    def verdict(self, ok: str, client_type: str, user: str | None) -> None:
        principal = p.Principal("id-1", client_type, user)
        if ok != "accept":
            expected: Expected = None
            if self.phase is AUTHENTICATING:
                self.phase, expected = CLOSED, [err(E(ok)), ("close", POLICY)]
            return self.check(
                lambda: self.machine.auth_rejected("no", E(ok)), expected, IN.AUTH_REJECTED
            )
        if self.phase is not AUTHENTICATING:
            return self.check(lambda: self.machine.auth_accepted(principal), None, IN.AUTH_OK)
        self.phase, self.client_type = ACTIVE, client_type
        if self.config.rate_limits is not None:
            limit = LIMITS.get(client_type, FALLBACK)
            self.limited, self.rate = True, limit.per_minute / 60
            self.tokens = self.burst = limit.burst
            self.spare = self.config.abuse_limit
        granted = None if self.requested is None else {}
        if granted is not None and self.config.heartbeat and "heartbeat" in self.requested:
            params = self.requested["heartbeat"]
            asked = params.get("interval", 4.0) if isinstance(params, dict) else 4.0
            granted["heartbeat"] = {"interval": min(8.0, max(1.0, asked))}
        if granted is not None and "acks" in self.requested:
            granted["acks"] = {}
        if granted is not None and "resume" in self.requested:
            # EXT asks with {"since": 3}, {} or {"since": -1}: only the first is usable.
            since = self.requested["resume"].get("since")
            granted["resume"] = {"since": since if since == 3 else None}
        channel = f"user:{user}" if user else f"type:{client_type}"
        expected = [("auth_success", "conn-1", granted), ("subscribe", (channel,))]
        if granted and "heartbeat" in granted:
            expected.append(("startheartbeat", granted["heartbeat"]["interval"]))
            self.silence = 2 * granted["heartbeat"]["interval"]  # two silent intervals
        self.check(lambda: self.machine.auth_accepted(principal), expected, IN.AUTH_OK)

    @rule(client_type=st.sampled_from(["CATS", *CLIENT_TYPES]), ext=EXT)  # auth, then accepted
    def login(self, client_type: str, ext: dict[str, Any] | None) -> None:
        self.auth("tok", client_type, ext)
        self.verdict("accept", client_type, None)

    @rule()
    def transport_closed(self) -> None:
        if self.clocks.now < 1005:  # the peer hangs up after 5 s at the earliest
            return
        self.phase = CLOSED
        self.check(self.machine.closed, [], IN.CLOSE)

    @invariant()
    def state_matches_model(self) -> None:
        assert self.machine.state in set(State)
        assert self.machine.state is AS_STATE[self.phase]


TestConnectionMachine = Model.TestCase


def test_acks_negotiated_turn_acks_into_acknowledge_actions() -> None:
    machine, _ = machine_in(A)
    machine.receive(p.Auth(token="t", client_type="AFAD", extensions={"acks": {}, "resume": {}}))
    actions = machine.auth_accepted(p.Principal("afad", "AFAD"))
    assert summaries(actions)[0] == (
        "auth_success",
        "conn-1",
        {"acks": {}, "resume": {"since": None}},
    )
    assert machine.receive(p.Ack(seq=7)) == [p.Acknowledge(7)]


def test_accepted_from_a_client_is_refused_like_auth_success() -> None:
    machine, _ = machine_in(C)
    refused = machine.receive(p.Accepted(message_id="m", seq=1, duplicate=False))
    assert summaries(refused) == [err(E.INVALID_MESSAGE)]


@pytest.mark.parametrize(
    ("params", "since"),
    [({}, None), ({"since": 5}, 5), ({"since": -1}, None), ({"since": True}, None), (None, None)],
)
def test_resume_since_takes_only_a_non_negative_integer(params: Any, since: int | None) -> None:
    assert p.resume_since(params) == since


# -- credentials that expire: refresh and expiry --------------------------------------------

EXPIRING = p.Principal("id-1", "CATS", "500", expires_at=1000.0, credential="jwt", jti="a")


def expiring_machine(extensions: dict[str, Any] | None = None) -> p.ConnectionMachine:
    machine, _ = machine_in(A)
    machine.receive(p.Auth(token="tok", client_type="CATS", extensions=extensions))
    machine.auth_accepted(EXPIRING)
    return machine


def test_a_second_auth_on_an_expiring_credential_is_a_refresh() -> None:
    machine = expiring_machine()
    actions = machine.receive(p.Auth(token="tok-2", client_type="CATS"))
    assert summaries(actions) == [("refresh", "tok-2", "CATS")]
    assert machine.state is C
    fresh = attrs.evolve(EXPIRING, expires_at=2000.0, jti="b")
    assert summaries(machine.refresh_accepted(fresh)) == [("auth_success", "conn-1", None)]
    assert machine.principal is fresh
    assert machine.state is C


def test_a_refresh_answers_with_the_extensions_granted_at_login() -> None:
    machine = expiring_machine(extensions={})
    machine.receive(p.Auth(token="tok-2", client_type="CATS"))
    (success,) = machine.refresh_accepted(attrs.evolve(EXPIRING, expires_at=2000.0))
    assert summary(success) == ("auth_success", "conn-1", machine.extensions)


@pytest.mark.parametrize(
    "other",
    [
        attrs.evolve(EXPIRING, identity="id-2"),
        attrs.evolve(EXPIRING, client_type="AFAD"),
        attrs.evolve(EXPIRING, user_id="600"),
        attrs.evolve(EXPIRING, user_id=None),
        attrs.evolve(EXPIRING, receives=False),
    ],
)
def test_a_refresh_for_another_identity_is_refused(other: p.Principal) -> None:
    machine = expiring_machine()
    machine.receive(p.Auth(token="tok-2", client_type="CATS"))
    assert summaries(machine.refresh_accepted(other)) == [err(E.AUTH_FAILED)]
    assert machine.principal is EXPIRING
    assert machine.state is C


def test_a_refused_refresh_keeps_the_connection() -> None:
    machine = expiring_machine()
    machine.receive(p.Auth(token="bad", client_type="CATS"))
    assert summaries(machine.refresh_rejected("token expired")) == [err(E.AUTH_FAILED)]
    assert machine.state is C
    assert summaries(machine.receive(p.Ping())) == [("pong", machine._now())]


def test_expiry_sends_token_expired_and_closes_4002() -> None:
    machine = expiring_machine()
    assert summaries(machine.expired()) == [
        err(E.TOKEN_EXPIRED),
        ("close", p.CloseCode.TOKEN_EXPIRED),
    ]
    assert machine.state is X


def test_refresh_answers_need_a_pending_refresh() -> None:
    machine, _ = machine_in(A)
    with pytest.raises(p.LocalProtocolError):
        machine.refresh_accepted(EXPIRING)
    with pytest.raises(p.LocalProtocolError):
        machine.refresh_rejected()
