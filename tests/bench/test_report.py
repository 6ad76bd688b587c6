"""The report's catsock ÷ reference-peer tables, rendered from hand-made records."""

from __future__ import annotations

from typing import Any

from bench.report import to_markdown


def _throughput(
    peer: str, s: int, rate: float, cpu: float, lossless: bool = True
) -> dict[str, Any]:
    return {
        "scenario": "throughput",
        "peer": peer,
        "params": {"publishers": 4, "subscribers": s},
        "metrics": {
            "publishers": 4,
            "subscribers": s,
            "msgs_per_s": rate / s,
            "deliveries_per_s": rate,
            "lossless": lossless,
            "lost": 0 if lossless else 5,
            "gaps": 0 if lossless else 5,
            "duplicates": 0,
            "subscribers_closed": 0,
            "server_cpu_pct": cpu,
            "generator_cpu_pct": 50.0,
        },
        "error": None,
        "targets": [],
    }


def _memory(peer: str, per_conn: float) -> dict[str, Any]:
    return {
        "scenario": "memory",
        "peer": peer,
        "params": {"levels": [0, 1000]},
        "metrics": {
            "levels": [
                {"connections": 0, "rss_kib": 20_000},
                {
                    "connections": 1000,
                    "rss_kib": 20_000 + per_conn * 1000,
                    "kib_per_conn": per_conn,
                },
            ]
        },
        "error": None,
        "targets": [],
    }


def _run(records: list[dict[str, Any]], peers: list[str]) -> dict[str, Any]:
    return {
        "started": "2026-01-01T00:00:00+00:00",
        "command": "python -m bench",
        "machine": {
            "cpu_model": "test",
            "nproc": 2,
            "memory_total": "1 kB",
            "kernel": "k",
            "os": "os",
            "python": "3.11",
            "node": None,
            "loadavg": ["0", "0", "0"],
            "versions": {},
        },
        "pinning": "off",
        "plan": {"peers": peers, "scenarios": ["throughput", "memory"], "quick": False},
        "records": records,
    }


def _rows(markdown: str, first_cell: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith(f"| {first_cell} |")
    ]


def test_ratios_against_both_references() -> None:
    records = [
        _throughput("catsock", 10, 100_000, 100.0),
        _throughput("trio-wsproto", 10, 400_000, 50.0),
        _throughput("websockets", 10, 125_000, 100.0),
        _memory("catsock", 30.0),
        _memory("trio-wsproto", 15.0),
        _memory("websockets", 20.0),
    ]
    markdown = to_markdown(_run(records, ["catsock", "trio-wsproto", "websockets"]))
    assert "deliveries/s ÷ trio-wsproto" in markdown
    # P, S, catsock deliveries/s, ÷ trio-wsproto, ÷ websockets, catsock per CPU-s, ÷, ÷
    assert ["4", "10", "100,000", "0.25×", "0.80×", "100,000", "0.12×", "0.80×"] in _rows(
        markdown, "4"
    )
    assert ["1,000", "30.0", "2.00×", "1.50×"] in _rows(markdown, "1,000")
    assert "†" not in markdown


def test_absent_peer_shows_a_dash_and_loss_is_marked() -> None:
    records = [
        _throughput("catsock", 1, 10_000, 100.0),
        _throughput("websockets", 1, 50_000, 100.0, lossless=False),
        {
            "scenario": "throughput",
            "peer": "catsock",
            "params": {"publishers": 4, "subscribers": 100},
            "metrics": None,
            "error": "server died",
            "targets": [],
        },
        _throughput("websockets", 100, 150_000, 100.0),
    ]
    run = _run(records, ["catsock", "websockets"])
    run["plan"]["scenarios"] = ["throughput"]
    markdown = to_markdown(run)
    rows = _rows(markdown, "4")
    assert ["4", "1", "10,000", "—", "0.20× †", "10,000", "—", "0.20× †"] in rows
    assert ["4", "100", "ERROR", "—", "—", "ERROR", "—", "—"] in rows
    assert "† catsock or the peer was not lossless" in markdown
