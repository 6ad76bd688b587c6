"""The cluster scenario (issue 12; docs/benchmarks.md, docs/scaling.md): what the
shared log in Redis costs.

Three ways to run catsock, each through the same closed-loop fan-out as the
throughput scenario:

- ``embedded``: one process, its SQLite log (the default), pinned to the server core;
- ``cluster``: the same process in cluster mode (``cluster.redis``), pinned the same;
  redis-server runs on the load generator's core, as it would on a machine of its
  own, so the node's core does the node's work only;
- ``workers-2``: ``serve --workers 2`` (two cluster nodes on one port), not pinned:
  on a two-core machine the workers share the cores with the load generator and
  redis-server, so this shows what a second process gives *here*, not how it scales.

Around each cluster step the harness reads Redis's ``INFO`` (commands, network bytes,
memory, CPU of redis-server), so the report gives Redis operations and bytes per
event: the input of docs/scaling.md's arithmetic.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from .servers import cpu_seconds, free_port

__all__ = ["MODES", "BenchRedis", "measured", "missing", "server_setup"]

MODES = ("embedded", "cluster", "workers-2")
#: How a missing redis-server is reported (the step's error).
MISSING = "redis-server is not installed: apt-get install redis-server (Debian package)"


def missing() -> str | None:
    """Why the scenario cannot run here (None: it can)."""
    if shutil.which("redis-server") is None:
        return MISSING
    try:
        import coredis  # noqa: F401
    except ImportError:
        return "the Redis client is missing: pip install 'catsock[cluster]'"
    return None


class BenchRedis:
    """One redis-server for the scenario: its own directory, AOF with ``everysec``
    (Redis's own default when AOF is on: what a production setting looks like)."""

    def __init__(self, process: trio.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, log_dir: Path, cpu: int | None) -> AsyncIterator[BenchRedis]:
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="catsock-bench-redis-") as data:
            command = [
                "redis-server",
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", data,
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--logfile", str(log_dir / "redis.log"),
            ]  # fmt: skip
            taskset = shutil.which("taskset")
            if cpu is not None and taskset is not None:
                command = [taskset, "-c", str(cpu), *command]
            await trio.Path(log_dir).mkdir(parents=True, exist_ok=True)
            process = await trio.lowlevel.open_process(command, stdin=subprocess.DEVNULL)
            redis = cls(process, port)
            try:
                with trio.fail_after(10):
                    while (await redis._info("server")) is None:
                        if process.poll() is not None:
                            raise RuntimeError(f"redis-server exited; see {log_dir / 'redis.log'}")
                        await trio.sleep(0.05)  # its start-up has no event to wait on
                yield redis
            finally:
                process.terminate()
                with trio.CancelScope(shield=True):
                    await process.wait()

    async def _info(self, section: str) -> dict[str, Any] | None:
        import coredis
        import coredis.exceptions

        try:
            async with coredis.Redis.from_url(
                self.url, decode_responses=True, connect_timeout=0.5
            ) as client:
                return dict(await client.info(section))
        except Exception:  # not up yet (the client's task group wraps what it raises)
            return None

    async def flush(self) -> None:
        """Empty it: each mode starts as a new cluster (no log, no cursors)."""
        import coredis

        async with coredis.Redis.from_url(self.url, decode_responses=True) as client:
            await client.flushall()

    async def counters(self) -> dict[str, float]:
        """Commands run, network bytes in and out, memory used, CPU seconds: so far."""
        stats = await self._info("stats") or {}
        commands = await self._info("commandstats") or {}
        memory = await self._info("memory") or {}
        calls = sum(
            int(v["calls"]) if isinstance(v, dict) else 0
            for k, v in commands.items()
            if k.startswith("cmdstat_") and k != "cmdstat_info"
        )
        return {
            "commands": float(calls),
            "net_in": float(stats.get("total_net_input_bytes", 0)),
            "net_out": float(stats.get("total_net_output_bytes", 0)),
            "memory": float(memory.get("used_memory", 0)),
            "cpu_s": cpu_seconds(self.process.pid),
        }


def server_setup(mode: str, redis_url: str) -> tuple[dict[str, str], list[str], bool]:
    """The environment and extra ``serve`` arguments of ``mode``, and whether it is
    pinned to the server core."""
    if mode == "embedded":
        return {}, [], True
    env = {"CATSOCK_CLUSTER__REDIS": redis_url}
    if mode == "cluster":
        return env, [], True
    if mode == "workers-2":
        return env, ["--workers", "2"], False
    raise ValueError(f"unknown cluster mode {mode!r}")


async def measured(
    redis: BenchRedis | None, step: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run ``step`` (a closed-loop fan-out) and add what Redis did meanwhile, per
    event published (``redis``: None for the embedded mode)."""
    if redis is None:
        return await step()
    before = await redis.counters()
    result = await step()
    after = await redis.counters()
    events = max(int(result["published"]), 1)
    delta = {k: after[k] - before[k] for k in after}
    result["redis"] = {
        "events": events,
        "commands_per_event": delta["commands"] / events,
        "bytes_in_per_event": delta["net_in"] / events,
        "bytes_out_per_event": delta["net_out"] / events,
        "memory_per_event": delta["memory"] / events,
        "cpu_pct": 100 * delta["cpu_s"] / max(result["wall_s"], 1e-9),
    }
    return result


def markdown(records: list[dict[str, Any]]) -> list[str]:
    """Section 6 of the report: each mode's fan-out, its ratio to the embedded node
    at the same S, and what Redis did per event."""
    # Late: report imports this module for the section.
    from .report import _FAN_OUT_HEADER as header
    from .report import _fan_out_cells as fan_out_cells
    from .report import _table

    embedded = {
        r["params"]["subscribers"]: r["metrics"]
        for r in records
        if r["params"]["mode"] == "embedded" and r["metrics"]
    }
    rows = []
    for r in records:
        m, mode = r["metrics"], r["params"]["mode"]
        if m is None:
            rows.append([mode, f"ERROR: {r['error']}"] + [""] * (len(header) + 4))
            continue
        base = embedded.get(m["subscribers"])
        ratio = "—"
        if mode != "embedded" and base and base["deliveries_per_s"]:
            ratio = f"{m['deliveries_per_s'] / base['deliveries_per_s']:.2f}×"
        redis = m.get("redis")
        cells = ["—"] * 4
        if redis:
            cells = [
                f"{redis['commands_per_event']:.2f}",
                f"{redis['bytes_in_per_event']:,.0f} / {redis['bytes_out_per_event']:,.0f}",
                f"{redis['memory_per_event']:,.0f}",
                f"{redis['cpu_pct']:.0f}%",
            ]
        rows.append([mode, *fan_out_cells(m), ratio, *cells])
    columns = [
        "mode",
        *header,
        "vs embedded",
        "Redis commands / event",
        "Redis bytes in / out per event",
        "Redis memory / event (B)",
        "redis-server CPU",
    ]
    return [
        "## 6. Cluster mode (catsock embedded, one node over Redis, `--workers 2`)",
        "",
        "redis-server runs pinned to the load generator's core (AOF, `everysec`);",
        "`workers-2` is not pinned and shares both cores with the generator and Redis.",
        "",
        _table(columns, rows),
        "",
    ]
