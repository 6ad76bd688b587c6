"""A model of durable delivery, checked step by step against a running gateway.

``DeliveryModel`` is a hypothesis ``RuleBasedStateMachine``. CATS publishes
conversions (new ``message_id``s, repeats of earlier ones, and the same new one
twice at once); AFAD, a durable identity, connects with any mix of ``acks`` and
``resume`` (with or without ``since``), acks up to any seq, disconnects, opens a
second connection while one is open; an admin DASHBOARD (not durable) comes and
goes; the gateway is shut down gracefully and started again on the same
database. The model is the log of what was committed, AFAD's cursor and a list of
expected frames per recipient, and it predicts exactly what each gets
(docs/delivery.md):

- an accepted event gets the next ``seq``; a repeated ``message_id`` is answered
  ``duplicate`` with the first one's seq and is not delivered again;
- a connection of AFAD (none other open) is replayed the log after its start, in
  order, then gets live events: the start is ``min(since, head)`` with
  ``resume.since``, else AFAD's cursor (the log's head when its token was made);
- without ``acks`` a written event moves the cursor; with ``acks`` only an ack
  does, up to what was written on that connection (or where it started); cursors
  never move back and survive a restart. ``resume.since`` moves nothing: events
  up to ``since`` that were never written come on the next cursor-based start;
- a dashboard starts live, or replays from ``resume.since``, never from a cursor;
- with ``acks`` or ``resume`` each event carries ``seq`` as its first key, else it
  is the publisher's text verbatim; an ``ack`` without ``acks`` is refused.

"Exactly" is checked with the ping barrier after every step: AFAD's pong comes
after everything queued for it before the ping (its replay included), so what it
got before the pong must be precisely what the model says, in order. CATS's own
pong after a publish comes after the ``accepted`` (connection.py ``_held``).

Each example runs its own gateway (``ThreadedGateway``, restarted on the same file)
on a fresh database; the clients live in a ``ClientLoop`` across steps.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import storage

from .harness import CONVERSION, GatewayFactory, RunningGateway, envelope
from .test_delivery import until_pong
from .test_framing_fuzz import ThreadedGateway
from .test_gateway_stateful import ClientLoop

T = TypeVar("T")
STEP_TIMEOUT = 10
#: The model predicts "written is delivered" for AFAD without acks, which is
#: ``delivery.legacy_confirm = 0``; confirmation by what the peer took in has tests
#: of its own (test_delivery.py, tests/faults/test_legacy_disconnect.py).
GATEWAY = {"limits": {"rate_limits_enabled": False}, "delivery": {"legacy_confirm": 0}}


class Environment:
    """The module's client loop and a directory per example."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.examples = itertools.count(1)
        self.loop = ClientLoop()
        self.loop.start()

    def new_directory(self) -> Path:
        directory = self.tmp / f"example-{next(self.examples)}"
        directory.mkdir()
        return directory


_ENV: Environment | None = None


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    global _ENV
    _ENV = Environment(tmp_path_factory.mktemp("delivery-model"))
    try:
        yield _ENV
    finally:
        env, _ENV = _ENV, None
        env.loop.stop()


# --- client coroutines (run in the client loop) ---------------------------------------------


Socket = trio_websocket.WebSocketConnection


async def _open(
    nursery: trio.Nursery, port: int, token: str, client_type: str, extensions: dict[str, Any]
) -> tuple[Socket, dict[str, Any]]:
    with trio.fail_after(STEP_TIMEOUT):
        ws = await trio_websocket.connect_websocket(
            nursery, "127.0.0.1", port, "/ws", use_ssl=False
        )
        auth = {"type": "auth", "token": token, "client_type": client_type}
        if extensions:
            auth["extensions"] = extensions
        await ws.send_message(json.dumps(auth))
        reply = json.loads(await ws.get_message())
    return ws, reply


async def _send(ws: Socket, text: str) -> None:
    with trio.fail_after(STEP_TIMEOUT):
        await ws.send_message(text)


async def _until_pong(ws: Socket) -> list[str]:
    """Ping; everything that arrives before the pong."""
    got: list[str] = []
    with trio.fail_after(STEP_TIMEOUT):
        await ws.send_message('{"type":"ping"}')
        while True:
            message = await ws.get_message()
            assert isinstance(message, str)
            if json.loads(message).get("type") == "pong":
                return got
            got.append(message)


async def _until_closed(ws: Socket) -> tuple[list[str], int | None]:
    got: list[str] = []
    with trio.fail_after(STEP_TIMEOUT):
        try:
            while True:
                got.append(await ws.get_message())  # type: ignore[arg-type]
        except trio_websocket.ConnectionClosed as exc:
            return got, None if exc.reason is None else exc.reason.code


async def _close(ws: Socket) -> None:
    with trio.move_on_after(STEP_TIMEOUT):
        await ws.aclose()
    # trio-websocket 0.12 leaves the socket open when the server closed first.
    await ws._stream.aclose()


# --- the model -------------------------------------------------------------------------------


@attrs.frozen
class Refused:
    """An ``error`` with this code."""

    code: str

    def matches(self, got: str) -> bool:
        message = json.loads(got)
        return message.get("type") == "error" and message["payload"]["error_code"] == self.code


Expected = str | Refused  # a str: exactly this frame


def matches(expected: Expected, got: str) -> bool:
    return got == expected if isinstance(expected, str) else expected.matches(got)


@attrs.define(eq=False)
class Recipient:
    ws: Socket
    acks: bool
    with_seq: bool
    start: int
    written: int  # the highest seq the gateway wrote on it (what an ack is capped at)
    acked: int
    expected: list[Expected] = attrs.Factory(list)


EXTENSIONS = ("none", "acks", "resume", "acks+resume", "resume-since", "acks+resume-since")


class DeliveryModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert _ENV is not None, "the module's environment fixture is not running"
        self.loop = _ENV.loop
        self.directory = _ENV.new_directory()
        db = storage.open_db(self.directory / "gateway.db")
        try:
            self.tokens = {
                "cats": storage.create_token(db, name="cats", client_type="CATS"),
                "afad": storage.create_token(db, name="afad", client_type="AFAD"),
                "dash": storage.create_token(db, name="dash", client_type="DASHBOARD"),
            }
        finally:
            db.close()
        self.threaded, self.running = self._start_gateway()
        self.cats = self._connect_cats()
        self.log: list[tuple[int, str]] = []  # (seq, text) committed for AFAD, in order
        self.published: dict[str, int] = {}  # message_id -> seq
        self.cursor = 0  # AFAD's, as the gateway should have it (memory or database)
        self.afad: Recipient | None = None
        self.dashboard: Recipient | None = None  # not durable: live, or resume.since
        self.numbers = itertools.count(1)
        self.restarts = 0

    # -- plumbing ------------------------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn`` in the client loop; a crashed gateway is the failure then."""
        try:
            return self.loop.call(fn, *args)
        except BaseException:
            crash = self.threaded.crash(wait=True)
            if crash is None:
                raise
            raise AssertionError(f"the gateway crashed: {crash!r}") from None

    def _start_gateway(self) -> tuple[ThreadedGateway, RunningGateway]:
        threaded = ThreadedGateway(self.directory, **GATEWAY)
        return threaded, threaded.start()

    def _stop_gateway(self) -> None:
        """Shut the gateway down; fail if it crashed or logged a warning meanwhile."""
        threaded = self.threaded
        threaded.check()
        threaded.stop()
        assert threaded.failure is None, f"the gateway failed: {threaded.failure!r}"
        records = [f"{r.name}: {r.getMessage()}" for r in threaded.log.records]
        assert not records, records

    def _open(self, name: str, client_type: str, extensions: dict[str, Any]) -> tuple[
        Socket, dict[str, Any]
    ]:
        assert self.loop.nursery is not None
        ws, reply = self.call(
            _open, self.loop.nursery, self.running.port, self.tokens[name], client_type, extensions
        )
        assert reply["type"] == "auth_success", reply
        return ws, reply

    def _connect_cats(self) -> Socket:
        ws, reply = self._open("cats", "CATS", {"acks": {}})
        assert reply["extensions"] == {"acks": {}}
        return ws

    @property
    def recipients(self) -> list[Recipient]:
        return [r for r in (self.afad, self.dashboard) if r is not None]

    @property
    def head(self) -> int:
        return self.log[-1][0] if self.log else 0

    def _conversion(self, message_id: str) -> str:
        payload = {**CONVERSION, "pay_id": len(self.published)}
        return envelope("conversion", payload, "CATS", message_id)

    def _committed(self, message_id: str, seq: int, text: str) -> None:
        """A new event was accepted as ``seq``: it is in the log, and every recipient
        connected now gets it live."""
        assert seq > self.head, (seq, self.head)
        self.published[message_id] = seq
        self.log.append((seq, text))
        for recipient in self.recipients:
            recipient.expected.append(self.frame(seq, text, recipient.with_seq))

    @staticmethod
    def frame(seq: int, text: str, with_seq: bool) -> str:
        return f'{{"seq":{seq},{text[1:]}' if with_seq else text

    # -- rules -----------------------------------------------------------------------------

    @rule(repeat=st.booleans(), data=st.data())
    def publish(self, repeat: bool, data: st.DataObject | None) -> None:
        """CATS publishes a conversion: a new message_id, or again an earlier one (a
        retry after a lost answer, maybe across a restart)."""
        if repeat and self.published:
            assert data is not None
            message_id = data.draw(st.sampled_from(sorted(self.published)), label="again")
        else:
            message_id = f"m-{next(self.numbers)}"
        text = self._conversion(message_id)
        self.call(_send, self.cats, text)
        (answer,) = [json.loads(m) for m in self.call(_until_pong, self.cats)]
        assert answer["type"] == "accepted", answer
        assert answer["message_id"] == message_id, answer
        earlier = self.published.get(message_id)
        if earlier is not None:
            assert (answer["duplicate"], answer["seq"]) == (True, earlier), answer
            return
        assert answer["duplicate"] is False, answer
        self._committed(message_id, answer["seq"], text)

    @precondition(lambda self: self.afad is None)
    @rule(extensions=st.sampled_from(EXTENSIONS), since=st.integers(0, 40))
    def connect_afad(self, extensions: str, since: int) -> None:
        ext: dict[str, Any] = {}
        if "acks" in extensions:
            ext["acks"] = {}
        if "resume" in extensions:
            ext["resume"] = {"since": since} if extensions.endswith("since") else {}
        ws, reply = self._open("afad", "AFAD", ext)
        start = min(since, self.head) if "since" in extensions else self.cursor
        if "resume" in ext:
            assert reply["extensions"]["resume"] == {"since": start, "head": self.head}, reply
        with_seq = bool(ext)
        self.afad = Recipient(ws, "acks" in ext, with_seq, start, start, start)
        self.afad.expected = [
            self.frame(seq, text, with_seq) for seq, text in self.log if seq > start
        ]

    @precondition(lambda self: self.afad is not None)
    @rule()
    def disconnect_afad(self) -> None:
        assert self.afad is not None
        self.call(_close, self.afad.ws)
        self.afad = None

    @precondition(lambda self: self.afad is not None)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        """AFAD acks up to a seq it got, or any other (beyond what was written too)."""
        afad = self.afad
        assert afad is not None
        seqs = [seq for seq, _ in self.log]
        seq = data.draw(
            st.one_of(st.sampled_from(seqs), st.integers(0, self.head + 2))
            if seqs
            else st.integers(0, 2),
            label="ack",
        )
        self.call(_send, afad.ws, json.dumps({"type": "ack", "seq": seq}))
        if not afad.acks:
            afad.expected.append(Refused("INVALID_MESSAGE"))
            return
        seq = min(seq, afad.written)
        if seq > afad.acked:
            afad.acked = seq
            self.cursor = max(self.cursor, seq)

    @precondition(lambda self: self.dashboard is None)
    @rule(resume=st.sampled_from(["none", "resume", "resume-since"]), since=st.integers(0, 40))
    def connect_dashboard(self, resume: str, since: int) -> None:
        """An admin dashboard is not durable: it starts live, or replays from
        ``resume.since`` if it asks (never from a cursor)."""
        ext: dict[str, Any] = {}
        if resume != "none":
            ext["resume"] = {"since": since} if resume == "resume-since" else {}
        ws, reply = self._open("dash", "DASHBOARD", ext)
        start = min(since, self.head) if resume == "resume-since" else self.head
        if ext:
            assert reply["extensions"]["resume"] == {"since": start, "head": self.head}, reply
        self.dashboard = Recipient(ws, False, bool(ext), start, start, start)
        self.dashboard.expected = [
            self.frame(seq, text, bool(ext)) for seq, text in self.log if seq > start
        ]

    @precondition(lambda self: self.dashboard is not None)
    @rule()
    def disconnect_dashboard(self) -> None:
        assert self.dashboard is not None
        self.call(_close, self.dashboard.ws)
        self.dashboard = None

    @rule()
    def publish_twice_at_once(self) -> None:
        """The same new message_id twice back to back (a retry before the first answer):
        both are answered, the second as a duplicate of the first; delivered once."""
        message_id = f"m-{next(self.numbers)}"
        text = self._conversion(message_id)
        self.call(_send, self.cats, text)
        self.call(_send, self.cats, text)
        first, second = [json.loads(m) for m in self.call(_until_pong, self.cats)]
        assert first["type"] == second["type"] == "accepted", (first, second)
        assert first["duplicate"] is False, first
        assert (second["duplicate"], second["seq"]) == (True, first["seq"]), second
        self._committed(message_id, first["seq"], text)

    @precondition(lambda self: self.afad is not None)
    @rule()
    def another_afad_connection_starts_live(self) -> None:
        """While AFAD is connected a second connection of it is not replayed anything:
        it gets what is published while it is open (here: one new event), and its
        writes move the cursor like any other."""
        ws, _ = self._open("afad", "AFAD", {})
        self.publish(repeat=False, data=None)
        seq, text = self.log[-1]
        assert self.call(_until_pong, ws) == [text]
        self.call(_close, ws)
        self.cursor = max(self.cursor, seq)

    @rule()
    def restart_gateway(self) -> None:
        """A graceful shutdown (every connection closed with 1001, the log and the
        cursors flushed), then a new gateway on the same database."""
        self._stop_gateway()
        for ws in [self.cats, *(r.ws for r in self.recipients)]:
            got, code = self.call(_until_closed, ws)
            assert (got, code) == ([], 1001), (got, code)
            self.call(_close, ws)
        self.afad = self.dashboard = None
        self.restarts += 1
        self.threaded, self.running = self._start_gateway()
        self.cats = self._connect_cats()

    # -- the check ---------------------------------------------------------------------------

    @invariant()
    def everyone_got_exactly_what_the_model_predicts(self) -> None:
        for name, recipient in (("DASHBOARD", self.dashboard), ("AFAD", self.afad)):
            if recipient is not None:
                got = self.call(_until_pong, recipient.ws)
                expected, recipient.expected = recipient.expected, []
                ok = len(got) == len(expected) and all(
                    matches(e, g) for e, g in zip(expected, got, strict=True)
                )
                assert ok, f"{name} expected {expected!r}\n got {got!r}"
        afad = self.afad
        if afad is None:
            return
        # Everything after the start was written by now: the replay, then live events.
        if any(seq > afad.start for seq, _ in self.log):
            afad.written = self.head
            if not afad.acks:
                self.cursor = max(self.cursor, afad.written)

    def teardown(self) -> None:
        for ws in [self.cats, *(r.ws for r in self.recipients)]:
            self.call(_close, ws)
        self.afad = self.dashboard = None
        try:
            self._stop_gateway()
        finally:
            self.threaded.stop()  # a second stop does nothing


# A step is a few loopback round trips (about 5 ms), a restart about 50 ms; an example
# of up to 30 steps well under a second. 50 examples keep the test under a minute on
# a busy 2-core machine, whatever the profile's max_examples.
DeliveryModel.TestCase.settings = settings(
    settings.default,
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDeliveryModel = DeliveryModel.TestCase


# --- directed tests: what the model cannot force or see -----------------------------------


async def test_a_cursor_commit_during_a_reconnect_does_not_rewind_it(
    start_gateway: GatewayFactory,
    lazy_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AFAD (no acks: a written event counts as delivered) gets three events and
    disconnects; its cursor move waits in memory for the next batch commit. It
    reconnects, and the commit lands while the gateway reads the stored cursor: the
    read saw the database before the commit, and the in-memory move is gone after
    it. The interleaving is forced here, but it happens by itself too (the commit is
    due 50 ms after the move, the read is a worker-thread query); before d8eae40 the
    reconnect started from the older cursor and got the three events again."""
    gw = await start_gateway(delivery={"legacy_confirm": 0})  # written is delivered
    delivery = gw.gateway.delivery
    texts = [envelope("conversion", {**CONVERSION, "pay_id": i}, "CATS", f"c-{i}")
             for i in range(3)]
    read_cursors = storage.load_cursors

    def read_then_commit(db: Any, identity: str) -> dict[str, int]:
        stored = read_cursors(db, identity)
        trio.from_thread.run(delivery.flush)
        return stored

    with trio.fail_after(20):
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            for text in texts:
                await cats.send(text)
            assert [await afad.recv_text() for _ in texts] == texts
            assert await until_pong(afad) == []
        monkeypatch.setattr(storage, "load_cursors", read_then_commit)
        async with gw.client("AFAD") as afad:
            assert await until_pong(afad) == []  # nothing again


async def test_a_publish_is_not_held_back_by_a_pending_cursor_move(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    """CATS publishes one event at a time and waits for each ``accepted`` (what the
    seed's PHP publisher and ``python -m catsock publish`` do) while AFAD is connected:
    each write to AFAD moves its cursor. The clock is fake and moves only when
    everything waits on a timer, so an answer that waited for one shows as fake time.
    Before 0f54af1 nine of ten did: the writer's 50 ms wait to gather cursor moves
    did not end when an event was appended. (``commit_interval`` is a timer by
    design, so it is off here; the next test covers it.)"""
    gw = await start_gateway(delivery={"commit_interval": 0})
    slow = 0
    with trio.fail_after(30):
        async with gw.client("CATS", extensions={"acks": {}}) as cats, gw.client("AFAD") as afad:
            for i in range(10):
                started = trio.current_time()
                await cats.send(envelope("conversion", {**CONVERSION, "pay_id": i}, "CATS",
                                         f"one-by-one-{i}"))
                answer = await cats.recv()
                assert answer["type"] == "accepted", answer
                assert (await afad.recv())["message_id"] == f"one-by-one-{i}"
                slow += trio.current_time() > started
    # A stall of a worker thread can make the fake clock jump now and then by itself.
    assert slow <= 3, f"{slow} of 10 publishes waited for a timer"


async def test_commits_are_at_least_the_commit_interval_apart(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    """One publish at a time waits for the interval after the previous commit; a
    burst arriving meanwhile shares one commit. The interval is 1 s of fake time."""
    gw = await start_gateway(delivery={"commit_interval": 1.0})
    delivery = gw.gateway.delivery
    with trio.fail_after(60):
        async with gw.client("CATS", extensions={"acks": {}}) as cats:
            started = trio.current_time()
            for i in range(4):
                await cats.send(envelope("conversion", {**CONVERSION, "pay_id": i}, "CATS",
                                         f"spaced-{i}"))
                assert (await cats.recv())["type"] == "accepted"
            # The first commit may come at once; each later one waits out the interval.
            assert trio.current_time() - started >= 3.0
            batches = delivery.statistics().batches
            for i in range(20):
                await cats.send(envelope("conversion", {**CONVERSION, "pay_id": i}, "CATS",
                                         f"burst-{i}"))
            answers = [await cats.recv() for _ in range(20)]
    assert {a["type"] for a in answers} == {"accepted"}
    # The burst is read while the writer waits: one commit, or two if the reader
    # was still between frames when the interval ended.
    assert delivery.statistics().batches - batches <= 2
