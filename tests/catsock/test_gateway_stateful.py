"""A model of who receives what, checked step by step against a running gateway.

``Model`` is a hypothesis ``RuleBasedStateMachine``. Its rules connect clients
(CATS, AFAD, an admin DASHBOARD, DASHBOARDs bound to users 7, 499 and 500),
authenticate them with good or bad tokens, publish valid events of every
default type from any connected client (types the routing table forbids for
that client and spoofed ``sender`` fields included), and disconnect them.

The model predicts every message each client must get, from the semantics of
``protocol.routing``'s ``DEFAULT_ROUTES`` (its table of senders, recipient
types and user fields is read; what it means is re-stated here): an unbound
token's connection listens on its client type's channel, a bound one on its
user's channel only; an event goes to the channels of its route's recipient
types and to the user channel of every scalar id its user fields name; each
subscriber gets it once, verbatim, and the publisher never; a refused event
goes nowhere and its publisher gets SENDER_MISMATCH or EVENT_NOT_ALLOWED.

"Exactly" is checked with pings as barriers: a client that gets the pong of
a ping it sent has got everything queued for it before that ping was read. The
publisher of an event pings first (so the event has been fanned out), then
every authenticated client does, and what each got before its pong must be
precisely what the model predicted: no message missing, none extra, in order.
(Clients that have not authenticated are not pinged, a ping would count as one
of the messages they may send before auth; each of their replies is read as
the first thing they get.)

The gateway runs in a thread of its own (``ThreadedGateway``); the clients in
another ``trio.run`` kept alive across steps (``ClientLoop``), each call bounded
by ``trio.fail_after``.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio_websocket
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from protocol.registry import DEFAULT_EVENT_TYPES
from protocol.routing import DEFAULT_ROUTES

from .harness import RunningGateway, envelope
from .test_framing_fuzz import GatewayPool, ThreadedGateway

T = TypeVar("T")
MESSAGE_IDS = itertools.count(1)

#: At most this many clients at once: enough for every kind and some doubles.
MAX_PEERS = 8
#: Messages other than auth the gateway answers before auth, then it closes.
MAX_UNAUTHENTICATED = 5
#: Users with a bound dashboard token; the longest id that names a user is 64
#: characters, so "u" * 65 is a user no event can reach.
USERS = ("7", "499", "500", "u" * 64, "u" * 65)
KINDS = ("CATS", "AFAD", "ADMIN", *(f"USER:{u}" for u in USERS))
PUBLISHERS = ("CATS", "AFAD")
STEP_TIMEOUT = 10


# --- the routing model ---------------------------------------------------------------


@attrs.frozen
class RouteModel:
    senders: frozenset[str]
    to_types: tuple[str, ...]
    user_fields: tuple[str, ...]


#: The default table, read (not its semantics) from protocol.routing.
ROUTES = {r.event_type: RouteModel(r.senders, r.to_types, r.user_fields) for r in DEFAULT_ROUTES}
EVENT_TYPES = tuple(spec.name for spec in DEFAULT_EVENT_TYPES)
assert set(ROUTES) == set(EVENT_TYPES), "every default event type has a default route"


def named_users(payload: dict[str, Any], path: str) -> list[str]:
    """The user ids a payload path names: ``owner_id``, ``tier_rewards[].user_id``.
    Only scalar ids count: integers (not booleans) and strings of 1-64 characters."""
    head, sep, tail = path.partition("[].")
    if sep:
        items = payload.get(head)
        items = items if isinstance(items, list) else []
        values = [item.get(tail) for item in items if isinstance(item, dict)]
    else:
        values = [payload.get(head)]
    out = []
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            out.append(str(value))
        elif isinstance(value, str) and 0 < len(value) <= 64:
            out.append(value)
    return out


def audience(event_type: str, payload: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(client types, user ids) an allowed event of ``event_type`` goes to."""
    route = ROUTES[event_type]
    users = {u for path in route.user_fields for u in named_users(payload, path)}
    return set(route.to_types), users


# --- payloads: valid for their type, naming the users above often -----------------------

#: Ids in user fields: mostly the users above (as numbers or strings), else anything.
user_ids = st.one_of(
    st.sampled_from([7, "7", 499, "499", 500, "500", "u" * 64, "u" * 65]),
    st.sampled_from([7, 499, "500", "u" * 64, 12345, "", "7 "]),
    st.integers(-(2**53), 2**53),
    st.text(max_size=8),
)
ids = st.one_of(st.sampled_from([7, "7", 12345, "abc", ""]), st.integers(-(2**53), 2**53))
ints = st.integers(-(2**31), 2**31)
text = st.text(max_size=12)


def _maybe(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {k: v if isinstance(v, st.SearchStrategy) else st.just(v) for k, v in required.items()},
        optional=optional,
    )


def payloads(event_type: str, uid: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid payloads of ``event_type`` whose user fields are drawn from ``uid``."""
    tier_rewards = st.lists(
        _maybe(
            {"tier_level": st.integers(1, 3), "user_id": uid, "amount": ints},
            {"rate": st.floats(0, 100), "user_name": text},
        ),
        max_size=3,
    )
    table: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "conversion": _maybe(
            {
                "pay_id": ids,
                "adware_id": ids,
                "owner_id": uid,
                "cost": ints,
                "sales": ints,
                "state": st.sampled_from(["PENDING", "APPROVED"]),
                "tier_rewards": tier_rewards,
            },
            {"adware_name": text, "access_id": ids},
        ),
        "click": _maybe(
            {"access_id": ids, "adware_id": ids, "owner_id": uid},
            {"has_reward": st.booleans(), "reward_amount": ints},
        ),
        "tier_reward": _maybe(
            {
                "tier_id": ids,
                "owner_id": uid,
                "tier_level": st.integers(1, 3),
                "adware_id": ids,
                "cost": ints,
            },
            {"tier1_amount": ints},
        ),
        "budget_alert": _maybe(
            {
                "adware_id": ids,
                "current_budget": ints,
                "limit": ints,
                "usage_percentage": st.floats(0, 100),
            },
            {},
        ),
        "fraud_alert": _maybe({"fraud_type": text}, {"details": st.dictionaries(text, ints)}),
        "adware_update": _maybe(
            {"adware_id": ids, "action": st.sampled_from(["CREATE", "UPDATE", "DELETE"])},
            {"data": _maybe({}, {"money": ints, "name": text})},
        ),
        "budget_update": _maybe({"adware_id": ids, "limit": ints}, {}),
        "stats_update": _maybe({}, {"owner_id": uid | st.none(), "clicks": ints}),
        "user_online": _maybe({"user_id": uid}, {"online": st.booleans()}),
    }
    return table[event_type]


PAYLOADS = {t: payloads(t, user_ids) for t in EVENT_TYPES}
assert set(PAYLOADS) == set(EVENT_TYPES)
events = st.one_of(*(st.tuples(st.just(t), PAYLOADS[t]) for t in EVENT_TYPES))
#: "honest" is the publisher's own client type; the rest are claims, mostly false.
senders = st.sampled_from(["honest", "honest", "CATS", "AFAD", "DASHBOARD", "cats"])


# --- running things: the gateway and a client loop, each in its thread ------------------


class ClientLoop:
    """A ``trio.run`` in a thread that keeps client connections alive between
    steps; ``call`` runs one coroutine in it from the test thread."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.nursery: trio.Nursery | None = None
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="catsock-clients", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the client loop did not start")

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:  # reported through call(); never an unhandled thread error
            self.failure = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        assert self.failure is None, f"the client loop failed: {self.failure!r}"
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the client loop did not stop"


class Environment:
    """The module's gateway (a fresh one if an example crashed it) and client loop."""

    def __init__(self, tmp: Path) -> None:
        self.loop = ClientLoop()
        self.loop.start()
        self.pool = GatewayPool(
            tmp,
            {},
            [
                ("cats", "CATS", None),
                ("afad", "AFAD", None),
                ("admin", "DASHBOARD", None),
                *((f"user-{i}", "DASHBOARD", user) for i, user in enumerate(USERS)),
            ],
            # Live delivery only: this is the routing model. What durable identities
            # get after being away is test_delivery_model.py's.
            delivery={"durable_types": []},
        )

    def gateway(self) -> tuple[ThreadedGateway, RunningGateway]:
        return self.pool.get()

    def stop_gateway(self) -> None:
        self.pool.stop()

    def close(self) -> None:
        try:
            self.stop_gateway()
        finally:
            self.loop.stop()


_ENV: Environment | None = None


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    global _ENV
    _ENV = Environment(tmp_path_factory.mktemp("stateful"))
    try:
        yield _ENV
    finally:
        env, _ENV = _ENV, None
        env.close()


# --- what a client expects ---------------------------------------------------------------


@attrs.frozen
class Text:
    """This exact text (an event, forwarded verbatim)."""

    text: str

    def matches(self, got: str) -> bool:
        return got == self.text


@attrs.frozen
class Reply:
    """A control message of ``type``; for errors, this code and message id."""

    type: str
    error_code: str | None = None
    message_id: str | None = None

    def matches(self, got: str) -> bool:
        message = json.loads(got)
        if message.get("type") != self.type:
            return False
        if self.type != "error":
            return True
        payload = message.get("payload", {})
        return (
            payload.get("error_code") == self.error_code
            and payload.get("message_id") == self.message_id
        )


Expected = Text | Reply


@attrs.define(eq=False)
class Peer:
    name: str
    kind: str
    ws: trio_websocket.WebSocketConnection
    active: bool = False
    unauthenticated: int = 0
    expected: list[Expected] = attrs.Factory(list)

    @property
    def client_type(self) -> str:
        return self.kind if self.kind in ("CATS", "AFAD") else "DASHBOARD"

    @property
    def user(self) -> str | None:
        return self.kind.partition(":")[2] or None

    @property
    def token_name(self) -> str:
        if self.user is not None:
            return f"user-{USERS.index(self.user)}"
        return {"CATS": "cats", "AFAD": "afad", "ADMIN": "admin"}[self.kind]

    def listens_to(self, types: set[str], users: set[str]) -> bool:
        if self.user is not None:
            return self.user in users
        return self.client_type in types


def _compare(peer: Peer, got: list[str]) -> None:
    expected, peer.expected = peer.expected, []
    ok = len(got) == len(expected) and all(e.matches(g) for e, g in zip(expected, got, strict=True))
    assert ok, f"{peer.name} ({peer.kind}) expected {expected!r}\n got {got!r}"


# --- client coroutines (run in the client loop) -------------------------------------------


async def _connect(nursery: trio.Nursery, port: int) -> trio_websocket.WebSocketConnection:
    with trio.fail_after(STEP_TIMEOUT):
        return await trio_websocket.connect_websocket(
            nursery, "127.0.0.1", port, "/ws", use_ssl=False
        )


async def _close(ws: trio_websocket.WebSocketConnection) -> None:
    with trio.move_on_after(STEP_TIMEOUT):
        await ws.aclose()
    # trio-websocket 0.12 leaves the socket open when the server closed first.
    await ws._stream.aclose()


async def _send(ws: trio_websocket.WebSocketConnection, text: str) -> None:
    with trio.fail_after(STEP_TIMEOUT):
        await ws.send_message(text)


async def _next(ws: trio_websocket.WebSocketConnection) -> str:
    with trio.fail_after(STEP_TIMEOUT):
        message = await ws.get_message()
    assert isinstance(message, str)
    return message


async def _close_code(ws: trio_websocket.WebSocketConnection) -> tuple[list[str], int | None]:
    """Everything until the gateway closes, and its close code."""
    got: list[str] = []
    with trio.fail_after(STEP_TIMEOUT):
        try:
            while True:
                got.append(await ws.get_message())  # type: ignore[arg-type]
        except trio_websocket.ConnectionClosed as exc:
            return got, exc.reason.code if exc.reason is not None else None


async def _barrier(peers: list[Peer]) -> dict[str, list[str]]:
    """Ping from every peer at once; what each got before its pong."""
    got: dict[str, list[str]] = {}

    async def one(peer: Peer) -> None:
        seen: list[str] = []
        await peer.ws.send_message('{"type":"ping"}')
        while True:
            message = await peer.ws.get_message()
            assert isinstance(message, str)
            if json.loads(message).get("type") == "pong":
                break
            seen.append(message)
        got[peer.name] = seen

    with trio.fail_after(STEP_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer)
    return got


# --- the state machine -----------------------------------------------------------------------


class Model(RuleBasedStateMachine):
    peers = Bundle("peers")

    def __init__(self) -> None:
        super().__init__()
        assert _ENV is not None, "the module's environment fixture is not running"
        self.loop = _ENV.loop
        self.threaded, self.running = _ENV.gateway()
        self.live: dict[str, Peer] = {}
        self.names = itertools.count(1)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn`` in the client loop; a crashed gateway is the failure then,
        not whatever its clients saw of it."""
        crash = None
        try:
            return self.loop.call(fn, *args)
        except BaseException:
            crash = self.threaded.crash(wait=True)
            if crash is None:
                raise
        raise AssertionError(f"the gateway crashed: {crash!r}")

    def token(self, peer: Peer) -> str:
        return self.running.tokens[peer.token_name]

    # -- rules ---------------------------------------------------------------------

    @initialize(target=peers, kinds=st.lists(st.sampled_from(KINDS), min_size=2, max_size=6))
    def start_with(self, kinds: list[str]) -> MultipleResults[str]:
        """Start with a few authenticated clients, so routing is exercised at once."""
        return multiple(*(self.connect(kind, True) for kind in kinds))

    @precondition(lambda self: len(self.live) < MAX_PEERS)
    @rule(target=peers, kind=st.sampled_from(KINDS), then_auth=st.sampled_from([True, True, False]))
    def connect(self, kind: str, then_auth: bool) -> str:
        """A new connection; mostly authenticated at once with its good token
        (the ``authenticate`` rule covers the rest)."""
        assert self.loop.nursery is not None
        ws = self.call(_connect, self.loop.nursery, self.running.port)
        name = f"p{next(self.names)}"
        peer = self.live[name] = Peer(name, kind, ws)
        if then_auth:
            auth = {"type": "auth", "token": self.token(peer), "client_type": peer.client_type}
            self.call(_send, ws, json.dumps(auth))
            assert Reply("auth_success").matches(self.call(_next, ws))
            peer.active = True
        return name

    @rule(
        name=peers,
        credential=st.sampled_from(["good", "good", "unknown", "empty", "other-type"]),
    )
    def authenticate(self, name: str, credential: str) -> None:
        peer = self.live.get(name)
        if peer is None:
            return
        token, client_type = self.token(peer), peer.client_type
        if credential == "unknown":
            token = "cs_" + "0" * 43
        elif credential == "empty":
            token = ""
        elif credential == "other-type":
            client_type = "AFAD" if client_type != "AFAD" else "CATS"
        auth = json.dumps({"type": "auth", "token": token, "client_type": client_type})
        self.call(_send, peer.ws, auth)
        if peer.active:
            # Whatever the credential: a second auth is refused, the connection stays.
            peer.expected.append(Reply("error", "ALREADY_AUTHENTICATED"))
            self._barrier([peer])
            return
        if credential == "good":
            assert Reply("auth_success").matches(self.call(_next, peer.ws))
            peer.active = True
            return
        got, code = self.call(_close_code, peer.ws)
        del self.live[name]
        self.call(_close, peer.ws)
        assert len(got) == 1, got
        assert Reply("error", "AUTH_FAILED").matches(got[0]), got
        assert code == 1008, code

    @rule(name=peers, event=events, claimed=senders)
    def publish(self, name: str, event: tuple[str, dict[str, Any]], claimed: str) -> None:
        peer = self.live.get(name)
        if peer is None:
            return
        event_type, payload = event
        sender = peer.client_type if claimed == "honest" else claimed
        # Unique across examples too: the gateway outlives them, and it recognises
        # a retried publish by its message_id (docs/delivery.md).
        message_id = f"m-{next(MESSAGE_IDS)}"
        text = envelope(event_type, payload, sender, message_id)
        self.call(_send, peer.ws, text)
        if not peer.active:
            self._unauthenticated_message(peer)
            return
        route = ROUTES[event_type]
        if sender != peer.client_type:
            peer.expected.append(Reply("error", "SENDER_MISMATCH", message_id))
        elif peer.client_type not in route.senders:
            peer.expected.append(Reply("error", "EVENT_NOT_ALLOWED", message_id))
        else:
            types, users = audience(event_type, payload)
            for other in self.live.values():
                if other is not peer and other.active and other.listens_to(types, users):
                    other.expected.append(Text(text))
        # The publisher's barrier first: its event has been fanned out once its
        # pong comes; the invariant's barrier then checks everyone.
        self._barrier([peer])

    @precondition(lambda self: any(p.active and p.kind in PUBLISHERS for p in self.live.values()))
    @rule(data=st.data())
    def publish_as_allowed(self, data: st.DataObject) -> None:
        """An active CATS or AFAD client publishes a type its client type may send,
        honestly: the routing itself, more often than ``publish`` hits it."""
        publishers = sorted(n for n, p in self.live.items() if p.active and p.kind in PUBLISHERS)
        name = data.draw(st.sampled_from(publishers), label="publisher")
        client_type = self.live[name].client_type
        allowed = sorted(t for t, r in ROUTES.items() if client_type in r.senders)
        event_type = data.draw(st.sampled_from(allowed), label="event_type")
        # Name the users whose dashboards are connected right now, more often.
        live = sorted({p.user for p in self.live.values() if p.user is not None})
        spellings = [int(u) if u.isdigit() and int(u) else u for u in live]
        uid = st.one_of(st.sampled_from(live + spellings), user_ids) if live else user_ids
        payload = data.draw(payloads(event_type, uid), label="payload")
        self.publish(name, (event_type, payload), "honest")

    def _unauthenticated_message(self, peer: Peer) -> None:
        peer.unauthenticated += 1
        if peer.unauthenticated <= MAX_UNAUTHENTICATED:
            assert Reply("error", "AUTH_REQUIRED").matches(self.call(_next, peer.ws))
            return
        got, code = self.call(_close_code, peer.ws)
        del self.live[peer.name]
        self.call(_close, peer.ws)
        assert len(got) == 1, got
        assert Reply("error", "AUTH_REQUIRED").matches(got[0]), got
        assert code == 1008, code

    @rule(name=consumes(peers))
    def disconnect(self, name: str) -> None:
        peer = self.live.pop(name, None)
        if peer is not None:
            self.call(_close, peer.ws)

    # -- the check ---------------------------------------------------------------------

    def _barrier(self, peers: list[Peer]) -> None:
        got = self.call(_barrier, peers)
        for peer in peers:
            _compare(peer, got[peer.name])

    @invariant()
    def everyone_got_exactly_what_the_model_predicts(self) -> None:
        self._barrier([p for p in self.live.values() if p.active])

    def teardown(self) -> None:
        peers, self.live = list(self.live.values()), {}
        for peer in peers:
            self.call(_close, peer.ws)
        self.threaded.check()


# Each step is a few loopback round trips through two other threads, about
# 5 ms; an example of up to 40 steps about 0.3 s. The profiles' 500 (ci) or 100
# (dev) examples are cut to two fifths, 200 or 40: in ci about a minute, with
# thousands of events of every type published from every kind of client.
Model.TestCase.settings = settings(
    settings.default,
    max_examples=max(10, settings.default.max_examples * 2 // 5),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestGatewayModel = Model.TestCase
