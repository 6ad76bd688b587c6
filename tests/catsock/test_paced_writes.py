"""Live-only recipients' writes go on only in the pacer's rounds (catsock/pacer.py).

A dashboard that reads slowly fills its socket; what the kernel does not take is
finished by the pacer once there is room again, never by a drain task of the
connection's own: under overload a thousand such tasks woke together and made
every round of the event loop a thousand writes long (issue 19). A durable
recipient keeps its drain task: it is written as soon as there is room.
"""

from __future__ import annotations

import collections
import json
import socket

import trio
import wsproto.events as ev

from catsock.transport.link import Link

from .harness import CONVERSION, GatewayFactory, RawClient, envelope


class Spawned(trio.abc.Instrument):
    """Counts the link tasks started, by method and by the link's owner kind."""

    def __init__(self, durable: set[Link]) -> None:
        self.durable = durable
        self.count: collections.Counter[tuple[str, bool]] = collections.Counter()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        frame = getattr(task.coro, "cr_frame", None)
        link = frame.f_locals.get("self") if frame is not None else None
        if isinstance(link, Link):
            self.count[frame.f_code.co_name, link in self.durable] += 1


async def _slow_dashboard(port: int, token: str) -> RawClient:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    dash = RawClient(trio.SocketStream(sock))
    await dash.stream.send_all(dash.ws.send(ev.Request(host="127.0.0.1", target="/ws")))
    assert isinstance(await dash.next_event(), ev.AcceptConnection)
    await dash.send_text(json.dumps({"type": "auth", "token": token, "client_type": "DASHBOARD"}))
    assert isinstance(await dash.next_event(), ev.TextMessage)  # auth_success
    return dash


async def test_a_slow_dashboard_is_written_by_the_pacer_and_gets_everything(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    token = gw.token("dash", "DASHBOARD")
    durable: set[Link] = set()
    spawned = Spawned(durable)
    pad = "x" * 30_000
    with trio.fail_after(30):
        dash = await _slow_dashboard(gw.port, token)
        async with gw.client("AFAD") as afad, gw.client("CATS") as cats:
            durable.update(c.link for c in gw.gateway.connections if c._durable)
            trio.lowlevel.add_instrument(spawned)
            try:
                n = 0
                while not spawned.count["_until_writable", False] and n < 200:
                    payload = {**CONVERSION, "pad": pad}
                    await cats.send(envelope("conversion", payload, "CATS", f"c{n}"))
                    n += 1
                    assert json.loads(await afad.recv_text())["message_id"] == f"c{n - 1}"
                assert spawned.count["_until_writable", False], "the dashboard never filled"
                got, text = [], ""
                while len(got) < n:
                    event = await dash.next_event()
                    assert isinstance(event, ev.TextMessage)
                    text += event.data  # wsproto hands a message over in pieces
                    if event.message_finished:
                        got.append(json.loads(text)["message_id"])
                        text = ""
            finally:
                trio.lowlevel.remove_instrument(spawned)
    assert got == [f"c{i}" for i in range(n)]
    assert spawned.count["_drain", False] == 0  # the dashboard had no drain task
    await dash.aclose()
