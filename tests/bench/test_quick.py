"""``python -m bench --quick --out DIR`` runs every scenario and writes JSON and markdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {"throughput", "latency", "storm", "memory", "durability"}

pytest.importorskip(
    "matplotlib", reason="the bench extra is not installed (pip install -e '.[bench]')"
)
pytest.importorskip(
    "websockets", reason="the bench extra is not installed (pip install -e '.[bench]')"
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("bench")

    async def run() -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(180):
            return await trio.run_process(
                [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                cwd=REPO_ROOT,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    result = trio.run(run)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, stderr
    run_dir = runs[0]
    data = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    markdown = (run_dir / "results.md").read_text(encoding="utf-8")
    return data, markdown, run_dir


def test_every_scenario_ran_without_errors(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    data, _, _ = quick_run
    records = data["records"]
    assert {r["scenario"] for r in records} == SCENARIOS
    errors = [(r["scenario"], r["peer"], r["error"]) for r in records if r["error"]]
    assert not errors
    peers = {r["peer"] for r in records}
    assert "catsock" in peers
    assert len(peers) >= 2, "quick runs catsock and at least one peer"


def test_catsock_is_lossless_at_quick_loads(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    data, _, _ = quick_run
    checked = 0
    for record in data["records"]:
        if record["peer"] == "catsock" and record["scenario"] in (
            "throughput",
            "latency",
            "durability",
        ):
            metrics = record["metrics"]
            assert metrics["lossless"], record
            assert metrics["delivered"] == metrics["expected_deliveries"] > 0
            checked += 1
        if record["peer"] == "catsock" and record["scenario"] == "storm":
            assert record["metrics"]["failed"] == 0, record
    assert checked >= 3


def test_the_reference_relay_is_lossless(quick_run: tuple[dict[str, Any], str, Path]) -> None:
    data, markdown, _ = quick_run
    steps = [
        r
        for r in data["records"]
        if r["peer"] == "trio-wsproto" and r["scenario"] in ("throughput", "latency")
    ]
    assert steps, "the quick run includes the trio + wsproto reference relay"
    for record in steps:
        assert record["metrics"]["lossless"], record
    assert "÷ trio-wsproto" in markdown


def test_reports_carry_machine_and_seed_targets(
    quick_run: tuple[dict[str, Any], str, Path],
) -> None:
    data, markdown, run_dir = quick_run
    machine = data["machine"]
    for key in ("cpu_model", "nproc", "memory_total", "kernel", "python"):
        assert machine[key]
    assert "seed target" in markdown
    for heading in (
        "Fan-out throughput",
        "Latency",
        "Connection storm",
        "Idle memory",
        "Durability",
    ):
        assert heading in markdown
    assert any(r["targets"] for r in data["records"])
    for plot in data["plots"]:
        assert (run_dir / Path(plot).name).stat().st_size > 0
