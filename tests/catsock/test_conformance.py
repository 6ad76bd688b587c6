"""The network conformance runner (catsock/conformance/) and its CLI command.

The runner is driven against a real catsock on loopback, in-process on a fake
clock that jumps when nothing runs, worker threads included (``lazy_clock``: the
vectors' waits, the auth deadline and the runner's pacing then cost no real
time), and through ``python -m catsock conformance`` in a
subprocess, where the clock is real and a quick subset of checks runs. A
deliberately broken peer proves the runner can fail; the profiles, the
independent seed relay and the faults profile are in test_conformance_profiles.py.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from click.testing import CliRunner

from catsock.cli import main
from catsock.conformance import (
    DEFAULT_PROFILES,
    TOKEN_KINDS,
    CheckResult,
    GatewayUnreachable,
    JwtTarget,
    Status,
    check_names,
    run_conformance,
)

from .harness import GatewayFactory, RunningGateway, tls_config
from .jwtkit import SECRET, T0


def fake_wall() -> float:
    """The gateway's and the runner's Unix time, on the fake clock (JWT expiries)."""
    return T0 + trio.current_time()

#: The vector that needs the gateway at a per-identity connection limit, which is
#: runtime configuration the runner cannot know.
ALWAYS_SKIPPED = {"session.session_auth_rejected_connection_limit"}
#: A quick subset for real-clock runs: every group, without the slow session
#: vectors (a 30 s wait, the 10 s auth deadline, rate limits that need refilled buckets).
QUICK = (
    "seed.",
    "auth.",
    "ping.",
    "routing.",
    "limits.message_size",
    "vector.",
    "session.session_php_client_publishes_conversion",
    "session.session_spoofed_sender",
    "session.session_too_many_messages_before_auth",
    "session.session_heartbeat_clamped",
)
#: The strict profile's checks that are not vectors, in the order a run performs them.
FIXED = (
    "auth.ok",
    "auth.failed",
    "auth.required",
    "ping.pong",
    "routing.conversion",
    "routing.afad_to_cats",
    "routing.dashboard",
    "routing.user_bound",
    "routing.no_echo",
    "routing.sender_mismatch",
    "routing.event_not_allowed",
)
SEED = (
    "seed.handshake",
    "seed.auth_success",
    "seed.auth_failed",
    "seed.auth_required",
    "seed.ping_pong",
    "seed.not_json",
    "seed.cats_to_afad",
    "seed.afad_to_cats",
    "seed.cats_to_dashboard",
)
VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped in .*$")
#: A row of a check: name, status, seconds, detail.
ROW = re.compile(r"^(\S+) +(PASS|FAIL|SKIP) +[\d.]+(?: +(.*))?$")
#: Subprocess waits: an interpreter start takes about a second.
TIMEOUT = 60


def _tokens(gw: RunningGateway, *, bound: bool = True) -> dict[str, str]:
    tokens = {
        "CATS": gw.token("conformance-cats", "CATS"),
        "AFAD": gw.token("conformance-afad", "AFAD"),
        "DASHBOARD": gw.token("conformance-dashboard", "DASHBOARD"),
    }
    if bound:
        tokens["DASHBOARD@500"] = gw.token("conformance-user-500", "DASHBOARD", "500")
    return tokens


def _vector_names(kind: str) -> list[str]:
    """The names in the vector files as they are on disk, read here rather than
    through protocol.conformance (which the runner uses): ``vector`` names from
    every file but sessions.json (files sorted by name), ``session`` names from it."""
    files = sorted(VECTORS.glob("*.json"))
    wanted = [f for f in files if (f.name == "sessions.json") == (kind == "session")]
    return [f"{kind}.{v['name']}" for f in wanted for v in json.loads(f.read_text())]


def _quicken(clock: trio.testing.MockClock) -> None:
    # The clock never jumps while a worker thread works (tests/clocks.py), so it
    # can jump after a short real idleness.
    clock.autojump_threshold = 0.02


def _report(results: list[CheckResult], status: Status) -> list[str]:
    return [f"{r.name}: {r.detail}" for r in results if r.status is status]


def _token_args(tokens: dict[str, str]) -> list[str]:
    return [arg for kind, token in tokens.items() for arg in ("--token", f"{kind}={token}")]


@attrs.frozen
class Ran:
    code: int
    out: str
    err: str

    @property
    def summary(self) -> tuple[int, int, int]:
        match = SUMMARY.match(self.out.strip().splitlines()[-1])
        assert match is not None, self.out
        passed, failed, skipped = match.groups()
        return int(passed), int(failed), int(skipped)

    @property
    def rows(self) -> list[tuple[str, str, str]]:
        """(name, status, detail) of every check row, in order."""
        found = [ROW.match(line) for line in self.out.splitlines()]
        return [(m[1], m[2], m[3] or "") for m in found if m is not None]


async def _run_cli(*args: str) -> Ran:
    done = await trio.run_process(
        [sys.executable, "-m", "catsock", "conformance", *args],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
    )
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())


# -- against catsock ----------------------------------------------------------------------


async def test_catsock_passes_every_check(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    _quicken(lazy_clock)
    # With JWTs on, so the expiry checks of the extensions profile run too.
    gw = await start_gateway(wall_clock=fake_wall, jwt={"secret": SECRET, "leeway": 2})
    tokens = _tokens(gw)
    with trio.fail_after(3600):  # virtual seconds
        results = await run_conformance(
            gw.url, tokens, jwt=JwtTarget(secret=SECRET, leeway=2.0), wall_clock=fake_wall
        )
    assert [r.name for r in results] == check_names()
    assert _report(results, Status.FAIL) == []
    assert {r.name for r in results if r.status is Status.SKIP} == ALWAYS_SKIPPED
    # The default profiles, in the registry's order; the seed checks first, then
    # strict's fixed checks and its vectors; every vector on disk is a check of its own.
    assert list(dict.fromkeys(r.profile for r in results)) == list(DEFAULT_PROFILES)
    names = check_names()
    assert names[: len(SEED) + len(FIXED)] == [*SEED, *FIXED]
    vectors = set(_vector_names("vector")) | set(_vector_names("session"))
    assert vectors <= set(names)
    assert len(names) == len(set(names))
    assert names[-1] == "limits.rate"


async def test_checks_needing_a_missing_token_are_skipped(
    start_gateway: GatewayFactory, lazy_clock: trio.testing.MockClock
) -> None:
    _quicken(lazy_clock)
    gw = await start_gateway()
    with trio.fail_after(600):
        results = await run_conformance(
            gw.url,
            _tokens(gw, bound=False),
            profiles=["strict"],
            only=["routing.", "session.session_user"],
        )
    assert _report(results, Status.FAIL) == []
    skipped = {r.name: r.detail for r in results if r.status is Status.SKIP}
    assert skipped == {
        "routing.user_bound": "needs the DASHBOARD@500 token",
        "session.session_user_bound_dashboard": "needs the DASHBOARD@500 token",
    }
    # The conversion check still runs and says what it could not look at.
    (conversion,) = [r for r in results if r.name == "routing.conversion"]
    assert conversion.passed
    assert "user:500 not checked" in conversion.detail


async def test_runner_over_tls(start_gateway: GatewayFactory, tmp_path: Path) -> None:
    ca, tls = tls_config(tmp_path)
    gw = await start_gateway(tls=tls)
    tokens = _tokens(gw)
    url = f"wss://127.0.0.1:{gw.port}/ws"
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with trio.fail_after(30):
        results = await run_conformance(url, tokens, ssl_context=context, only=["auth.", "ping."])
        assert [r.status for r in results] == [Status.PASS] * 4
        # Without the CA the certificate is refused, as one clear error.
        with pytest.raises(GatewayUnreachable, match="TLS"):
            await run_conformance(url, tokens, ssl_context=ssl.create_default_context())


async def test_runner_refuses_bad_arguments_and_unreachable_gateways(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    with pytest.raises(ValueError, match="ws:// or wss://"):
        await run_conformance("http://127.0.0.1/ws", {})
    with pytest.raises(ValueError, match="unknown token kind"):
        await run_conformance(gw.url, {"ADMIN": "x"})
    with pytest.raises(ValueError, match="unknown profile 'jwt'"):
        await run_conformance(gw.url, {}, profiles=["seed", "jwt"])
    with trio.fail_after(10):
        with pytest.raises(GatewayUnreachable, match="HTTP 404"):
            await run_conformance(f"ws://127.0.0.1:{gw.port}/not-ws", {})
        with _closed_port() as port, pytest.raises(GatewayUnreachable, match="refused"):
            await run_conformance(f"ws://127.0.0.1:{port}/ws", {})


@contextmanager
def _closed_port() -> Iterator[int]:
    """A port that refuses connections for as long as the block runs: bound, so no
    other process (another test, another job on the machine) can listen on it, but
    not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


async def test_cli_passes_against_catsock(start_gateway: GatewayFactory) -> None:
    # A real clock (the runner is another process): a quick subset of checks.
    gw = await start_gateway()
    tokens = _tokens(gw)
    only = [arg for prefix in QUICK for arg in ("--only", prefix)]
    with trio.fail_after(TIMEOUT):
        ran = await _run_cli(gw.url, *_token_args(tokens), *only)
    assert ran.code == 0, ran
    assert "Traceback" not in ran.err
    expected = [n for n in check_names() if n.startswith(QUICK)]
    # The four sessions QUICK names, every decode vector, the seed checks, strict's
    # fixed checks and limits.message_size.
    assert len(expected) == 4 + len(_vector_names("vector")) + len(SEED) + len(FIXED) + 1
    assert ran.summary == (len(expected), 0, 0)
    assert ran.rows == [(name, "PASS", "") for name in expected]
    # A header per profile, with its estimate, and a verdict per profile.
    out = ran.out.splitlines()
    assert out[0].startswith(f"{len(expected)} checks in seed, strict, extensions, limits")
    for profile in ("seed", "strict", "extensions", "limits"):
        assert any(line.startswith(f"== {profile}: ") for line in out), ran.out
        assert any(line.startswith(f"{profile}: PASS (") for line in out), ran.out


# -- against a broken peer ----------------------------------------------------------------


async def _broken_handler(request: trio_websocket.WebSocketRequest) -> None:
    """Answers auth with auth_success, echoes every event to its sender, never pongs."""
    ws = await request.accept()
    try:
        while True:
            text = await ws.get_message()
            try:
                message = json.loads(text)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("type") == "auth":
                reply = {"type": "auth_success", "connection_id": "conn_broken"}
                await ws.send_message(json.dumps(reply))
            elif "sender" in message and "payload" in message:
                await ws.send_message(text)
    except trio_websocket.ConnectionClosed:
        pass


async def _start_broken_peer(nursery: trio.Nursery) -> str:
    server = await nursery.start(
        partial(trio_websocket.serve_websocket, _broken_handler, "127.0.0.1", 0, ssl_context=None)
    )
    return f"ws://127.0.0.1:{server.port}/ws"


FAKE_TOKENS = {kind: f"token-{kind.lower()}" for kind in TOKEN_KINDS}


async def test_runner_reports_failures_of_a_broken_peer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    url = await _start_broken_peer(nursery)
    with trio.fail_after(600):
        results = await run_conformance(
            url, FAKE_TOKENS, profiles=["strict"], only=["ping.", "routing.no_echo"]
        )
    by_name = {r.name: r for r in results}
    assert by_name["ping.pong"].status is Status.FAIL
    assert "timed out after 5 s waiting for CATS: pong" in by_name["ping.pong"].detail
    assert by_name["routing.no_echo"].status is Status.FAIL
    assert "its own event back (echo)" in by_name["routing.no_echo"].detail


async def test_cli_exits_1_when_a_check_fails(nursery: trio.Nursery) -> None:
    url = await _start_broken_peer(nursery)
    with trio.fail_after(TIMEOUT):
        ran = await _run_cli(
            url,
            *_token_args(FAKE_TOKENS),
            "--timeout",
            "0.5",
            "--only",
            "ping.",
            "--only",
            "routing.no_echo",
        )
    assert ran.code == 1, ran
    assert ran.summary == (0, 2, 0)
    assert re.search(r"^ping\.pong +FAIL +[\d.]+ +timed out", ran.out, re.MULTILINE), ran.out
    assert re.search(r"^routing\.no_echo +FAIL .*echo", ran.out, re.MULTILINE), ran.out
    # Each failure names its rule and the section of docs/protocol.md.
    assert "-- rule: the publisher never receives its own event (docs/protocol.md §8.2)" in ran.out
    assert "strict: FAIL (0 passed, 2 failed, 0 skipped)" in ran.out


# -- usage errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://127.0.0.1:8765/ws"], "is not a ws:// or wss:// URL"),
        (["ws://127.0.0.1:99999/ws"], "has an invalid port"),
        (["ws://127.0.0.1:8765/ws", "--token", "CATS"], "expected KIND=TOKEN"),
        (["ws://127.0.0.1:8765/ws", "--token", "ROOT=x"], "the kind must be one of"),
        (["ws://127.0.0.1:8765/ws", "--token", "AFAD=a", "--token", "AFAD=b"], "given twice"),
        (["ws://127.0.0.1:8765/ws", "--insecure"], "apply to wss:// URLs only"),
        (["ws://127.0.0.1:{closed}/ws"], "cannot reach the gateway"),
        (["ws://127.0.0.1:{closed}/ws", "--only", "auth."], "cannot reach the gateway"),
        (["ws://127.0.0.1:8765/ws", "--profile", "seed,bogus"], "unknown profile 'bogus'"),
        (["ws://127.0.0.1:8765/ws", "--profile", "faults"], "needs --server-cmd"),
        (["ws://127.0.0.1:8765/ws", "--rate-limit", "CATS=fast"], "TYPE=PER_MINUTE/BURST"),
        (["ws://127.0.0.1:8765/ws", "--rate-limit", "CATS=0/5"], "must be positive"),
        (
            ["ws://127.0.0.1:8765/ws", "--no-rate-limits", "--rate-limit", "CATS=60/5"],
            "exclude each other",
        ),
        (
            ["ws://127.0.0.1:8765/ws", "--server-cmd", "x", "--kill-signal", "NOPE"],
            "not a signal name",
        ),
        (
            ["ws://127.0.0.1:{closed}/ws", "--profile", "faults", "--server-cmd", "false"],
            "cannot reach the gateway: --server-cmd: the server command exited with 1",
        ),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    with _closed_port() as closed:
        result = CliRunner().invoke(main, ["conformance", *(a.format(closed=closed) for a in args)])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0]
