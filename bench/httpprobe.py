"""Plain HTTP probes for the soak: ``GET /health`` and ``/metrics`` with a deadline.

``get`` opens a fresh connection (``Connection: close``), sends one GET and reads
the answer to the end, all within a time limit; it never raises for a
slow or broken server but returns a ``Probe`` saying what happened (status and
seconds, or the timeout, or the error). ``parse_metrics`` reads the Prometheus
text format into ``{"name{labels}": value}`` for the ``catsock_`` series.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

__all__ = ["Probe", "get", "parse_metrics"]

#: Response bodies larger than this are cut off (the /metrics page is about 20 KiB).
MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Probe:
    """One request: when it started (the generator's perf_counter), how it ended."""

    path: str
    started: float
    seconds: float
    status: int | None = None
    timed_out: bool = False
    error: str | None = None
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == 200


async def get(port: int, path: str, limit: float, host: str = "127.0.0.1") -> Probe:
    """``GET path`` on ``host:port``; the whole exchange bounded by ``limit`` seconds."""
    started = time.perf_counter()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    ).encode("ascii")
    chunks: list[bytes] = []
    error: str | None = None
    with trio.move_on_after(limit) as scope:
        try:
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(request)
                size = 0
                while size < MAX_BODY:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
        except (OSError, trio.BrokenResourceError) as exc:
            error = str(exc) or type(exc).__name__
    seconds = time.perf_counter() - started
    if scope.cancelled_caught:
        return Probe(path, started, seconds, timed_out=True)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    status: int | None = None
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) >= 2 and parts[1].isdigit():
        status = int(parts[1])
    elif error is None:
        error = f"no HTTP status line in {data[:60]!r}"
    return Probe(path, started, seconds, status=status, error=error, body=body)


def parse_metrics(text: bytes, prefix: str = "catsock_") -> dict[str, float]:
    """Every ``prefix`` sample of a Prometheus text page, keyed ``name{labels}`` as
    written; histogram buckets and ``_created`` timestamps are left out."""
    out: dict[str, float] = {}
    for line in text.decode("utf-8", "replace").splitlines():
        if not line.startswith(prefix):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if name.endswith(("_bucket", "_created")):
            continue
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out
