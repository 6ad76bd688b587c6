"""The soak's report: the capacity step, a time-series table per load level, one
summary line per level against issue 19's targets, and ``soak.png``.

The targets (issue 19, "Done when") as checked here:

- **AFAD p99 ≤ 1 s throughout**: every window's AFAD p99 (load and drain) at most
  1 s, and no load window in which AFAD received nothing (a stall);
- **0 lost for AFAD**: every AFAD got every accepted event exactly once, in order,
  and is still connected;
- **/health and /metrics within 1 s every time**: no answer over 1 s, no timeout,
  no status other than 200;
- **RSS bounded**: the harness's reading, until the gateway documents its bound:
  the peak of the last third of the load no more than 1.25× the peak of the middle
  third (not growing), and above 1× load no more than 2× the peak at 1×;
- **dashboards shed with a close they receive**: every non-reading dashboard found
  the 4001 close frame in its socket when it finally read;
- at 1× (and below) also **everything delivered to everyone**: no reading dashboard
  missed an accepted event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "metric",
    "soak_checks",
    "soak_markdown",
    "soak_plot",
    "soak_summary",
]

GROWTH_LIMIT = 1.25
OVERLOAD_RSS_FACTOR = 2.0
NOISY_OTHERS_PCT = 10.0


def metric(values: dict[str, float], name: str) -> float | None:
    """A series of a /metrics answer: ``name`` or, for counters, ``name_total``."""
    for key in (name, f"{name}_total"):
        if key in values:
            return values[key]
    return None


def _ms(v: float | None) -> str:
    return "—" if v is None else (f"{v:,.0f}" if v >= 10 else f"{v:.1f}")


def _n(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def _load_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in m["windows"] if r["phase"] == "load"]


def _worst(rows: list[dict[str, Any]], path: tuple[str, str]) -> float | None:
    values = [r[path[0]][path[1]] for r in rows if r[path[0]][path[1]] is not None]
    return max(values) if values else None


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    return values[len(values) // 2] if values else None


def _thirds_growth(rows: list[dict[str, Any]]) -> float | None:
    peaks = [r["rss_peak_kib"] for r in rows]
    if len(peaks) < 3:
        return None
    third = len(peaks) // 3
    middle = max(peaks[third : 2 * third])
    last = max(peaks[2 * third :])
    return last / middle if middle else None


def _noise(rows: list[dict[str, Any]]) -> tuple[float, float]:
    others = [r["others_cpu_pct"] for r in rows]
    return (sum(others) / len(others), max(others)) if others else (0.0, 0.0)


def soak_checks(m: dict[str, Any], base_peak_kib: int | None = None) -> list[dict[str, Any]]:
    """Issue 19's targets for one load level (see the module docstring)."""
    rows = m["windows"]
    load_rows = _load_rows(m)
    checks = []
    worst_p99 = _worst(rows, ("afad", "p99_ms"))
    stalls = sum(
        1 for r in load_rows if r["afad"]["delivered_per_s"] == 0 and r["accepted_per_s"] > 0
    )
    checks.append(
        {
            "target": "AFAD p99 ≤ 1 s throughout",
            "pass": worst_p99 is not None and worst_p99 <= 1000 and not stalls,
            "detail": f"worst window p99 {_ms(worst_p99)} ms"
            + (f", {stalls} load windows with no AFAD delivery" if stalls else ""),
        }
    )
    checks.append(
        {
            "target": "0 lost for AFAD",
            "pass": bool(m["afad_exact"]) and m["afad_missing"] == 0,
            "detail": f"{m['afad_missing']:,} missing of {m['accepted']:,} accepted × "
            f"{len(m['afad_recipients'])}" + _afad_how(m["afad_recipients"]),
        }
    )
    probes = {
        name: {
            "worst": _worst(rows, (name, "worst_ms")),
            "timeouts": sum(r[name]["timeouts"] for r in rows),
            "not_ok": sum(r[name]["not_ok"] for r in rows),
            "over": sum(r[name]["over_1s"] for r in rows),
            "n": sum(r[name]["n"] for r in rows),
        }
        for name in ("health", "metrics")
    }
    checks.append(
        {
            "target": "/health and /metrics within 1 s every time",
            "pass": all(
                p["n"] > 0 and not p["timeouts"] and not p["not_ok"] and not p["over"]
                for p in probes.values()
            ),
            "detail": "; ".join(
                f"/{name} worst {_ms(p['worst'])} ms of {p['n']}, {p['over']} over 1 s, "
                f"{p['timeouts']} timeouts" + (f", {p['not_ok']} not 200" if p["not_ok"] else "")
                for name, p in probes.items()
            ),
        }
    )
    peak = max((r["rss_peak_kib"] for r in rows), default=0)
    growth = _thirds_growth(load_rows)
    ratio = None if not base_peak_kib or m["load"] <= 1 else peak / base_peak_kib
    rss_ok = (growth is None or growth <= GROWTH_LIMIT) and (
        ratio is None or ratio <= OVERLOAD_RSS_FACTOR
    )
    checks.append(
        {
            "target": "RSS bounded",
            "pass": rss_ok,
            "detail": f"peak {peak / 1024:,.0f} MiB (idle {m['idle_rss_kib'] / 1024:,.0f})"
            + ("" if growth is None else f", last third ÷ middle third {growth:.2f}")
            + ("" if ratio is None else f", {ratio:.2f}× the 1× peak"),
        }
    )
    idle = m["idle_dashboards"]
    got_close = idle["close_codes"].get("4001", 0)
    checks.append(
        {
            "target": "dashboards shed with a close they receive",
            "pass": idle["count"] > 0 and got_close == idle["count"],
            "detail": f"{got_close}/{idle['count']} non-reading dashboards read a 4001 close, "
            f"{idle['saw_slow_consumer']} the SLOW_CONSUMER error; ended by "
            + ", ".join(f"{k} {v}" for k, v in sorted(idle["ended_by"].items()))
            + _resumed(idle),
        }
    )
    if m["load"] <= 1:
        checks.append(
            {
                "target": "at 1× everything delivered to everyone",
                "pass": m["dashboard_missing"] == 0 and m["afad_missing"] == 0,
                "detail": f"reading dashboards missed {m['dashboard_missing']:,} of "
                f"{m['dashboard_expected']:,} deliveries; "
                f"{m['reading_dashboards_closed']} of them closed",
            }
        )
    return checks


def _resumed(idle: dict[str, Any]) -> str:
    resumed, shed = idle.get("resumed_at_s"), idle.get("shed_seen_at_s")
    if resumed is None:
        return ""
    if shed is None:
        return f"; they read again at {resumed:.0f} s, after the drain (never counted shed)"
    return f"; counted shed at {shed:.0f} s, they read again at {resumed:.0f} s"


def _afad_how(recipients: list[dict[str, Any]]) -> str:
    """What kind of loss: gaps, duplicates, a dropped connection, or only a tail
    not delivered before the drain limit."""
    if all(r["exact"] for r in recipients):
        return ""
    gaps = sum(r["gaps"] for r in recipients)
    dups = sum(r["duplicates_or_reordered"] for r in recipients)
    closed = sum(r["closed"] for r in recipients)
    if not gaps and not dups and not closed:
        return ", all in order: the rest not delivered before the drain limit"
    return (
        f" ({gaps:,} skipped, {dups:,} duplicated or out of order, "
        f"{closed} AFAD connections dropped)"
    )


def soak_summary(m: dict[str, Any]) -> str:
    """One line for the progress log."""
    if "steps" in m:
        last = m["steps"][-1]
        capacity = m["capacity_events_per_s"]
        return (
            f"capacity {'none' if capacity is None else f'{capacity:,.0f}'} events/s after "
            f"{len(m['steps'])} steps; last step {last['rate']:,.0f}/s "
            f"{'passed' if last['pass'] else 'failed'}, srv {last['server_cpu_pct']:.0f}% "
            f"gen {last['generator_cpu_pct']:.0f}% others {last['others_cpu_pct']:.0f}%"
        )
    checks = soak_checks(m)
    failed = [c["target"] for c in checks if not c["pass"]]
    return (
        f"{m['rate']:,.0f} events/s offered, {m['accepted']:,} accepted, AFAD missing "
        f"{m['afad_missing']:,}, dashboards missing {m['dashboard_missing']:,}; "
        + ("all targets met" if not failed else "missed: " + "; ".join(failed))
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_WINDOW_HEADER = [
    "t s",
    "phase",
    "offered /s",
    "accepted /s",
    "behind",
    "AFAD /s",
    "AFAD p50 ms",
    "AFAD p99 ms",
    "AFAD max ms",
    "dash /s",
    "dash p50 ms",
    "dash p99 ms",
    "dash max ms",
    "reader lag p90 ms",
    "RSS MiB (peak)",
    "srv CPU",
    "gen CPU",
    "others CPU",
    "/health ms",
    "/metrics ms",
    "queued frames",
    "dropped",
    "4001 closes",
    "catch-ups",
    "dash open",
]


def _probe_cell(p: dict[str, Any]) -> str:
    cell = _ms(p["worst_ms"])
    if p["timeouts"]:
        cell += f" ({p['timeouts']} timeout{'s' if p['timeouts'] > 1 else ''})"
    if p["not_ok"]:
        cell += f" ({p['not_ok']} not 200)"
    return cell


def window_cells(r: dict[str, Any]) -> list[str]:
    sm = r["server_metrics"]
    return [
        f"{r['t']:.0f}",
        r["phase"],
        _n(r["offered_per_s"]),
        _n(r["accepted_per_s"]),
        _n(r["behind"]),
        _n(r["afad"]["delivered_per_s"]),
        _ms(r["afad"]["p50_ms"]),
        _ms(r["afad"]["p99_ms"]),
        _ms(r["afad"]["max_ms"]),
        _n(r["dashboards"]["delivered_per_s"]),
        _ms(r["dashboards"]["p50_ms"]),
        _ms(r["dashboards"]["p99_ms"]),
        _ms(r["dashboards"]["max_ms"]),
        _ms(r["dashboards"].get("reader_lag_ms")),
        f"{r['rss_kib'] / 1024:,.0f} ({r['rss_peak_kib'] / 1024:,.0f})",
        f"{r['server_cpu_pct']:.0f}%",
        f"{r['generator_cpu_pct']:.0f}%",
        f"{r['others_cpu_pct']:.0f}%",
        _probe_cell(r["health"]),
        _probe_cell(r["metrics"]),
        _n(metric(sm, "catsock_send_queue_frames")),
        _n(metric(sm, "catsock_events_dropped")),
        _n(metric(sm, "catsock_slow_consumer_disconnects")),
        _n(metric(sm, "catsock_events_catchups")),
        str(r["dashboards_open"]),
    ]


def _capacity_lines(record: dict[str, Any]) -> list[str]:
    m = record["metrics"]
    if m is None:
        return [f"Capacity ramp: ERROR: {record['error']}", ""]
    capacity = m["capacity_events_per_s"]
    header = [
        "offered /s",
        "written /s",
        "settled in s",
        "AFAD p50 ms",
        "AFAD p99 ms",
        "dash p50 ms",
        "dash p99 ms",
        "reader lag p90 ms",
        "srv CPU",
        "gen CPU",
        "others CPU",
        "pass",
    ]
    rows = [
        [
            f"{s['rate']:,.0f}"
            + (" (refined)" if s.get("refinement") else "")
            + (" (warm-up)" if s.get("warmup") else "")
            + (f" (hold {s['seconds']:.0f} s)" if s.get("hold") else ""),
            f"{s['written_per_s']:,.0f}",
            f"{s['settle_s']:.2f}",
            _ms(s["afad_latency"]["p50_ms"]),
            _ms(s["afad_latency"]["p99_ms"]),
            _ms(s["dashboard_latency"]["p50_ms"]),
            _ms(s["dashboard_latency"]["p99_ms"]),
            _ms(s["dashboard_latency"].get("reader_lag_ms")),
            f"{s['server_cpu_pct']:.0f}%",
            f"{s['generator_cpu_pct']:.0f}%",
            f"{s['others_cpu_pct']:.0f}%",
            ("—" if s.get("warmup") else "yes" if s["pass"] else "no")
            + (f" ({s['reading_dashboards_cut']} cut)" if s["reading_dashboards_cut"] else ""),
        ]
        for s in m["steps"]
    ]
    return [
        "**Capacity: "
        + ("none found" if capacity is None else f"{capacity:,.0f} events/s")
        + ("" if m.get("capacity_held", True) else " (no hold passed: the lowest rate tried)")
        + "** — the highest rate of an open-loop ramp (after one warm-up step), held "
        "longer at the end, at which the publishers kept their schedule, every event "
        "reached every AFAD and reading dashboard within the step plus its settling "
        "time, none was cut off, both classes' p99 stayed under "
        f"{m['p99_limit_ms']:,.0f} ms"
        + (
            f" and the dashboards' process ran at most {m['reader_lag_limit_ms']:,.0f} ms"
            " late at its 90th percentile (past that the harness, not the gateway, is"
            " what cannot keep up)"
            if m.get("reader_lag_limit_ms") is not None
            else ""
        )
        + ":",
        "",
        _table(header, rows),
        "",
    ]


def _base_peak(records: list[dict[str, Any]]) -> int | None:
    for r in records:
        m = r["metrics"]
        if m is not None and "windows" in m and m["load"] == 1:
            return max((w["rss_peak_kib"] for w in m["windows"]), default=None)
    return None


def soak_markdown(records: list[dict[str, Any]]) -> list[str]:
    """The soak section of results.md."""
    out = ["## Soak (issue 19)", ""]
    levels = [r for r in records if "load" in r["params"]]
    first = next((r["metrics"] for r in levels if r["metrics"]), None)
    if first is not None:
        p = first["plan"]
        out += [
            f"{p['dashboards']:,} DASHBOARD connections ({p['idle_dashboards']} never reading), "
            f"{p['afad']} AFAD recipients (one durable identity each), {p['publishers']} CATS "
            f"publishers with acks; {p['duration']:.0f} s per load level, one row per "
            f"{p['window']:g} s window; /health and /metrics every {p['probe_every']:g} s "
            f"({p['probe_limit']:g} s timeout). Latency runs from the publisher's write to "
            "the recipient's read; dashboard latencies are sampled (one frame per read, "
            "weighted by the read's frames; max from each read's oldest frame). 'behind': "
            "events the schedule had due that the publishers had not written yet. 'reader "
            "lag': how late the dashboards' own process ran, 90th percentile (its event "
            "loop, which reads every dashboard; what it holds back waits in kernel "
            "buffers, not in catsock). Counters (dropped, 4001 closes, catch-ups) are the "
            "gateway's, cumulative.",
            "",
        ]
    for r in records:
        if r["params"].get("phase") == "capacity":
            out += _capacity_lines(r)
    base = _base_peak(records)
    summaries = []
    for r in levels:
        load = r["params"]["load"]
        m = r["metrics"]
        if m is None:
            summaries.append(f"- **{load:g}×**: ERROR: {r['error']}")
            continue
        checks = soak_checks(m, base)
        rows = _load_rows(m)
        mean_others, max_others = _noise(rows)
        afad_p50 = _median([w["afad"]["p50_ms"] for w in rows if w["afad"]["p50_ms"] is not None])
        noisy = mean_others > NOISY_OTHERS_PCT
        summaries.append(
            f"- **{load:g}×** ({m['rate']:,.0f} events/s offered; {m['sent']:,} written, "
            f"{m['accepted']:,} accepted, {m['unsent']:,} unsent; AFAD p50 median of windows "
            f"{_ms(afad_p50)} ms; drain {m['drain_s']:.0f} s; other processes "
            f"{mean_others:.0f}% of a core on average, {max_others:.0f}% at most"
            + (" — **noisy**" if noisy else "")
            + "): "
            + "; ".join(
                f"{'PASS' if c['pass'] else 'FAIL'} {c['target']} ({c['detail']})" for c in checks
            )
        )
    out += ["Against issue 19's targets:", "", *summaries, ""]
    for r in levels:
        m = r["metrics"]
        if m is None:
            continue
        out += [
            f"### {r['params']['load']:g}× capacity: {m['rate']:,.0f} events/s",
            "",
            _table(_WINDOW_HEADER, [window_cells(w) for w in m["windows"]]),
            "",
        ]
        db = m.get("database") or {}
        if db and "error" not in db:
            codes = {k: v for k, v in db["dashboard_close_codes"].items() if k != "none"}
            cursors = sorted(set(db["afad_cursors"].values()))
            out += [
                f"Database after the run: dashboard close codes recorded {codes or 'none'} "
                "(the rest have none: the harness resets its connections at the end); "
                f"newest seq {db['head_seq']:,}; AFAD cursors on `type:AFAD` "
                + (
                    f"at {', '.join(f'{c:,}' for c in cursors)}"
                    if cursors
                    else "not stored (no row)"
                )
                + f"; {db['ledger_dropped_events']:,} dropped events in the ledger. Reading "
                f"dashboards closed by the server: {m['reading_dashboards_closed']} "
                f"(close codes they read: {m['reading_close_codes'] or 'none'}).",
                "",
            ]
        log = m.get("server_log")
        if log is not None:
            out += [
                f"catsock's log: {log['tracebacks']} tracebacks, {log['other_lines']} lines "
                "besides its start and stop"
                + (": " + " / ".join(f"`{x}`" for x in log["samples"]) if log["samples"] else "")
                + ".",
                "",
            ]
        if m["publisher_error_samples"]:
            out += ["Publisher errors: " + "; ".join(m["publisher_error_samples"]), ""]
    return out


def soak_plot(records: list[dict[str, Any]], out_dir: Path) -> str | None:
    """``soak.png``: RSS, AFAD p99, dashboard p99, /health and /metrics over time."""
    levels = [r for r in records if "load" in r["params"] and r["metrics"]]
    if not levels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    for r in levels:
        m = r["metrics"]
        rows = m["windows"]
        t = [w["t"] for w in rows]
        label = f"{r['params']['load']:g}× ({m['rate']:,.0f} events/s)"
        (line,) = axes[0].plot(t, [w["rss_peak_kib"] / 1024 for w in rows], label=label)
        color = line.get_color()
        for ax, key in ((axes[1], "afad"), (axes[2], "dashboards")):
            ax.plot(t, [w[key]["p99_ms"] for w in rows], color=color, label=label)
        for name, style in (("health", "-"), ("metrics", "--")):
            axes[3].plot(
                t,
                [w[name]["worst_ms"] for w in rows],
                style,
                color=color,
                label=f"/{name} {label}",
            )
            timeouts = [(w["t"], 5000) for w in rows if w[name]["timeouts"]]
            if timeouts:
                axes[3].plot(*zip(*timeouts, strict=True), "x", color=color, markersize=9)
        load_end = max((w["t"] for w in rows if w["phase"] == "load"), default=None)
        if load_end is not None:
            for ax in axes:
                ax.axvline(load_end, color=color, linestyle=":", linewidth=1)
    axes[0].set_ylabel("server RSS MiB (peak)")
    axes[1].set_ylabel("AFAD p99 ms")
    axes[2].set_ylabel("dashboard p99 ms")
    axes[3].set_ylabel("worst answer ms")
    for ax in axes[1:]:
        ax.set_yscale("log")
        ax.axhline(1000, color="grey", linestyle=":", linewidth=1)
    axes[3].set_xlabel("seconds since the load started (dotted: load ends, drain follows)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("catsock soak (grey: 1 s target; x: a 5 s timeout)")
    fig.tight_layout()
    path = out_dir / "soak.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
