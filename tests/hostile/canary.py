"""The canary: one CATS publishing conversions at a steady rate to one AFAD, measured.

It runs in a thread of its own with its own ``trio.run`` (as the framing fuzz's
gateway does), so its clock and its deadlines keep going while the gateway's
loop is busy with an attacker: it publishes on schedule whatever the gateway
does, and an event's latency runs from the moment it was due (not from when the
send returned), so a stall shows in full. Events are ``conversion``s whose
``message_id`` is ``canary-<n>``; the AFAD ignores everything else it gets
(other tests' traffic reaches ``type:AFAD`` too).

``stop`` ends the publishing and waits (at most ``DRAIN`` seconds, a bound on a
hang, not a timing) for the stragglers; the report then says what was lost,
repeated or reordered, and any error or close either canary client met.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import attrs
import trio
import trio_websocket

from tests.catsock.harness import CONVERSION, envelope

#: Conversions a second (the issue 16 campaign's canary). Above CATS's sustained
#: 1000 a minute, well within its burst of 100 for a test's few seconds.
RATE = 20.0
#: The canary publishes at least this long, however short the attack.
MIN_SECONDS = 0.4
#: How long ``stop`` waits for the last events, and the bound on connecting.
DRAIN = 10.0
CONNECT_TIMEOUT = 10.0
PREFIX = "canary-"


@attrs.define
class CanaryReport:
    sent: int = 0
    #: Indices of canary events in the order the AFAD received them.
    received: list[int] = attrs.Factory(list)
    #: Seconds from each received event's due time to its arrival.
    latencies: list[float] = attrs.Factory(list)
    #: Errors, closes and failures either canary client met.
    problems: list[str] = attrs.Factory(list)

    @property
    def lost(self) -> int:
        return len(set(range(self.sent)) - set(self.received))

    @property
    def max_latency(self) -> float:
        return max(self.latencies, default=0.0)

    def failures(self) -> list[str]:
        """What went wrong, empty when every event arrived in order exactly once."""
        out = list(self.problems)
        if self.sent == 0:
            out.append("the canary published nothing")
        if self.lost:
            missing = sorted(set(range(self.sent)) - set(self.received))
            out.append(f"{self.lost} of {self.sent} canary events lost: {_ranges(missing)}")
        if len(self.received) != len(set(self.received)):
            out.append(f"{len(self.received) - len(set(self.received))} canary events repeated")
        if self.received != sorted(self.received):
            out.append("canary events arrived out of order")
        return out


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1-3, 7"``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


class Canary:
    """``await start()``, the attack, then ``report = await stop()``."""

    def __init__(self, port: int, cats_token: str, afad_token: str, *, rate: float = RATE) -> None:
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.cats_token = cats_token
        self.afad_token = afad_token
        self.rate = rate
        self.report = CanaryReport()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)

    async def start(self) -> None:
        """Connect both clients and start publishing; returns once the first is due."""
        self._thread.start()
        ready = await trio.to_thread.run_sync(self._ready.wait, CONNECT_TIMEOUT + 1)
        assert ready, "the canary did not start"
        assert not self.report.problems, self.report.problems

    async def stop(self) -> CanaryReport:
        self._stop.set()
        await trio.to_thread.run_sync(self._thread.join)
        return self.report

    # -- the canary's own thread -------------------------------------------------------

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported, never raised in a thread
            self.report.problems.append(f"canary crashed: {exc!r}")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        report = self.report
        due: dict[int, float] = {}
        all_arrived = trio.Event()
        done = False

        async def auth(token: str, client_type: str) -> trio_websocket.WebSocketConnection:
            ws = await trio_websocket.connect_websocket_url(nursery, self.url)
            await ws.send_message(
                json.dumps({"type": "auth", "token": token, "client_type": client_type})
            )
            reply = json.loads(await ws.get_message())
            if reply.get("type") != "auth_success":
                raise AssertionError(f"canary {client_type} not authenticated: {reply}")
            return ws

        async def receive(ws: trio_websocket.WebSocketConnection, who: str) -> None:
            try:
                while True:
                    message: dict[str, Any] = json.loads(await ws.get_message())
                    if message.get("type") == "error":
                        report.problems.append(f"canary {who} got an error: {message['payload']}")
                        continue
                    mid = message.get("message_id")
                    if isinstance(mid, str) and mid.startswith(PREFIX):
                        n = int(mid[len(PREFIX) :])
                        report.received.append(n)
                        report.latencies.append(trio.current_time() - due[n])
                        if done and len(set(report.received)) >= report.sent:
                            all_arrived.set()
            except trio_websocket.ConnectionClosed as exc:
                if not done or not all_arrived.is_set():
                    report.problems.append(f"canary {who} was closed: {exc.reason}")

        async with trio.open_nursery() as nursery:
            with trio.fail_after(CONNECT_TIMEOUT):
                afad = await auth(self.afad_token, "AFAD")
                cats = await auth(self.cats_token, "CATS")
            nursery.start_soon(receive, afad, "AFAD")
            nursery.start_soon(receive, cats, "CATS")
            start = trio.current_time()
            self._ready.set()
            n = 0
            while not self._stop.is_set() or trio.current_time() - start < MIN_SECONDS:
                due[n] = start + n / self.rate
                await trio.sleep_until(due[n])
                payload = {**CONVERSION, "pay_id": n}
                try:
                    await cats.send_message(envelope("conversion", payload, "CATS", f"{PREFIX}{n}"))
                except trio_websocket.ConnectionClosed:
                    break  # the reader reports the close
                n += 1
                report.sent = n
            done = True
            if len(set(report.received)) >= report.sent:
                all_arrived.set()
            with trio.move_on_after(DRAIN):
                await all_arrived.wait()
            with trio.move_on_after(2):
                for ws in (cats, afad):
                    await ws.aclose()
                    await ws._stream.aclose()
            nursery.cancel_scope.cancel()
