"""``python -m bench --quick --scenarios soak``: the soak of issue 19, reduced
(100 dashboards, 3 AFADs, a capacity ramp, 10 s per load level), end to end.

Like test_quick.py it asserts what must hold on any machine — every step ran, the
durable recipients got nothing twice and nothing out of order, the report and the
plot were written — never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

REPO_ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip(
    "matplotlib", reason="the bench extra is not installed (pip install -e '.[bench]')"
)


@pytest.fixture(scope="module")
def soak_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("soak")

    async def run() -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(240):
            return await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "bench",
                    "--quick",
                    "--scenarios",
                    "soak",
                    "--out",
                    str(out),
                ],
                cwd=REPO_ROOT,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    result = trio.run(run)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    data = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    markdown = (run_dir / "results.md").read_text(encoding="utf-8")
    return data, markdown, run_dir


def test_capacity_then_each_load_level(soak_run: tuple[dict[str, Any], str, Path]) -> None:
    data, _, _ = soak_run
    records = data["records"]
    assert [r["params"] for r in records] == [{"phase": "capacity"}, {"load": 1.0}, {"load": 2.0}]
    assert not [(r["params"], r["error"]) for r in records if r["error"]]
    capacity = records[0]["metrics"]
    assert capacity["capacity_events_per_s"] > 0
    holds = [s for s in capacity["steps"] if s.get("hold")]
    assert holds
    # The rate that held, or (a machine too busy for any) the lowest one tried.
    assert holds[-1]["pass"] == capacity["capacity_held"]
    assert holds[-1]["rate"] == capacity["capacity_events_per_s"]
    for record in records[1:]:
        metrics = record["metrics"]
        assert metrics["windows"]
        # A drain shorter than a window ends inside the last load row.
        assert "load" in {w["phase"] for w in metrics["windows"]} <= {"load", "drain"}
        assert metrics["idle_dashboards"]["count"] == 5
        assert metrics["dashboards_reading"] == 95


def test_afad_never_sees_an_event_twice_or_out_of_order(
    soak_run: tuple[dict[str, Any], str, Path],
) -> None:
    data, _, _ = soak_run
    for record in data["records"][1:]:
        for afad in record["metrics"]["afad_recipients"]:
            assert afad["gaps"] == 0, record["params"]
            assert afad["duplicates_or_reordered"] == 0, record["params"]


def test_the_gateway_answered_metrics(soak_run: tuple[dict[str, Any], str, Path]) -> None:
    data, _, _ = soak_run
    metrics = data["records"][1]["metrics"]
    # Counted when taken in, before the commit: at least every event acked as accepted.
    assert metrics["final_metrics"]["catsock_published_total"] >= metrics["accepted"]


def test_report_and_plot(soak_run: tuple[dict[str, Any], str, Path]) -> None:
    _, markdown, run_dir = soak_run
    assert "## Soak (issue 19)" in markdown
    assert "**Capacity: " in markdown
    for level in ("1×", "2×"):
        assert f"### {level} capacity" in markdown
        assert f"- **{level}** (" in markdown
    assert "AFAD p99 ≤ 1 s throughout" in markdown
    assert (run_dir / "soak.png").stat().st_size > 0
