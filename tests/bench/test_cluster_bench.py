"""``python -m bench --quick --scenarios cluster``: catsock embedded, one node over a
real redis-server, and ``serve --workers 2``, with what Redis did per event."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.cluster.redisserver import MISSING

REPO_ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip(
    "matplotlib", reason="the bench extra is not installed (pip install -e '.[bench]')"
)
pytest.importorskip(
    "coredis", reason="the cluster extra is not installed: pip install -e '.[cluster]'"
)
if shutil.which("redis-server") is None:
    pytest.skip(MISSING, allow_module_level=True)


def test_the_cluster_scenario_measures_three_modes_and_redis_per_event(tmp_path: Path) -> None:
    async def run() -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(240):
            return await trio.run_process(
                [sys.executable, "-m", "bench", "--quick", "--scenarios", "cluster",
                 "--out", str(tmp_path)],
                cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip

    result = trio.run(run)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    records = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))["records"]
    assert [r["params"]["mode"] for r in records] == ["embedded", "cluster", "workers-2"]
    assert [r["error"] for r in records] == [None] * 3, stderr
    for r in records:
        assert r["metrics"]["lossless"], r
    assert "redis" not in records[0]["metrics"]  # embedded: no Redis
    for r in records[1:]:
        redis = r["metrics"]["redis"]
        # Every event goes through Redis: at least the script that stores it.
        assert redis["commands_per_event"] > 0.0
        assert redis["bytes_in_per_event"] > 100  # the event's body, at least
    markdown = (run_dir / "results.md").read_text(encoding="utf-8")
    assert "## 6. Cluster mode" in markdown
