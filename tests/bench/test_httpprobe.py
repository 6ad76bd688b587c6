"""``bench.httpprobe``: a GET that never hangs, and the Prometheus text parser.

Loopback only, port 0, ``fail_after`` on every I/O test; the slow server's wait
runs on trio's ``autojump_clock``.
"""

from __future__ import annotations

import trio
import trio.testing

from bench.httpprobe import get, parse_metrics


async def _serve(answer: bytes | None, task_status: trio.TaskStatus[int]) -> None:
    """Answer one request with ``answer`` (None: read it and never answer)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    stream = await listeners[0].accept()
    async with stream:
        await stream.receive_some(65536)
        if answer is None:
            await trio.sleep_forever()
        await stream.send_all(answer)


async def test_get_reads_status_and_body() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            port = await nursery.start(_serve, answer)
            probe = await get(port, "/health", 5.0)
    assert probe.status == 200
    assert probe.ok
    assert probe.body == b"ok"
    assert not probe.timed_out


async def test_get_times_out_on_a_silent_server(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_serve, None)
            probe = await get(port, "/metrics", 5.0)
            nursery.cancel_scope.cancel()
    assert probe.timed_out
    assert probe.status is None
    assert not probe.ok


async def test_get_reports_a_refused_connection() -> None:
    with trio.fail_after(10):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()
        probe = await get(port, "/health", 5.0)
    assert probe.error
    assert not probe.ok
    assert not probe.timed_out


def test_parse_metrics_keeps_catsock_series_but_not_buckets() -> None:
    text = b"""# HELP catsock_events_dropped_total Events dropped.
# TYPE catsock_events_dropped_total counter
catsock_events_dropped_total 12.0
catsock_connections{client_type="DASHBOARD"} 990.0
catsock_publish_to_deliver_seconds_bucket{le="0.1"} 5.0
catsock_publish_to_deliver_seconds_count 7.0
catsock_events_created 1.7e9
python_gc_objects_collected_total{generation="0"} 3.0
"""
    assert parse_metrics(text) == {
        "catsock_events_dropped_total": 12.0,
        'catsock_connections{client_type="DASHBOARD"}': 990.0,
        "catsock_publish_to_deliver_seconds_count": 7.0,
    }
