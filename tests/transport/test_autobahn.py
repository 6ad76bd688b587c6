"""The Autobahn|TestSuite server cases against catsock's transport, run by kosoku.

``tests/transport/autobahn_echo.py`` (the gateway's connection loop on
``catsock.transport``, echoing) runs in a subprocess on a free port; kosoku's fuzzing
client drives every server case there except 12.* and 13.* (permessage-deflate,
which catsock never offers). No case may end in anything but OK, NON-STRICT or
INFORMATIONAL (kosoku's ``passed``); the failures are listed with their descriptions.

The whole selection (301 cases) takes about 13 s, so it is what CI runs. Set
``CATSOCK_AUTOBAHN=quick`` for a subset that still covers sections 1-7 and 10 in
full and one case of each 9.x group. The Autobahn reports (JSON and HTML per case,
``index.html``) go to the test's tmp dir, or to ``CATSOCK_AUTOBAHN_REPORTS`` if set.

By hand: ``python -m tests.transport.autobahn_echo --port 9001`` in one shell,
``kosoku 127.0.0.1:9001 -x '12.*' -x '13.*' -o reports/servers`` in another.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

kosoku = pytest.importorskip(
    "kosoku",
    reason="kosoku is not installed (pip install -e '.[dev]'): the Autobahn|TestSuite "
    "cases cannot run",
)

ROOT = Path(__file__).resolve().parents[2]
#: permessage-deflate is never offered, so its sections do not apply.
EXCLUDE = ["12.*", "13.*"]
#: ``CATSOCK_AUTOBAHN=quick``: sections 1-7 and 10 whole, one case per 9.x group.
QUICK = [
    *(f"{section}.*" for section in (1, 2, 3, 4, 5, 6, 7, 10)),
    "9.1.1",
    "9.2.1",
    "9.3.9",
    "9.4.9",
    "9.5.6",
    "9.6.6",
    "9.7.1",
    "9.8.1",
]
#: The verdicts that pass, best first: NON-STRICT is a SHOULD not followed,
#: INFORMATIONAL a case whose outcome the spec leaves open. Anything else fails.
RANK = {"OK": 0, "NON-STRICT": 1, "INFORMATIONAL": 2}
STARTUP_TIMEOUT = 30.0
RUN_TIMEOUT = 600.0


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[str]:
    """``ws://127.0.0.1:PORT`` of the echo server, in a subprocess of its own."""
    log = tmp_path / "echo-server.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.transport.autobahn_echo", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    try:
        line = _first_line(proc, STARTUP_TIMEOUT)
        assert line.startswith("listening on ws://"), (line, log.read_text())
        yield line.removeprefix("listening on ").strip()
        assert proc.poll() is None, f"the echo server died:\n{log.read_text()}"
        problems = log.read_text()
        assert not problems, f"the echo server wrote to stderr:\n{problems}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                pytest.fail(f"the echo server did not start within {timeout} s")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                pytest.fail(f"the echo server exited (code {proc.wait()}) before listening")
            data += chunk
    return data.decode()


async def _run_cases(url: str, cases: list[str] | None) -> list[Any]:
    """kosoku's results for ``cases`` (None: all but EXCLUDE), one connection at a time."""
    results: list[Any]
    try:
        results = await asyncio.wait_for(
            kosoku.run_fuzzingclient(url, cases=cases, exclude_cases=EXCLUDE, concurrency=1),
            RUN_TIMEOUT,
        )
    except kosoku.FailureError as failure:
        results = failure.results  # every case's result, not only the failures'
    return results


def _section(case_id: str) -> int:
    return int(case_id.split(".", 1)[0])


def _summary(results: list[Any], seconds: float) -> str:
    """Counts per section and verdict, then every case that was not plain OK."""
    counts: Counter[tuple[int, str]] = Counter()
    for r in results:
        counts[_section(r.case_id), _verdict(r)] += 1
    lines = [f"{len(results)} cases in {seconds:.1f} s"]
    for section in sorted({s for s, _ in counts}):
        row = ", ".join(f"{v} {n}" for (s, v), n in sorted(counts.items()) if s == section)
        lines.append(f"  {section}.*: {row}")
    for r in results:
        if _verdict(r) != "OK":
            lines.append(f"  {r.case_id} {_verdict(r)}: {r.result} / {r.result_close}")
    return "\n".join(lines)


def _verdict(result: Any) -> str:
    """One word per case: the worse of its message and closing verdicts."""
    verdicts = (result.behavior.value, result.behavior_close.value)
    return str(max(verdicts, key=lambda v: RANK.get(v, len(RANK))))


def _write_reports(results: list[Any], outdir: Path) -> None:
    try:
        from kosoku._report import write_reports  # not public: reports are a bonus
    except ImportError:
        return
    write_reports(results, str(outdir))


def test_autobahn_server_cases(echo_server: str, tmp_path: Path) -> None:
    quick = os.environ.get("CATSOCK_AUTOBAHN", "full") == "quick"
    started = time.monotonic()
    results = asyncio.run(_run_cases(echo_server, QUICK if quick else None))
    seconds = time.monotonic() - started
    reports = Path(os.environ.get("CATSOCK_AUTOBAHN_REPORTS") or tmp_path / "autobahn")
    _write_reports(results, reports)
    summary = _summary(results, seconds)
    (reports / "summary.txt").parent.mkdir(parents=True, exist_ok=True)
    (reports / "summary.txt").write_text(summary + "\n")
    print(summary)

    sections = {_section(r.case_id) for r in results}
    assert {1, 2, 3, 4, 5, 6, 7, 9, 10} <= sections, sorted(sections)
    assert not sections & {12, 13}
    if not quick:
        assert len(results) >= 300, len(results)
    failed = [r for r in results if not r.passed]
    assert not failed, (
        f"{len(failed)} Autobahn case(s) failed (reports in {reports}):\n"
        + "\n".join(
            f"  {r.case_id} [{r.behavior.value} / {r.behavior_close.value}] "
            f"{' '.join(r.description.split())[:160]}\n"
            f"      {r.result} / {r.result_close}"
            for r in failed
        )
    )
