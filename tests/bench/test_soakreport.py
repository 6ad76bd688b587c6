"""The soak's report (bench/soakreport.py): issue 19's checks and the markdown,
from hand-made records."""

from __future__ import annotations

from typing import Any

from bench.soakreport import soak_checks, soak_markdown


def _probe(worst_ms: float, timeouts: int = 0) -> dict[str, Any]:
    return {
        "n": 2,
        "worst_ms": worst_ms,
        "median_ms": worst_ms / 2,
        "timeouts": timeouts,
        "not_ok": 0,
        "over_1s": int(worst_ms > 1000),
    }


def _window(
    t: float,
    *,
    afad_p99: float | None = 20.0,
    afad_rate: float = 1000.0,
    rss_mib: float = 100.0,
    health_ms: float = 5.0,
    timeouts: int = 0,
    phase: str = "load",
) -> dict[str, Any]:
    latency = {"samples": 10, "p50_ms": 2.0, "p99_ms": afad_p99, "max_ms": afad_p99}
    return {
        "t": t,
        "phase": phase,
        "wall_s": 10.0,
        "offered_per_s": 100.0,
        "sent_per_s": 100.0,
        "accepted_per_s": 100.0,
        "refused": 0,
        "behind": 0,
        "max_send_lag_ms": 1.0,
        "afad": {"delivered_per_s": afad_rate, **latency},
        "dashboards": {"delivered_per_s": 99_000.0, **latency},
        "rss_kib": int(rss_mib * 1024),
        "rss_peak_kib": int(rss_mib * 1024),
        "server_cpu_pct": 90.0,
        "generator_cpu_pct": 60.0,
        "others_cpu_pct": 1.0,
        "cpu_pressure_pct": 5.0,
        "health": _probe(health_ms, timeouts),
        "metrics": _probe(health_ms),
        "server_metrics": {
            "catsock_send_queue_frames": 12.0,
            "catsock_events_dropped_total": 3.0,
            "catsock_slow_consumer_disconnects_total": 10.0,
        },
        "dashboards_open": 990,
    }


def _level(load: float, windows: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    afad = {
        "received": 1000,
        "missing": 0,
        "gaps": 0,
        "tail_only": True,
        "duplicates_or_reordered": 0,
        "other_frames": 0,
        "closed": False,
        "exact": True,
    }
    metrics: dict[str, Any] = {
        "load": load,
        "rate": 100.0 * load,
        "capacity_events_per_s": 100.0,
        "per_publisher_rate": 50.0 * load,
        "idle_rss_kib": 60 * 1024,
        "drain_s": 0.5,
        "windows": windows,
        "idle_dashboards": {
            "count": 10,
            "closed": 10,
            "saw_slow_consumer": 10,
            "close_codes": {"4001": 10},
            "ended_by": {"eof": 10},
            "events_read_after": 100,
            "events_read": 100,
        },
        "sent": 1000,
        "accepted": 1000,
        "duplicates_answered": 0,
        "refused": 0,
        "unanswered": 0,
        "unsent": 0,
        "publisher_error_samples": [],
        "afad_recipients": [afad] * 10,
        "afad_missing": 0,
        "afad_exact": True,
        "dashboards_reading": 990,
        "dashboard_expected": 990_000,
        "dashboard_delivered": 990_000,
        "dashboard_missing": 0,
        "reading_dashboards_closed": 0,
        "reading_close_codes": {},
        "reading_saw_slow_consumer": 0,
        "plan": {
            "dashboards": 1000,
            "idle_dashboards": 10,
            "afad": 10,
            "publishers": 2,
            "duration": 60.0,
            "window": 10.0,
            "probe_every": 2.0,
            "probe_limit": 5.0,
        },
    }
    metrics.update(changes)
    return {"scenario": "soak", "peer": "catsock", "params": {"load": load}, "metrics": metrics}


def _passed(checks: list[dict[str, Any]]) -> dict[str, bool]:
    return {c["target"]: c["pass"] for c in checks}


def test_a_good_level_meets_every_target() -> None:
    record = _level(1.0, [_window(10.0 * i) for i in range(1, 7)])
    checks = _passed(soak_checks(record["metrics"]))
    assert all(checks.values()), checks
    assert "at 1× everything delivered to everyone" in checks


def test_stalls_slow_answers_growth_and_lost_closes_fail() -> None:
    windows = [_window(10.0 * i, rss_mib=100.0 * i) for i in range(1, 7)]
    windows[2] = _window(30.0, afad_p99=None, afad_rate=0.0, health_ms=5000.0, timeouts=1)
    idle = {
        "count": 10,
        "closed": 10,
        "saw_slow_consumer": 0,
        "close_codes": {"None": 10},
        "ended_by": {"reset": 10},
        "events_read_after": 0,
        "events_read": 0,
    }
    record = _level(2.0, windows, idle_dashboards=idle)
    checks = _passed(soak_checks(record["metrics"], base_peak_kib=100 * 1024))
    assert checks == {
        "AFAD p99 ≤ 1 s throughout": False,
        "0 lost for AFAD": True,
        "/health and /metrics within 1 s every time": False,
        "RSS bounded": False,
        "dashboards shed with a close they receive": False,
    }


def test_missing_afad_events_say_whether_they_were_lost_or_late() -> None:
    late = dict(_level(1.0, [])["metrics"]["afad_recipients"][0], missing=5, exact=False)
    lost = dict(late, gaps=5, tail_only=False)
    windows = [_window(10.0)]
    for recipients, words in (
        ([late], "not delivered before the drain limit"),
        ([lost], "5 skipped"),
    ):
        record = _level(1.0, windows, afad_recipients=recipients, afad_missing=5, afad_exact=False)
        check = soak_checks(record["metrics"])[1]
        assert not check["pass"]
        assert words in check["detail"]


def test_markdown_has_a_table_per_level_and_a_line_per_target() -> None:
    capacity = {
        "scenario": "soak",
        "peer": "catsock",
        "params": {"phase": "capacity"},
        "metrics": {
            "capacity_events_per_s": 100.0,
            "first_failed_events_per_s": 125.0,
            "p99_limit_ms": 250.0,
            "reader_lag_limit_ms": 200.0,
            "steps": [
                {
                    "rate": 100.0,
                    "written_per_s": 100.0,
                    "settle_s": 0.1,
                    "reading_dashboards_cut": 0,
                    "afad_latency": {"p50_ms": 2.0, "p99_ms": 9.0},
                    "dashboard_latency": {"p50_ms": 30.0, "p99_ms": 80.0, "reader_lag_ms": 42.0},
                    "pass": True,
                    "server_cpu_pct": 50.0,
                    "generator_cpu_pct": 40.0,
                    "others_cpu_pct": 0.0,
                }
            ],
        },
        "error": None,
    }
    levels = [_level(1.0, [_window(10.0), _window(20.0, phase="drain")])]
    levels.append(
        {"scenario": "soak", "peer": "catsock", "params": {"load": 2.0}, "metrics": None,
         "error": "server died"}
    )  # fmt: skip
    markdown = "\n".join(soak_markdown([capacity, *levels]))
    assert "**Capacity: 100 events/s**" in markdown
    assert "ran at most 200 ms late at its 90th percentile" in markdown
    assert "| 100 | 100 | 0.10 | 2.0 | 9.0 | 30 | 80 | 42 | 50% |" in markdown
    assert "### 1× capacity: 100 events/s" in markdown
    assert "- **2×**: ERROR: server died" in markdown
    assert "PASS AFAD p99 ≤ 1 s throughout" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| 20 | drain |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[-5:] == ["12", "3", "10", "—", "990"]
