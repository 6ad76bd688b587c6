"""The conformance profiles (catsock/conformance/profiles.py), against catsock and
against an independent seed-protocol relay (tests/catsock/seed_relay.py).

- Every check belongs to one profile, names a rule and a section of
  docs/protocol.md that exists; ``module_checks`` adds a module's checks.
- ``limits`` follows the limits it is given: it passes against a catsock
  configured with them, and fails against it with catsock's defaults.
- The relay, written from seed 000 alone on ``websockets``, passes ``seed`` and
  fails ``strict`` (and ``faults``), each failure naming its rule and section.
- ``faults`` passes against catsock started, killed and restarted by the run
  (``--server-cmd``), as a subprocess on a real clock.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
import trio_websocket

from bench.servers import free_port
from catsock.conformance import (
    DEFAULT_PROFILES,
    PROFILES,
    Profile,
    Status,
    TargetLimits,
    check_names,
    estimate,
    module_checks,
    plan,
    run_conformance,
)
from protocol import RateLimit
from tests.lines import LineReader

from .harness import GatewayFactory
from .test_conformance import TIMEOUT, Ran, _quicken, _run_cli, _token_args, _tokens
from .test_serve import cli_env, create_token

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_MD = REPO / "docs" / "protocol.md"
RELAY = Path(__file__).with_name("seed_relay.py")
RELAY_TOKEN = "seed-relay-token"
RELAY_TOKENS = {kind: RELAY_TOKEN for kind in ("CATS", "AFAD", "DASHBOARD")}


def _sections() -> set[str]:
    """``§N`` and ``§N.M`` for every numbered heading of docs/protocol.md."""
    headings = re.findall(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", PROTOCOL_MD.read_text(), re.MULTILINE)
    return {f"§{number}" for number in headings}


# -- the registry ------------------------------------------------------------------------


def test_every_check_belongs_to_one_profile_and_names_a_rule_and_a_section() -> None:
    sections = _sections()
    everything = [item for item in plan(list(PROFILES))]
    names = [item.name for item in everything]
    assert len(names) == len(set(names))
    for item in everything:
        assert item.check.rule, item.name
        assert item.check.section in sections, (item.name, item.check.section)
    assert list(DEFAULT_PROFILES) == ["seed", "strict", "extensions", "limits"]
    assert [name for name, p in PROFILES.items() if p.opt_in] == ["faults"]
    assert all(p.claim for p in PROFILES.values())
    # The seed profile checks only what the seed defines: no catsock vector is in it.
    assert all(n.startswith("seed.") for n in check_names(["seed"]))


def test_the_estimate_is_every_timeout_plus_the_checks_own_waits() -> None:
    seed = plan(["seed"])
    assert estimate(seed) == len(seed) * PROFILES["seed"].timeout
    assert estimate(seed, 1.0) == len(seed)
    limits = plan(["limits"], only=["limits.auth_deadline"])
    assert estimate(limits, 1.0) == 1.0 + 10.0  # the default auth deadline it lets pass


def test_module_checks_takes_a_modules_check_functions() -> None:
    source = module_checks("tests.catsock.conformance_extra", "extra", "§2")
    checks = list(source())
    assert [(c.name, c.needs, c.rule, c.section) for c in checks] == [
        ("extra.two_pings", ("CATS",), "Two pings in a row get two pongs.", "§2"),
        (
            "extra.pong_is_ignored",
            ("AFAD", "DASHBOARD"),
            "A pong from the client gets no answer.",
            "§3.1",
        ),
    ]


async def test_a_profile_with_a_module_of_checks_runs_them(
    start_gateway: GatewayFactory,
    lazy_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _quicken(lazy_clock)
    extra = Profile(
        "extra", "extra checks", (module_checks("tests.catsock.conformance_extra", "extra", "§2"),)
    )
    monkeypatch.setitem(PROFILES, "extra", extra)
    gw = await start_gateway()
    tokens = _tokens(gw)
    del tokens["DASHBOARD"]
    with trio.fail_after(60):
        results = await run_conformance(gw.url, tokens, profiles=["extra"])
    assert [(r.name, r.profile, r.status) for r in results] == [
        ("extra.two_pings", "extra", Status.PASS),
        ("extra.pong_is_ignored", "extra", Status.SKIP),
    ]


# -- limits, as configured ---------------------------------------------------------------

#: A catsock configured away from its defaults, and those limits as the run is told them.
SMALL = {
    "auth_timeout": 2.0,
    "limits": {"max_message_size": 1024, "rate": {"DASHBOARD": {"per_minute": 600, "burst": 5}}},
}
SMALL_LIMITS = TargetLimits(
    max_message_size=1024,
    auth_timeout=2.0,
    rate_limits={
        "CATS": RateLimit(1000, 100),
        "AFAD": RateLimit(1000, 100),
        "DASHBOARD": RateLimit(600, 5),
    },
)


async def test_limits_follow_the_configured_limits(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    _quicken(lazy_clock)
    gw = await start_gateway(**SMALL)
    tokens = _tokens(gw)
    with trio.fail_after(3600):
        told = await run_conformance(gw.url, tokens, profiles=["limits"], limits=SMALL_LIMITS)
        assumed = await run_conformance(gw.url, tokens, profiles=["limits"])
    assert [r.name for r in told if r.status is Status.FAIL] == []
    mine = [r.name for r in told if r.status is Status.PASS]
    assert mine == ["limits.message_size", "limits.auth_deadline", "limits.rate"]
    # The vectors that pin catsock's defaults say why they did not run.
    skipped = {r.detail for r in told if r.status is Status.SKIP}
    assert skipped == {
        "the vector assumes catsock's default limits; the limits.* checks cover the target's"
    }
    # Told catsock's defaults instead, the same checks fail against this gateway.
    failed = {r.name: r for r in assumed if r.status is Status.FAIL}
    assert {"limits.message_size", "limits.rate"} <= set(failed)
    # 65,536 bytes is over 4 times this gateway's limit: its frame reader closes at once.
    assert "closed (1009)" in failed["limits.message_size"].detail
    assert failed["limits.message_size"].where().endswith("(docs/protocol.md §4.1)")


# -- the independent seed relay ----------------------------------------------------------


@asynccontextmanager
async def _relay(port: int = 0) -> AsyncIterator[str]:
    """tests/catsock/seed_relay.py as a subprocess; yields its URL."""
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(RELAY), RELAY_TOKEN, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            lines = LineReader(process.stdout)
            nursery.start_soon(lines.run)
            with trio.fail_after(TIMEOUT):
                await lines.wait_for(lambda got: bool(got))
            yield f"ws://127.0.0.1:{int(lines.lines[0])}/ws"
        finally:
            process.kill()
            await process.wait()


async def test_the_seed_relay_passes_seed() -> None:
    pytest.importorskip("websockets", reason="pip install -e '.[bench]'")
    async with _relay() as url:
        with trio.fail_after(TIMEOUT):
            ran = await _run_cli(url, *_token_args(RELAY_TOKENS), "--profile", "seed")
    assert ran.code == 0, ran
    assert ran.rows == [(name, "PASS", "") for name in check_names(["seed"])]
    assert "seed: PASS (9 passed, 0 failed, 0 skipped)" in ran.out


#: strict checks the relay fails, each for one of catsock's choices, with the section.
STRICT_FAILURES = {
    "auth.failed": "§2",  # closes with 1000, not 1008
    "routing.conversion": "§8.1",  # no DASHBOARD copy
    "routing.sender_mismatch": "§8.2",
    "vector.duplicate_keys_refused": "§4.2",
    "vector.not_json_nan": "§4.2",
    "vector.unknown_type_event": "§4",  # UNKNOWN_MESSAGE_TYPE, not UNKNOWN_TYPE
    "session.session_second_auth": "§7",
}


async def test_the_seed_relay_fails_strict_and_each_failure_names_rule_and_section() -> None:
    pytest.importorskip("websockets", reason="pip install -e '.[bench]'")
    only = [arg for name in STRICT_FAILURES for arg in ("--only", name)]
    async with _relay() as url:
        with trio.fail_after(TIMEOUT):
            ran = await _run_cli(
                url,
                *_token_args(RELAY_TOKENS),
                "--profile",
                "seed,strict",
                "--timeout",
                "2",  # two of these checks fail by timing out: the relay never answers
                *only,
            )
    assert ran.code == 1, ran
    assert {name: status for name, status, _ in ran.rows} == dict.fromkeys(STRICT_FAILURES, "FAIL")
    for name, _, detail in ran.rows:
        assert re.search(r" -- rule: .+ \(docs/protocol\.md (§[\d.]+)\)$", detail), detail
        assert detail.endswith(f"(docs/protocol.md {STRICT_FAILURES[name]})"), detail
    assert (
        "UNKNOWN_MESSAGE_TYPE" in dict((n, d) for n, _, d in ran.rows)["vector.unknown_type_event"]
    )
    # --only left none of the seed profile's checks: no verdict line for it.
    assert "strict: FAIL (0 passed, 7 failed, 0 skipped)" in ran.out
    assert "seed:" not in ran.out


async def test_the_json_report_and_the_rows_on_stderr() -> None:
    pytest.importorskip("websockets", reason="pip install -e '.[bench]'")
    async with _relay() as url:
        with trio.fail_after(TIMEOUT):
            ran = await _run_cli(
                url,
                *_token_args(RELAY_TOKENS),
                "--profile",
                "seed",
                "--profile",
                "strict",
                "--only",
                "seed.",
                "--only",
                "auth.failed",
                "--json",
            )
    assert ran.code == 1, ran
    report = json.loads(ran.out)
    assert report["ok"] is False
    assert report["profiles"]["seed"] | {"claim": ""} == {
        "claim": "",
        "passed": 9,
        "failed": 0,
        "skipped": 0,
        "ok": True,
    }
    assert report["profiles"]["strict"]["failed"] == 1
    assert report["estimate_seconds"] == 9 * 3.0 + 5.0
    (failed,) = [c for c in report["checks"] if c["status"] == "FAIL"]
    assert failed["name"] == "auth.failed"
    assert failed["section"] == "§2"
    assert "1008" in failed["detail"]
    assert failed["rule"] == "a bad token gets AUTH_FAILED and close 1008"
    # The rows went to stderr, one per check, after the run's header.
    err = Ran(0, ran.err, "")
    assert [name for name, _, _ in err.rows] == [*check_names(["seed"]), "auth.failed"]
    assert ran.err.startswith("10 checks in seed, strict; at most 32 s")


async def test_the_seed_relay_fails_faults() -> None:
    pytest.importorskip("websockets", reason="pip install -e '.[bench]'")
    port = free_port()
    command = f"{sys.executable} {RELAY} {RELAY_TOKEN} {port}"
    with trio.fail_after(TIMEOUT):
        ran = await _run_cli(
            f"ws://127.0.0.1:{port}/ws",
            *_token_args(RELAY_TOKENS),
            "--profile",
            "faults",
            "--server-cmd",
            command,
            "--only",
            "faults.duplicate",
            "--only",
            "faults.kill9",
        )
    assert ran.code == 1, ran
    details = {name: detail for name, _, detail in ran.rows}
    assert details["faults.duplicate_message_id"].startswith(
        "the event published twice was delivered 2 times -- rule:"
    )
    assert "the resume grant has no integer head" in details["faults.kill9"]


# -- faults against catsock --------------------------------------------------------------


async def test_catsock_passes_faults(tmp_path: Path) -> None:
    database = tmp_path / "catsock.db"
    env = cli_env(database)
    tokens = {
        kind: await create_token(tmp_path, env, kind, f"conformance-{kind.lower()}")
        for kind in ("CATS", "AFAD", "DASHBOARD")
    }
    port = free_port()
    command = f"{sys.executable} -m catsock serve --port {port} --database {database}"
    with trio.fail_after(120):
        ran = await _run_cli(
            f"ws://127.0.0.1:{port}/ws",
            *_token_args(tokens),
            "--profile",
            "faults",
            "--server-cmd",
            command,
            "--server-log",
            str(tmp_path / "server.log"),
        )
    assert ran.code == 0, (ran, (tmp_path / "server.log").read_text())
    assert ran.rows == [(name, "PASS", "") for name in check_names(["faults"])]
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log
    # Started twice (once more after the kill), and stopped at the end.
    assert log.count("listening") == 2, log
    with pytest.raises(OSError, match="connect"):
        await trio.open_tcp_stream("127.0.0.1", port)


# -- a gateway that answers nothing ------------------------------------------------------


async def _silent_handler(request: trio_websocket.WebSocketRequest) -> None:
    """Accepts the WebSocket and reads everything, answering nothing."""
    ws = await request.accept()
    with contextlib.suppress(trio_websocket.ConnectionClosed):
        while True:
            await ws.get_message()


async def test_seed_answers_within_its_estimate_against_a_silent_gateway(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await nursery.start(
        partial(trio_websocket.serve_websocket, _silent_handler, "127.0.0.1", 0, ssl_context=None)
    )
    url = f"ws://127.0.0.1:{server.port}/ws"
    started = trio.current_time()
    with trio.fail_after(600):
        results = await run_conformance(url, RELAY_TOKENS, profiles=["seed"])
    took = trio.current_time() - started
    # Virtual seconds: each check waited its full timeout at most, the run no longer
    # than the estimate the command prints (27 s, under the 30 s).
    assert took <= estimate(plan(["seed"])) == 27.0
    assert [r.status for r in results] == [Status.PASS] + [Status.FAIL] * 8
    assert all("timed out after 3 s" in r.detail for r in results[1:]), results
