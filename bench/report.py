"""The run's outputs: machine description, JSON, the markdown report and the PNG plots.

``machine_info`` is printed into every report; ``seed_targets`` turns one step's
metrics into the pass/fail checks of seed 000 §1.3 (connect < 500 ms, latency
< 100 ms, 1,000+ connections, 10,000 msg/s); ``write_report`` writes
``results.json``, ``results.md``, ``latency_cdf.png``, ``throughput.png`` and, for
the soak, ``soak.png`` (bench/soakreport.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cluster import markdown as cluster_markdown
from .servers import PEERS, PEERS_DIR
from .soakreport import soak_markdown, soak_plot

__all__ = ["loss_text", "machine_info", "seed_targets", "to_markdown", "write_report"]

PACKAGES = (
    "trio",
    "trio-websocket",
    "wsproto",
    "orjson",
    "websockets",
    "python-socketio",
    "python-engineio",
    "uvicorn",
    "numpy",
    "matplotlib",
)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def machine_info() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    mhz = [
        line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("cpu MHz")
    ]
    meminfo = {
        line.split(":")[0]: line.split(":")[1].strip()
        for line in _read("/proc/meminfo").splitlines()
        if ":" in line
    }
    node = shutil.which("node")
    node_version = ""
    if node is not None:
        try:
            node_version = subprocess.run(
                [node, "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            node_version = "?"
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    ws_package = PEERS_DIR / "node_modules" / "ws" / "package.json"
    if ws_package.exists():
        versions["ws (npm)"] = json.loads(ws_package.read_text()).get("version")
    try:
        versions["catsock"] = importlib.metadata.version("catsock")
    except importlib.metadata.PackageNotFoundError:
        versions["catsock"] = None
    return {
        "cpu_model": models[0] if models else platform.processor() or "?",
        "cpu_mhz": mhz[0] if mhz else None,
        "nproc": os.cpu_count(),
        "memory_total": meminfo.get("MemTotal", "?"),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "node": node_version or None,
        "taskset": shutil.which("taskset"),
        "loadavg": _read("/proc/loadavg").split()[:3],
        "cpu_pressure_avg60": _pressure_avg60(),
        "versions": versions,
    }


def _pressure_avg60() -> float | None:
    """PSI: the share of the last minute in which some runnable task waited for a CPU."""
    for item in _read("/proc/pressure/cpu").split("\n", 1)[0].split():
        if item.startswith("avg60="):
            return float(item[6:])
    return None


# -- seed 000 §1.3 targets --------------------------------------------------------------


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"target": name, "pass": ok, "detail": detail}


def seed_targets(record: dict[str, Any]) -> list[dict[str, Any]]:
    m = record["metrics"]
    scenario = record["scenario"]
    if m is None:
        return []
    checks = []
    if scenario in ("throughput", "durability"):
        rate = m["deliveries_per_s"]
        checks.append(
            _check(
                "10,000 msg/s",
                m["lossless"] and rate >= 10_000,
                f"{rate:,.0f} delivered/s{'' if m['lossless'] else ', not lossless'}",
            )
        )
    elif scenario == "latency":
        p99 = m.get("p99_ms")
        checks.append(
            _check(
                "latency < 100 ms",
                p99 is not None and p99 < 100 and m["lossless"] and not m["unsent"],
                ("no samples" if p99 is None else f"p99 {p99:.1f} ms")
                + (f", {m['unsent']:,} unsent" if m["unsent"] else ""),
            )
        )
        offered = record["params"]["rate"]
        if offered >= 10_000:
            sustained = m["lossless"] and m["achieved_msgs_per_s"] >= 0.99 * offered
            checks.append(
                _check(
                    "10,000 msg/s",
                    sustained,
                    f"{m['achieved_msgs_per_s']:,.0f} msg/s published, "
                    f"{'lossless' if m['lossless'] else 'not lossless'}",
                )
            )
    elif scenario == "storm":
        checks.append(
            _check(
                "connect < 500 ms",
                m["failed"] == 0 and m["setup_p99_ms"] < 500,
                f"p99 {m['setup_p99_ms']:.0f} ms",
            )
        )
        if m["clients"] >= 1000:
            checks.append(
                _check("1,000+ connections", m["failed"] == 0, f"{m['ok']:,}/{m['clients']:,}")
            )
    elif scenario == "memory":
        top = m["levels"][-1]["connections"]
        if top >= 1000:
            checks.append(_check("1,000+ connections", True, f"{top:,} held idle"))
    return checks


def _targets_cell(record: dict[str, Any]) -> str:
    if record["error"] is not None:
        return "FAIL (error)"
    checks = record.get("targets") or []
    if not checks:
        return "—"
    return "; ".join(
        f"{'PASS' if c['pass'] else 'FAIL'} {c['target']} ({c['detail']})" for c in checks
    )


# -- markdown -------------------------------------------------------------------------


def _pressure_text(start: float | None, during: float | None) -> str:
    if start is None and during is None:
        return "not available"
    parts = []
    if start is not None:
        parts.append(f"{start:.0f}% in the minute before the run")
    if during is not None:
        parts.append(f"{during:.0f}% during it (0% on a quiet machine)")
    return ", ".join(parts)


def _source_lines(source: dict[str, Any] | None) -> list[str]:
    if not source or not source.get("commit"):
        return []
    modified = source.get("modified") or []
    return [
        f"- Source: commit {source['commit'][:12]}"
        + (
            f", with uncommitted changes to {', '.join(modified)}"
            if modified
            else " (catsock, protocol and storage as committed)"
        )
    ]


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def loss_text(m: dict[str, Any]) -> str:
    """Why a step is not lossless: messages skipped or connections dropped (lost), or
    everything in order but the rest still queued when the harness stopped waiting."""
    if m["lossless"]:
        return "lossless"
    if m["gaps"] or m["duplicates"] or m["subscribers_closed"]:
        return f"{m['lost']:,} lost"
    return f"{m['lost']:,} not delivered before the drain limit, no gaps"


#: The columns of a closed-loop fan-out step (scenarios 1 and 5).
_FAN_OUT_HEADER = (
    "P",
    "S",
    "msgs/s",
    "deliveries/s",
    "deliveries per server CPU-s",
    "lossless",
    "server CPU",
    "generator CPU",
    "cpu-wait",
)


def _fan_out_cells(m: dict[str, Any]) -> list[str]:
    return [
        str(m["publishers"]),
        f"{m['subscribers']:,}",
        f"{m['msgs_per_s']:,.0f}",
        f"{m['deliveries_per_s']:,.0f}",
        _per_cpu(m),
        _lossless(m),
        _pct(m["server_cpu_pct"]),
        _pct(m["generator_cpu_pct"]),
        _pct(m.get("cpu_pressure_pct")),
    ]


def _per_cpu(m: dict[str, Any]) -> str:
    """Deliveries per second of server CPU: comparable even when the machine is busy."""
    cpu = m.get("server_cpu_pct") or 0.0
    return "—" if cpu <= 0 else f"{m['deliveries_per_s'] / (cpu / 100):,.0f}"


def _lossless(m: dict[str, Any]) -> str:
    return "yes" if m["lossless"] else f"**no** ({loss_text(m)})"


def _error_row(record: dict[str, Any], width: int) -> list[str]:
    cells = [record["peer"], f"ERROR: {record['error']}"]
    return cells + [""] * (width - 3) + [_targets_cell(record)]


#: The peers every comparing table measures catsock against, in this order: the
#: trio + wsproto reference relay (what a trio server can reach) and websockets.
REFERENCES = ("trio-wsproto", "websockets")

#: A step's metrics → one number (None when the step has none).
Metric = Callable[[dict[str, Any]], float | None]


def _ratio(mine: float | None, theirs: float | None) -> str:
    if mine is None or theirs is None or theirs <= 0:
        return "—"
    return f"{mine / theirs:.2f}×"


def _step_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _ratio_table(
    records: list[dict[str, Any]],
    label: tuple[list[str], Callable[[dict[str, Any]], list[str]]],
    values: list[tuple[str, Metric, Callable[[float], str]]],
    note: str,
    sound: tuple[Callable[[dict[str, Any]], bool], str] | None = None,
) -> list[str]:
    """catsock's ratio to each of ``REFERENCES``, step by step: for each of ``values``
    (name, metric, format) one column with catsock's value and one ``÷ peer`` column
    per reference. A peer or value that is missing (peer not run, step failed) shows
    "—". ``sound`` is (check, what it means): a ratio where either side fails the
    check gets a † and the table a footnote saying what was wrong."""
    steps: dict[str, dict[str, Any]] = {}
    params_of: dict[str, dict[str, Any]] = {}
    for r in records:
        key = _step_key(r["params"])
        params_of.setdefault(key, r["params"])
        steps.setdefault(key, {})[r["peer"]] = r["metrics"]
    if not any("catsock" in peers for peers in steps.values()):
        return []
    label_header, label_cells = label
    header = list(label_header)
    for name, _, _ in values:
        header.append(f"catsock {name}")
        header += [f"{name} ÷ {ref}" for ref in REFERENCES]
    rows = []
    flagged = False
    for key, peers in steps.items():
        if "catsock" not in peers:
            continue
        mine = peers["catsock"]
        row = label_cells(params_of[key])
        for _, metric, fmt in values:
            value = None if mine is None else metric(mine)
            row.append("ERROR" if mine is None else ("—" if value is None else fmt(value)))
            for ref in REFERENCES:
                theirs = peers.get(ref)
                cell = _ratio(value, None if theirs is None else metric(theirs))
                if (
                    sound is not None
                    and cell != "—"
                    and not (sound[0](mine) and theirs is not None and sound[0](theirs))
                ):
                    cell += " †"
                    flagged = True
                row.append(cell)
        rows.append(row)
    out = [f"catsock ÷ reference peers ({note}):", "", _table(header, rows), ""]
    if flagged and sound is not None:
        out += [f"† {sound[1]}", ""]
    return out


def _throughput_ratios(records: list[dict[str, Any]]) -> list[str]:
    def per_cpu(m: dict[str, Any]) -> float | None:
        cpu = m.get("server_cpu_pct") or 0.0
        return None if cpu <= 0 else float(m["deliveries_per_s"] / (cpu / 100))

    return _ratio_table(
        records,
        (["P", "S"], lambda p: [str(p["publishers"]), f"{p['subscribers']:,}"]),
        [
            ("deliveries/s", lambda m: float(m["deliveries_per_s"]), lambda v: f"{v:,.0f}"),
            ("per server CPU-s", per_cpu, lambda v: f"{v:,.0f}"),
        ],
        "above 1 catsock delivers more; per server CPU-s is deliveries/s over the server's "
        "CPU use, which counts even when the generator, not the server, was the limit",
        sound=(lambda m: bool(m["lossless"]), "catsock or the peer was not lossless here."),
    )


def _latency_ratios(records: list[dict[str, Any]]) -> list[str]:
    return _ratio_table(
        records,
        (["offered msg/s", "S"], lambda p: [f"{p['rate']:,}", str(p["subscribers"])]),
        [
            ("p50 ms", lambda m: m.get("p50_ms"), _ms),
            ("p99 ms", lambda m: m.get("p99_ms"), _ms),
        ],
        "below 1 catsock is faster",
        sound=(
            lambda m: bool(m["lossless"]) and not m["unsent"],
            "catsock or the peer did not keep up (not lossless, or messages left unsent): "
            "its latency includes its backlog, so the ratio says more about the backlog.",
        ),
    )


def _storm_ratios(records: list[dict[str, Any]]) -> list[str]:
    return _ratio_table(
        records,
        (
            ["clients", "mode"],
            lambda p: [
                f"{p['clients']:,}",
                "all at once" if p["wave"] is None else f"waves of {p['wave']}",
            ],
        ),
        [
            ("p99 setup ms", lambda m: float(m["setup_p99_ms"]), lambda v: f"{v:.0f}"),
            ("connections/s", lambda m: float(m["connections_per_s"]), lambda v: f"{v:,.0f}"),
        ],
        "p99 set-up time: below 1 catsock is faster; connections/s: above 1 catsock is faster",
    )


def _memory_ratios(records: list[dict[str, Any]]) -> list[str]:
    # One record holds every level: one pseudo-step per level with connections.
    levels = [
        {"peer": r["peer"], "params": {"connections": level["connections"]}, "metrics": level}
        for r in records
        if r["metrics"] is not None
        for level in r["metrics"]["levels"]
        if level.get("kib_per_conn") is not None
    ]
    levels += [
        {"peer": r["peer"], "params": {"connections": n}, "metrics": None}
        for r in records
        if r["metrics"] is None and r["peer"] == "catsock"
        for n in r["params"]["levels"]
        if n
    ]
    return _ratio_table(
        levels,
        (["idle connections"], lambda p: [f"{p['connections']:,}"]),
        [("KiB per connection", lambda m: m.get("kib_per_conn"), lambda v: f"{v:.1f}")],
        "below 1 catsock uses less memory per connection",
    )


def to_markdown(run: dict[str, Any]) -> str:
    records = run["records"]
    by = {s: [r for r in records if r["scenario"] == s] for s in run["plan"]["scenarios"]}
    machine = run["machine"]
    out = [
        f"# catsock benchmark — {run['started']}",
        "",
        f"Command: `{run['command']}`"
        + (" (quick: reduced sizes)" if run["plan"]["quick"] else ""),
        "",
    ]
    if run.get("noisy"):
        out += [f"**Noisy run:** {run['noisy']}", ""]
    out += [
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']} ({machine['nproc']} CPUs"
        + (f", {machine['cpu_mhz']} MHz" if machine.get("cpu_mhz") else "")
        + ")",
        f"- Memory: {machine['memory_total']}",
        f"- Kernel: {machine['kernel']} ({machine['os']})",
        f"- Python {machine['python']}, Node {machine['node'] or 'not installed'}",
        f"- Load average at start: {' '.join(machine['loadavg'])}; "
        f"at end: {' '.join(run.get('loadavg_end', []))}",
        "- CPU pressure (PSI, share of time some runnable task waited for a CPU): "
        + _pressure_text(machine.get("cpu_pressure_avg60"), run.get("cpu_pressure_pct")),
        f"- Pinning: {run['pinning']}",
        "- Versions: "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v is not None),
        *_source_lines(run.get("source")),
        "",
    ]
    if run.get("skipped"):
        out += ["Skipped peers: " + "; ".join(f"{k}: {v}" for k, v in run["skipped"].items()), ""]
    out += [
        "Peers: " + "; ".join(f"`{p}` = {PEERS[p].description}" for p in run["plan"]["peers"]),
        "",
    ]
    if by.get("throughput"):
        header = ["peer", *_FAN_OUT_HEADER, "seed target"]
        rows = []
        for r in by["throughput"]:
            m = r["metrics"]
            if m is None:
                rows.append(_error_row(r, len(header)))
                continue
            rows.append([r["peer"], *_fan_out_cells(m), _targets_cell(r)])
        out += ["## 1. Fan-out throughput (closed loop)", "", _table(header, rows), ""]
        out += _throughput_ratios(by["throughput"])
        out += _headroom(by["throughput"])
    if by.get("latency"):
        header = [
            "peer",
            "offered msg/s",
            "S",
            "sent msg/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "lossless",
            "max send lag ms",
            "server CPU",
            "generator CPU",
            "cpu-wait",
            "seed target",
        ]
        rows = []
        for r in by["latency"]:
            m = r["metrics"]
            if m is None:
                rows.append(_error_row(r, len(header)))
                continue
            rows.append(
                [
                    r["peer"],
                    f"{m['offered_msgs_per_s']:,}",
                    str(m["subscribers"]),
                    f"{m['achieved_msgs_per_s']:,.0f}",
                    _ms(m["p50_ms"]),
                    _ms(m["p99_ms"]),
                    _ms(m["p999_ms"]),
                    _ms(m["max_ms"]),
                    _lossless(m),
                    _ms(m["max_send_lag_ms"]),
                    _pct(m["server_cpu_pct"]),
                    _pct(m["generator_cpu_pct"]),
                    _pct(m.get("cpu_pressure_pct")),
                    _targets_cell(r),
                ]
            )
        out += ["## 2. Latency at fixed offered load (open loop)", "", _table(header, rows), ""]
        out += _latency_ratios(by["latency"])
    if by.get("storm"):
        header = [
            "peer",
            "clients",
            "mode",
            "ok",
            "failed",
            "p50 setup ms",
            "p99 setup ms",
            "connections/s",
            "server RSS MiB",
            "server CPU",
            "generator CPU",
            "cpu-wait",
            "seed target",
        ]
        rows = []
        for r in by["storm"]:
            m = r["metrics"]
            if m is None:
                rows.append(_error_row(r, len(header)))
                continue
            mode = "all at once" if m["wave"] is None else f"waves of {m['wave']}"
            failures = f"{m['failed']:,}" + (f" {m['failures']}" if m["failures"] else "")
            rows.append(
                [
                    r["peer"],
                    f"{m['clients']:,}",
                    mode,
                    f"{m['ok']:,}",
                    failures,
                    f"{m['setup_p50_ms']:.0f}",
                    f"{m['setup_p99_ms']:.0f}",
                    f"{m['connections_per_s']:,.0f}",
                    f"{m.get('server_rss_kib', 0) / 1024:.1f}",
                    _pct(m["server_cpu_pct"]),
                    _pct(m["generator_cpu_pct"]),
                    _pct(m.get("cpu_pressure_pct")),
                    _targets_cell(r),
                ]
            )
        out += ["## 3. Connection storm (connect + auth)", "", _table(header, rows), ""]
        out += _storm_ratios(by["storm"])
    if by.get("memory"):
        header = ["peer", "idle connections", "server RSS MiB", "KiB per connection", "seed target"]
        rows = []
        for r in by["memory"]:
            m = r["metrics"]
            if m is None:
                rows.append(_error_row(r, len(header)))
                continue
            for level in m["levels"]:
                per = level.get("kib_per_conn")
                rows.append(
                    [
                        r["peer"],
                        f"{level['connections']:,}",
                        f"{level['rss_kib'] / 1024:.1f}",
                        "—" if per is None else f"{per:.1f}",
                        _targets_cell(r) if level is m["levels"][-1] else "",
                    ]
                )
        out += ["## 4. Idle memory", "", _table(header, rows), ""]
        out += _memory_ratios(by["memory"])
    if by.get("durability"):
        header = ["log policy", *_FAN_OUT_HEADER, "vs live (no logs)", "seed target"]
        off = {
            r["params"]["subscribers"]: r["metrics"]
            for r in by["durability"]
            if r["params"]["log_policy"] == "live" and r["metrics"]
        }
        rows = []
        for r in by["durability"]:
            m = r["metrics"]
            if m is None:
                rows.append(
                    [r["params"]["log_policy"], f"ERROR: {r['error']}"]
                    + [""] * 9
                    + [_targets_cell(r)]
                )
                continue
            base = off.get(m["subscribers"])
            ratio = "—"
            if base and r["params"]["log_policy"] != "live" and base["deliveries_per_s"]:
                change = m["deliveries_per_s"] / base["deliveries_per_s"] - 1
                ratio = f"{change:+.0%} deliveries/s"
            rows.append([r["params"]["log_policy"], *_fan_out_cells(m), ratio, _targets_cell(r)])
        out += [
            "## 5. Durability cost (catsock: both logs, event log only, live relay with no logs)",
            "",
            _table(header, rows),
            "",
        ]
    if by.get("cluster"):
        out += cluster_markdown(by["cluster"])
    if by.get("soak"):
        out += soak_markdown(by["soak"])
    plots = run.get("plots") or []
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


def _headroom(records: list[dict[str, Any]]) -> list[str]:
    """Show the generator is not what limits catsock: at each S, the fastest peer was
    driven harder than catsock by the same generator on the same core."""
    lines = []
    by_s: dict[int, dict[str, dict[str, Any]]] = {}
    for r in records:
        if r["metrics"] is not None:
            by_s.setdefault(r["params"]["subscribers"], {})[r["peer"]] = r["metrics"]
    for s, peers in sorted(by_s.items()):
        cat = peers.get("catsock")
        if cat is None or len(peers) < 2:
            continue
        name, best = max(peers.items(), key=lambda kv: kv[1]["deliveries_per_s"])
        if name == "catsock":
            lines.append(
                f"- S={s:,}: catsock was the fastest ({cat['deliveries_per_s']:,.0f} deliveries/s, "
                f"generator CPU {cat['generator_cpu_pct']:.0f}%): no peer shows headroom here."
            )
            continue
        ratio = best["deliveries_per_s"] / max(cat["deliveries_per_s"], 1e-9)
        lines.append(
            f"- S={s:,}: the generator drove `{name}` at {best['deliveries_per_s']:,.0f} "
            f"deliveries/s ({ratio:.1f}× catsock's {cat['deliveries_per_s']:,.0f}), its own CPU "
            f"at {best['generator_cpu_pct']:.0f}% vs {cat['generator_cpu_pct']:.0f}% for catsock "
            f"(server CPU {best['server_cpu_pct']:.0f}% vs {cat['server_cpu_pct']:.0f}%)."
        )
    if not lines:
        return []
    return ["Generator headroom (the generator is not what limits catsock):", "", *lines, ""]


# -- plots ----------------------------------------------------------------------------


def _plots(run: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    records = run["records"]
    latency = [r for r in records if r["scenario"] == "latency" and r["metrics"]]
    latency = [r for r in latency if r["metrics"].get("cdf")]
    if latency:
        rates = sorted({r["params"]["rate"] for r in latency})
        fig, axes = plt.subplots(1, len(rates), figsize=(5.5 * len(rates), 4.2), squeeze=False)
        for ax, rate in zip(axes[0], rates, strict=True):
            for r in latency:
                if r["params"]["rate"] != rate:
                    continue
                cdf = np.array(r["metrics"]["cdf"])
                ms = np.maximum(cdf[:, 0], 1e-3)
                nines = -np.log10(np.maximum(1 - cdf[:, 1] / 100.0, 1e-4))
                m = r["metrics"]
                label = r["peer"] + ("" if m["lossless"] else " (not lossless)")
                if m.get("unsent"):
                    label += f" ({m['achieved_msgs_per_s']:,.0f} msg/s sent)"
                ax.plot(ms, nines, "-" if m["lossless"] else "--", label=label)
            ax.set_xscale("log")
            ax.set_yticks([0, 1, 2, 3, 4])
            ax.set_yticklabels(["0%", "90%", "99%", "99.9%", "99.99%"])
            ax.axvline(100, color="grey", linestyle=":", linewidth=1)
            ax.set_title(f"{rate:,} msg/s offered, S={r['params']['subscribers']}")
            ax.set_xlabel("publish → deliver latency (ms)")
            ax.set_ylabel("fraction of deliveries at or below")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Latency CDF (open loop; dotted line: seed target 100 ms)")
        fig.tight_layout()
        path = out_dir / "latency_cdf.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    throughput = [r for r in records if r["scenario"] == "throughput" and r["metrics"]]
    if throughput:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for peer in run["plan"]["peers"]:
            mine = sorted(
                (r for r in throughput if r["peer"] == peer),
                key=lambda r: r["params"]["subscribers"],
            )
            if not mine:
                continue
            xs = [r["params"]["subscribers"] for r in mine]
            ys = [r["metrics"]["deliveries_per_s"] for r in mine]
            (line,) = ax.plot(xs, ys, "-o", label=peer)
            lossy = [
                (x, y) for x, y, r in zip(xs, ys, mine, strict=True) if not r["metrics"]["lossless"]
            ]
            if lossy:
                ax.plot(*zip(*lossy, strict=True), "x", color=line.get_color(), markersize=12)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(10_000, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("subscribers S")
        ax.set_ylabel("deliveries / s")
        ax.set_title("Fan-out throughput (x: not lossless; dotted: 10,000 msg/s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    soak = soak_plot([r for r in records if r["scenario"] == "soak"], out_dir)
    if soak is not None:
        written.append(soak)
    return written


def write_report(run: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, the plots and results.md into ``out_dir``; returns their paths."""
    for record in run["records"]:
        record["targets"] = seed_targets(record)
    try:
        run["plots"] = _plots(run, out_dir)
    except ImportError as exc:  # matplotlib missing: the numbers still count
        run["plots"] = []
        run["plot_error"] = str(exc)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(run, indent=1, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(run) + "\n", encoding="utf-8")
    return paths
