"""The command line: ``python -m bench [--quick] [--peers ...] [--scenarios ...] [--out DIR]``.

Pins itself (the load generator) to one CPU and every server to another, runs the
plan, prints one progress line per step to stderr, and writes a timestamped run
directory (``results.json``, ``results.md``, PNG plots, server logs) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from .loadgen import cpu_pressure_us
from .report import machine_info, write_report
from .scenarios import DEFAULT_SCENARIOS, SCENARIOS, Plan, Runner, progress
from .servers import (
    BENCH_DIR,
    PEERS,
    ensure_node_peer,
    kill_leftovers,
    peer_available,
    raise_nofile,
)

DEFAULT_OUT = BENCH_DIR / "results"
QUICK_PEERS = ["catsock", "trio-wsproto", "websockets"]


def _names(value: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    if value == "all":
        return list(known)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}"
        )
    return names


def _floats(value: str) -> list[float]:
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, not {value!r}"
        ) from None
    if not out or any(v <= 0 for v in out):
        raise argparse.ArgumentTypeError(f"expected numbers above 0, not {value!r}")
    return out


def _ints(value: str) -> list[int]:
    try:
        return [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, not {value!r}"
        ) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark catsock against peer relays (a trio + wsproto reference relay, websockets, "
            "python-socketio, Node ws, a naive trio-websocket relay): fan-out throughput, latency "
            "at fixed load, connection storms, idle memory and the cost of the message log; "
            "and, with --scenarios soak, catsock alone under sustained overload. "
            "See docs/benchmarks.md."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every scenario in a reduced form, catsock, trio-wsproto and websockets "
        "(under a minute)",
    )
    parser.add_argument(
        "--peers",
        type=lambda v: _names(v, list(PEERS), "peer"),
        default=None,
        help=f"comma-separated servers to run, or 'all' (default: all; quick: "
        f"{','.join(QUICK_PEERS)}); known: {', '.join(PEERS)}",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda v: _names(v, SCENARIOS, "scenario"),
        default=list(DEFAULT_SCENARIOS),
        help=f"comma-separated scenarios, or 'all' (default: all but soak); known: "
        f"{', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="directory the timestamped run directory is created in (default: bench/results)",
    )
    parser.add_argument("--subscribers", type=_ints, help="throughput: subscriber counts S")
    parser.add_argument(
        "--publishers", type=int, help="throughput: publishers P (default 4; quick: 2)"
    )
    parser.add_argument("--rates", type=_ints, help="latency: offered msg/s per step")
    parser.add_argument(
        "--latency-subscribers",
        type=int,
        metavar="N",
        help="latency: subscribers S (default 4; quick: 5)",
    )
    parser.add_argument("--storm-sizes", type=_ints, help="storm: client counts")
    parser.add_argument("--memory-levels", type=_ints, help="memory: idle connection counts")
    parser.add_argument("--duration", type=float, help="seconds per throughput/latency step")
    soak = parser.add_argument_group("soak (--scenarios soak; docs/benchmarks.md §3)")
    soak.add_argument(
        "--soak-duration",
        type=float,
        metavar="SECONDS",
        help="seconds of load per level (default 600; quick: 15)",
    )
    soak.add_argument(
        "--soak-load",
        type=_floats,
        metavar="X,Y",
        help="load levels as multiples of the measured capacity (default 1,2)",
    )
    soak.add_argument(
        "--soak-capacity",
        type=float,
        metavar="EVENTS_PER_S",
        help="use this as 1x instead of measuring it (to compare runs at the same rate)",
    )
    soak.add_argument(
        "--soak-dashboards", type=int, metavar="N", help="DASHBOARD connections (default 1000)"
    )
    soak.add_argument(
        "--soak-idle-dashboards",
        type=int,
        metavar="N",
        help="of those, how many never read (default 10)",
    )
    soak.add_argument("--soak-afad", type=int, metavar="N", help="AFAD recipients (default 10)")
    soak.add_argument(
        "--soak-publishers", type=int, metavar="N", help="CATS publishers (default 2)"
    )
    soak.add_argument(
        "--soak-publisher-window",
        type=int,
        metavar="N",
        help="events a publisher writes ahead of its answers (default 100; 0: open loop, "
        "as the seed's PHP client)",
    )
    soak.add_argument(
        "--soak-window", type=float, metavar="SECONDS", help="seconds per row (default 10)"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (default 0)")
    parser.add_argument(
        "--generator-cpu", type=int, default=1, help="CPU for the load generator (default 1)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RUN_DIR",
        help="measure nothing: rewrite RUN_DIR's results.md and plots from its results.json",
    )
    return parser.parse_args(argv)


def build_plan(args: argparse.Namespace) -> Plan:
    peers = args.peers or (QUICK_PEERS if args.quick else list(PEERS))
    if args.peers is None and args.scenarios == ["soak"]:
        peers = ["catsock"]  # the soak runs catsock alone
    if "catsock" not in peers:
        peers = ["catsock", *peers]
    plan = Plan.make(quick=args.quick, peers=peers, scenarios=args.scenarios)
    if args.subscribers:
        plan.throughput_subscribers = args.subscribers
        plan.durability_subscribers = args.subscribers
    if args.publishers:
        plan.publishers = args.publishers
    if args.rates:
        plan.latency_rates = args.rates
    if args.latency_subscribers:
        plan.latency_subscribers = args.latency_subscribers
    if args.storm_sizes:
        plan.storm_sizes = args.storm_sizes
    if args.memory_levels:
        levels = sorted(set(args.memory_levels) | {0})
        plan.memory_levels = levels
    if args.duration:
        plan.throughput_duration = plan.latency_duration = args.duration
    soak = plan.soak
    for option, name in (
        ("soak_duration", "duration"),
        ("soak_load", "loads"),
        ("soak_capacity", "capacity"),
        ("soak_dashboards", "dashboards"),
        ("soak_idle_dashboards", "idle_dashboards"),
        ("soak_afad", "afad"),
        ("soak_publishers", "publishers"),
        ("soak_publisher_window", "publisher_window"),
        ("soak_window", "window"),
    ):
        value = getattr(args, option)
        if value is not None:
            setattr(soak, name, value)
    soak.idle_dashboards = min(soak.idle_dashboards, soak.dashboards)
    return plan


def pin(plan: Plan, args: argparse.Namespace) -> str:
    """Pin this process (the generator); the servers are pinned when started."""
    available = sorted(os.sched_getaffinity(0))
    if args.no_pin:
        plan.server_cpu = plan.generator_cpu = None
        return "off (--no-pin)"
    if len(available) < 2 or args.server_cpu == args.generator_cpu:
        plan.server_cpu = plan.generator_cpu = None
        return f"off: needs two distinct CPUs (this process may use {available})"
    for cpu in (args.server_cpu, args.generator_cpu):
        if cpu not in available:
            plan.server_cpu = plan.generator_cpu = None
            return f"off: CPU {cpu} is not available (this process may use {available})"
    os.sched_setaffinity(0, {args.generator_cpu})
    plan.server_cpu, plan.generator_cpu = args.server_cpu, args.generator_cpu
    how = "taskset -c" if shutil.which("taskset") else "sched_setaffinity"
    return (
        f"server on CPU {args.server_cpu} ({how}), load generator on CPU {args.generator_cpu} "
        "(sched_setaffinity)"
    )


def _loadavg() -> list[str]:
    with open("/proc/loadavg", encoding="ascii") as f:
        return f.read().split()[:3]


def source_info() -> dict[str, Any]:
    """The commit measured, and the files of the gateway that differ from it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True,
                timeout=10, check=False,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return ""

    status = git("status", "--porcelain", "--", "catsock", "protocol", "storage")
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "modified": [line[3:] for line in status.splitlines()],
    }


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def render(run_dir: Path) -> int:
    source = run_dir / "results.json"
    if not source.exists():
        progress(f"bench: {source} does not exist")
        return 2
    run = json.loads(source.read_text(encoding="utf-8"))
    paths = write_report(run, run_dir)
    progress(f"bench: rewrote {paths['markdown']} and {len(run['plots'])} plots")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        return render(args.render)
    signal.signal(signal.SIGTERM, _terminate)
    plan = build_plan(args)
    started = datetime.now(UTC)
    run_dir = args.out / started.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    nofile = raise_nofile()
    pinning = pin(plan, args)
    skipped: dict[str, str] = {}
    for name in list(plan.peers):
        spec = PEERS[name]
        reason = peer_available(spec)
        if reason is None and spec.node:
            reason = ensure_node_peer(progress)
        if reason is not None:
            skipped[name] = reason
            plan.peers.remove(name)
            progress(f"bench: skipping {name}: {reason}")
    machine = machine_info()
    load = float(machine["loadavg"][0]) if machine["loadavg"] else 0.0
    pressure = machine.get("cpu_pressure_avg60")
    noisy = ""
    if load > 0.5 or (pressure is not None and pressure > 5):
        noisy = (
            f"load average {load:.2f} and CPU pressure "
            f"{'?' if pressure is None else f'{pressure:.0f}'}% "
            "(PSI some avg60) at start: other work was running on this machine; "
            "treat these numbers as indicative only"
        )
    progress(
        f"bench: {len(plan.steps())} steps, peers {', '.join(plan.peers)}; "
        f"scenarios {', '.join(plan.scenarios)}; pinning: {pinning}; open files {nofile}"
    )
    if noisy:
        progress(f"bench: warning: {noisy}")
    clock = time.perf_counter()
    pressure_start = cpu_pressure_us()
    runner = Runner(plan, run_dir, progress)
    interrupted = False
    try:
        trio.run(runner.run)
    except KeyboardInterrupt:
        interrupted = True
        progress("bench: interrupted; writing what was measured")
    finally:
        kill_leftovers()
    run: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(
            ["python -m bench", shlex.join(sys.argv[1:] if argv is None else argv)]
        ).strip(),
        "wall_s": (wall := time.perf_counter() - clock),
        "cpu_pressure_pct": (
            None
            if pressure_start is None or (pressure_end := cpu_pressure_us()) is None
            else (pressure_end - pressure_start) / wall / 1e4
        ),
        "interrupted": interrupted,
        "machine": machine,
        "source": source_info(),
        "loadavg_end": _loadavg(),
        "noisy": noisy,
        "pinning": pinning,
        "open_files_limit": nofile,
        "skipped": skipped,
        "plan": plan.as_dict(),
        "records": runner.records,
    }
    paths = write_report(run, run_dir)
    progress(f"bench: done in {run['wall_s']:.1f} s; report: {paths['markdown']}")
    print(paths["markdown"].read_text(encoding="utf-8"))
    failed = [r for r in runner.records if r["error"] is not None]
    return 1 if interrupted or (failed and len(failed) == len(runner.records)) else 0


if __name__ == "__main__":
    sys.exit(main())
