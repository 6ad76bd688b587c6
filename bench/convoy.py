"""The GIL convoy of a writer thread: ``python -m bench.convoy``.

Commits one batch of 200 event-sized rows into a WAL-mode SQLite file from a
worker thread, as catsock's log writer does (on every core, as deployed; with
``--one-core`` on one, as the benchmarks pin a server, where the threads take
turns on the core instead and the effect is far smaller), first with the event loop's thread
idle and then with it busy running Python (as under overload), both with
``executemany`` (a step per row, the GIL let go and taken back around each) and
with ``storage.db.insert_rows`` (one statement), at Python's switch interval (5 ms)
and at the 1 ms ``catsock serve`` sets. Prints milliseconds per commit.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.db import insert_rows

ROWS = 200
BODY = '{"type":"conversion","payload":{"pay_id":1,"owner_id":2,"amount":1500}}' * 4


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, a TEXT, b TEXT, c REAL, body TEXT)")
    return db


def _batches(db: sqlite3.Connection) -> dict[str, Callable[[int], None]]:
    def rows(base: int) -> list[tuple[Any, ...]]:
        return [(base + i, f"m{base + i}", "cats", time.time(), BODY) for i in range(ROWS)]

    def many(base: int) -> None:
        db.execute("BEGIN")
        db.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows(base))
        db.execute("COMMIT")

    def one(base: int) -> None:
        db.execute("BEGIN")
        insert_rows(db, "t", 5, rows(base))
        db.execute("COMMIT")

    return {"executemany": many, "insert_rows": one}


def _timed(commit: Callable[[int], None], first: int, n: int) -> list[float]:
    out = []
    for k in range(n):
        started = time.perf_counter()
        commit(first + k * ROWS)
        out.append(1000 * (time.perf_counter() - started))
    return out


def _spin(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def _beside_busy_thread(commit: Callable[[int], None], first: int, n: int) -> list[float]:
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop,))
    spinner.start()
    busy: list[float] = []
    worker = threading.Thread(target=lambda: busy.extend(_timed(commit, first, n)))
    worker.start()
    worker.join()
    stop.set()
    spinner.join()
    return busy


def main() -> None:
    if "--one-core" in sys.argv and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    default = sys.getswitchinterval()
    with tempfile.TemporaryDirectory() as tmp:
        db = _connect(Path(tmp) / "convoy.db")
        base = 0
        for interval in (default, 0.001):  # Python's, and what `catsock serve` sets
            sys.setswitchinterval(interval)
            for name, commit in _batches(db).items():
                idle = _timed(commit, base, 20)
                busy = _beside_busy_thread(commit, base + 20 * ROWS, 10)
                base += 30 * ROWS
                print(
                    f"switch interval {1000 * interval:g} ms, {name:12} {ROWS} rows: idle median"
                    f" {statistics.median(idle):.2f} ms; beside a busy thread median"
                    f" {statistics.median(busy):.1f} ms, max {max(busy):.1f} ms"
                )


if __name__ == "__main__":
    main()
