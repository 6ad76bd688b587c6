"""``python -m catsock publish`` and ``tail`` as real processes against a real gateway.

The gateway runs in the test (``start_gateway``); the commands run with
``sys.executable -m catsock`` and no ``CATSOCK_*`` settings from the test's
environment, as in test_cli.py. Output is read as it comes, never by sleeping.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import shlex
import signal
import socket
import sys
from pathlib import Path

import trio
from click.testing import CliRunner

from catsock.backoff import Backoff
from catsock.cli import main
from catsock.client import Client, connect
from storage.outbox import Outbox, OutboxStatus
from tests.interop.live import live_process

from .harness import ADWARE_UPDATE, CONVERSION, GatewayFactory
from .test_serve import TIMEOUT, Result, cli_env, run_cli


def _one_error_line(result: Result) -> str:
    assert result.code != 0, result
    assert "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("Error: "), lines
    return lines[0]


async def test_publish_prints_the_seq_and_detects_duplicates(
    tmp_path: Path, start_gateway: GatewayFactory
) -> None:
    gw = await start_gateway()
    env = cli_env(tmp_path / "unused.db", CATSOCK_TOKEN=gw.token("cats", "CATS"))
    payload = json.dumps(CONVERSION)
    args = ("publish", "conversion", "--payload", payload, "--url", gw.url)
    with trio.fail_after(TIMEOUT):
        async with connect(gw.url, gw.token("afad", "AFAD"), "AFAD") as afad:
            events = afad.events()
            first = await run_cli(*args, "--message-id", "cli-1", cwd=tmp_path, env=env)
            again = await run_cli(*args, "--message-id", "cli-1", cwd=tmp_path, env=env)
            fresh = await run_cli(*args, cwd=tmp_path, env=env)
            received = [await events.__anext__() for _ in range(2)]
    assert first.code == 0, first
    seq = received[0].seq
    assert first.out == f"accepted seq={seq} message_id=cli-1\n"
    assert again.code == 0, again
    assert again.out == f"accepted seq={seq} message_id=cli-1 duplicate\n"
    assert fresh.code == 0, fresh
    assert fresh.out.startswith(f"accepted seq={received[1].seq} message_id=msg_")
    # The duplicate was not delivered: the second event is the fresh one.
    assert [e.message_id for e in received] == ["cli-1", fresh.out.split("message_id=")[1].strip()]


async def test_publish_failures_are_one_line(tmp_path: Path, start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    env = cli_env(tmp_path / "unused.db")
    afad = gw.token("afad", "AFAD")
    with trio.fail_after(TIMEOUT):
        refused = await run_cli(
            "publish", "conversion", "--payload", json.dumps(CONVERSION),
            "--url", gw.url, "--token", afad, "--client-type", "AFAD",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        bad_json = await run_cli(
            "publish", "adware_update", "--payload", "{nope", "--token", afad,
            cwd=tmp_path, env=env,
        )  # fmt: skip
        not_object = await run_cli(
            "publish", "adware_update", "--payload", "[1]", "--token", afad, cwd=tmp_path, env=env
        )
        bad_token = await run_cli(
            "publish", "adware_update", "--payload", json.dumps(ADWARE_UPDATE),
            "--url", gw.url, "--token", "cs_wrong", "--client-type", "AFAD",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        no_token = await run_cli("publish", "x", "--payload", "{}", cwd=tmp_path, env=env)
    assert refused.code == 1
    assert "refused: EVENT_NOT_ALLOWED" in _one_error_line(refused)
    assert bad_json.code == 2
    assert "Invalid value for '--payload': not valid JSON" in bad_json.err
    assert "Traceback" not in bad_json.err
    assert not_object.code == 2
    assert "must be a JSON object" in not_object.err
    assert bad_token.code == 1
    assert "authentication failed: AUTH_FAILED" in _one_error_line(bad_token)
    assert no_token.code == 2
    assert "Missing option '--token'" in no_token.err


async def test_publish_keeps_an_outbox_and_gives_up_after_the_timeout(
    tmp_path: Path, start_gateway: GatewayFactory
) -> None:
    gw = await start_gateway()
    outbox = tmp_path / "cli-outbox.db"
    env = cli_env(tmp_path / "unused.db", CATSOCK_TOKEN=gw.token("cats", "CATS"))
    payload = json.dumps(CONVERSION)
    # A bound port that does not listen refuses connections: the event stays pending.
    with trio.fail_after(TIMEOUT), socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        nowhere = f"ws://127.0.0.1:{blocker.getsockname()[1]}/ws"
        down = await run_cli(
            "publish", "conversion", "--payload", payload, "--message-id", "offline",
            "--url", nowhere, "--outbox", str(outbox), "--timeout", "0.5",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        up = await run_cli(
            "publish", "conversion", "--payload", payload, "--message-id", "online",
            "--url", gw.url, "--outbox", str(outbox), cwd=tmp_path, env=env,
        )  # fmt: skip
    # Like tail, publish reports each failed attempt while the gateway is down, then
    # one Error line when it gives up.
    assert down.code == 1, down
    assert "Traceback" not in down.err, down.err
    *attempts, line = down.err.strip().splitlines()
    assert attempts, down.err
    for attempt in attempts:
        assert attempt.startswith(f"catsock: connection to {nowhere} failed: "), attempt
    assert line.startswith("Error: "), down.err
    assert f"no answer from {nowhere} within 0.5 s" in line
    assert "stays pending in the outbox" in line
    assert up.code == 0, up
    with Outbox(outbox) as box:
        offline, online = box.get("offline"), box.get("online")
    # The second run sent what the first left behind, as a retry.
    assert offline is not None
    assert (offline.status, offline.retry_count) == (OutboxStatus.SENT, 1)
    assert online is not None
    assert online.status is OutboxStatus.SENT
    assert up.out == f"accepted seq={online.seq} message_id=online\n"


async def test_tail_prints_events_as_json_lines_until_interrupted(
    tmp_path: Path, start_gateway: GatewayFactory
) -> None:
    gw = await start_gateway()
    afad_token = gw.token("afad", "AFAD")
    with trio.fail_after(TIMEOUT):
        async with connect(gw.url, gw.token("cats", "CATS"), "CATS", receive=False) as cats:
            click = {"access_id": 1, "adware_id": 100, "owner_id": 500}
            skipped = await cats.publish("click", click)
            shown = await cats.publish("conversion", CONVERSION, message_id="tail-1")
            argv = [
                sys.executable, "-m", "catsock", "tail", "--url", gw.url,
                "--since", "0", "--type", "conversion",
            ]  # fmt: skip
            async with live_process(argv, CATSOCK_TOKEN=afad_token) as tail:
                first = json.loads(await tail.line())
                live = await cats.publish("conversion", CONVERSION, message_id="tail-2")
                second = json.loads(await tail.line())
                tail.process.send_signal(signal.SIGINT)
                code, rest = await tail.finish()
    assert skipped.seq is not None
    assert list(first)[:2] == ["seq", "version"]
    assert (first["seq"], first["message_id"]) == (shown.seq, "tail-1")
    assert (second["seq"], second["message_id"]) == (live.seq, "tail-2")
    assert first["payload"] == CONVERSION
    assert code == 0, tail.stderr.decode()
    assert rest == []
    assert "Traceback" not in tail.stderr.decode()
    assert "catsock: tailing" in tail.stderr.decode()


# -- docs/client.md against the code ----------------------------------------------------------

DOC = (Path(__file__).resolve().parents[2] / "docs" / "client.md").read_text(encoding="utf-8")


def test_docs_list_every_client_option_with_its_default() -> None:
    section = DOC.split("Options (all keyword-only):", 1)[1].split("\n\n", 2)[1]
    documented: dict[str, str] = {}
    for row in section.splitlines()[2:]:
        cells, default = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = re.findall(r"`(\w+)`", cells)
        values = default.split(", ") if len(names) > 1 else [default]
        for name, value in zip(names, values, strict=True):
            documented[name] = value.strip("`")
    parameters = {
        name: p.default
        for name, p in inspect.signature(Client).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert set(documented) == set(parameters)
    for name, default in parameters.items():
        if isinstance(default, bool | int | float) or default is None:
            assert ast.literal_eval(documented[name]) == default, name
    assert documented["backoff"] == repr(Backoff())


def test_docs_shell_lines_are_real_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", DOC, flags=re.DOTALL)
    commands = [
        line
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.startswith("python -m catsock ")
    ]
    assert len(commands) >= 3
    for line in commands:
        args = shlex.split(line.split("#")[0])[3:]
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (line, result.output)
        assert result.output.startswith(f"Usage: main {args[0]} ")
