"""A slow durable recipient never grows the gateway's memory (issue 5, "Slow consumers").

The gateway runs as a process with a send queue of 8 frames; AFAD reads one event
and then dawdles while CATS publishes thousands of 20 KB events. AFAD's queue
fills, the gateway switches it to catching up from the log, and its resident set
(VmRSS in /proc) stops growing with the backlog. Then AFAD reads at full speed and
ends with every event, in order, once.

No bound here is an absolute number of MiB (that depends on the machine, the
allocator and SQLite's caches): the stream goes out in two halves, and what the
gateway grew by during the second half, when the first half's backlog was already
waiting, is compared with the text published during it, in the same run.
"""

from __future__ import annotations

import re
import time

import trio

from catsock.client import Accepted, connect

from .conftest import CLIENT_OPTIONS, GatewayProcess, Recipient, conversion_payload, publish_stream

TOTAL = 3000
HALF = TOTAL // 2
PAD = 20_000
#: Seconds AFAD waits after each event while the stream goes on: about 100 a second,
#: a few percent of what is published meanwhile. A reader's pace, not a wait.
SLOW = 0.01
#: The share of the second half's event text the gateway may grow by while it is
#: published. A queued event costs more than its text (the body string, its encoded
#: frame, the entry): with the queue effectively unbounded (send_queue = 10000) the
#: gateway holds about three times the text. Bounded, the first half pays for the
#: allocator's arenas, SQLite's caches and the publisher's window of 100 events in
#: flight, and the second half adds little more: the growth does not follow the backlog.
SECOND_HALF_SHARE = 0.5


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
                    await publish_stream(client, ids[:HALF], accepted, payload=payload)
                    first_half = len(samples)
                    await publish_stream(client, ids[HALF:], accepted, payload=payload)
                    published = time.perf_counter() - started
                    sampling.cancel_scope.cancel()
            read_slowly = len(recipient.received)
            catchups = await metric(gateway.port, "catsock_events_catchups")
            recipient.pace = 0.0  # now at full speed
            await recipient.wait_for(ids)
            await recipient.barrier()
            nursery.cancel_scope.cancel()
    half_peak, peak = max([baseline, *samples[:first_half]]), max([baseline, *samples])
    second_text_kib = (TOTAL - HALF) * PAD // 1024
    print(
        f"\n{TOTAL} x {PAD // 1000} KB published in {published:.1f} s; AFAD read {read_slowly}"
        f" meanwhile; gateway RSS baseline {baseline // 1024} MiB, peak after the first half"
        f" {half_peak // 1024} MiB, after the second {peak // 1024} MiB ({len(samples)}"
        f" samples; the second half's text: {second_text_kib // 1024} MiB); {catchups:g}"
        " catch-ups"
    )
    assert read_slowly < HALF, "AFAD was not slow: the test proves nothing"
    assert catchups >= 1  # the queue overflowed: AFAD was switched to the log
    assert peak - half_peak < SECOND_HALF_SHARE * second_text_kib, (baseline, half_peak, peak)
    assert [r.message_id for r in recipient.received] == ids  # all, in order, once
    recipient.check_order()
