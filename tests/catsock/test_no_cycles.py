"""A connection, once closed, is freed by reference counting: it leaves no cycle.

A cycle through a connection's objects (its session, link, frame reader, task,
nursery, cancel scopes: 29 objects each when a link kept its session's callback)
is freed only by the cyclic garbage collector, which then walks every live
connection too: in a storm of 1,000 connections that was a pause of tens of
milliseconds falling on some client's connect (issue 10, docs/benchmarks.md). The
test runs every way a connection can end with the collector off, then asks it
what it would have had to free.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator

import trio

from .harness import GatewayFactory, RawClient, envelope

#: Packages whose objects must never be left in a cycle.
OURS = ("catsock.", "protocol.", "storage.")


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cyclic_garbage_of_ours() -> list[str]:
    """Type names of our objects that only the cyclic collector would free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        names = [
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if type(o).__module__.startswith(OURS)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return sorted(set(names))


async def test_closed_connections_leave_no_reference_cycle(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    payload = {"access_id": 1, "adware_id": 1, "owner_id": 2}
    with trio.fail_after(30), collector_off():
        for i in range(3):
            # Ends by the client's close handshake, after a delivery each way.
            async with gw.client("CATS", "cats") as cats, gw.client("AFAD", "afad") as afad:
                text = envelope("click", payload, "CATS", f"cycle-{i}")
                await cats.send(text)
                while await afad.recv_text() != text:  # earlier ones, replayed: no acks
                    pass
            # Ends by the gateway, for a bad token and for an invalid event.
            async with gw.connect() as bad:
                await bad.send({"type": "auth", "token": "nope", "client_type": "AFAD"})
                assert (await bad.recv())["type"] == "error"
            async with gw.client("CATS", "cats") as cats:
                await cats.send({"type": "event", "event_type": "click", "payload": {}})
                assert (await cats.recv())["type"] == "error"
            # Ends by the gateway, for breaking the protocol (an unmasked frame).
            raw = await RawClient.connect(gw.port)
            await raw.send_text(json.dumps({"type": "ping"}))
            await raw.stream.send_all(b"\x81\x00")
            await raw.stream.receive_some(1024)
            await raw.aclose()
            # Ends by the peer dropping the socket mid-connection.
            raw = await RawClient.connect(gw.port)
            await raw.stream.aclose()
            # A plain HTTP request, answered and closed.
            async with await trio.open_tcp_stream("127.0.0.1", gw.port) as http:
                await http.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while await http.receive_some(65536):
                    pass
        while gw.gateway.connections:  # noqa: ASYNC110 (no event for it; lingering closes)
            await trio.sleep(0.01)
        leftovers = cyclic_garbage_of_ours()
    assert leftovers == [], leftovers
