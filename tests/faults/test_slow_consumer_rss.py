"""A slow durable recipient never grows the gateway's memory (issue 5, "Slow consumers").

The gateway runs as a process with a send queue of 8 frames; AFAD reads one event
and then dawdles while CATS publishes thousands of 20 KB events. AFAD's queue
fills, the gateway switches it to catching up from the log, and its resident set
(VmRSS in /proc) stays bounded. Then AFAD reads at full speed and ends with every
event, in order, once.
"""

from __future__ import annotations

import re
import time

import trio

from catsock.client import Accepted, connect

from .conftest import CLIENT_OPTIONS, GatewayProcess, Recipient, conversion_payload, publish_stream

TOTAL = 3000
PAD = 20_000
#: Seconds AFAD waits after each event while the stream goes on: about 100 a second,
#: a few percent of what is published meanwhile. A reader's pace, not a wait.
SLOW = 0.01
#: Growth of the gateway's RSS allowed over its baseline. The stream is 3000 x 20 KB
#: = 60 MB of event text, and a queued event costs more than its text (the body
#: string, its encoded frame, the entry): with the queue effectively unbounded
#: (send_queue = 10000) this test measured +200 MiB. Bounded, it measured +26..34
#: MiB whether 1500, 3000 or 6000 events were sent (allocator arenas, SQLite caches,
#: the publisher's window of 100 events in flight): it does not grow with the
#: backlog. 96 MiB lies between the two with room on either side.
BOUND_KIB = 96 * 1024


async def metric(port: int, name: str) -> float:
    """One sample from the gateway's Prometheus endpoint (GET /metrics)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        data = b""
        async for chunk in stream:
            data += chunk
    match = re.search(rf"^{name}(?:_total)? ([0-9.e+]+)$", data.decode(), re.MULTILINE)
    assert match is not None, data.decode()[-2000:]
    return float(match[1])


async def test_a_slow_durable_recipient_keeps_gateway_memory_bounded(
    gateway: GatewayProcess,
) -> None:
    gateway.settings["CATSOCK_LIMITS__SEND_QUEUE"] = "8"
    cats = gateway.token("cats", "CATS")
    afad = gateway.token("afad", "AFAD")
    ids = [f"s-{i:05d}" for i in range(TOTAL)]
    accepted: dict[str, Accepted] = {}
    samples: list[int] = []
    pad = "x" * PAD

    def payload(i: int) -> dict[str, object]:
        return conversion_payload(i, pad=pad)

    with trio.fail_after(90):
        await gateway.start()
        async with trio.open_nursery() as nursery:
            recipient = Recipient(gateway, afad, extensions={"acks": {}, "resume": {}}, pace=SLOW)
            await nursery.start(recipient.run)
            options = {**CLIENT_OPTIONS, "max_in_flight": 100}  # the default window
            async with connect(gateway.url, cats, "CATS", **options) as client:
                baseline = gateway.vm_rss_kib()

                async def sample() -> None:
                    while True:
                        samples.append(gateway.vm_rss_kib())
                        await trio.sleep(0.02)  # the sampling period, not a wait

                async with trio.open_nursery() as sampling:
                    sampling.start_soon(sample)
                    started = time.perf_counter()
                    await publish_stream(client, ids, accepted, payload=payload)
                    published = time.perf_counter() - started
                    sampling.cancel_scope.cancel()
            read_slowly = len(recipient.received)
            catchups = await metric(gateway.port, "catsock_events_catchups")
            recipient.pace = 0.0  # now at full speed
            await recipient.wait_for(ids)
            await recipient.barrier()
            nursery.cancel_scope.cancel()
    peak = max(samples)
    print(
        f"\n{TOTAL} x {PAD // 1000} KB published in {published:.1f} s; AFAD read {read_slowly}"
        f" meanwhile; gateway RSS baseline {baseline // 1024} MiB, peak {peak // 1024} MiB"
        f" ({len(samples)} samples, +{(peak - baseline) // 1024} MiB); {catchups:g} catch-ups"
    )
    assert read_slowly < TOTAL // 2, "AFAD was not slow: the test proves nothing"
    assert catchups >= 1
    assert peak - baseline < BOUND_KIB, (baseline, peak)
    assert [r.message_id for r in recipient.received] == ids  # all, in order, once
    recipient.check_order()
