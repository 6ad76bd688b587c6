"""The suite's internal-error rule (tests/internal_errors.py) sees what it must see.

Each test provokes one kind of internal error for real (a connection task that
raises, an HTTP handler that raises, a client handler that raises, a counter that
moves without a log line, a traceback in a process's stderr) and checks what the
``internal_errors`` fixture makes of it before declaring it, so that the test
itself ends green only because of the declaration.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import pytest
import trio
import trio.testing
import trio_websocket

import storage
from catsock.client import ReceivedEvent, connect
from tests.internal_errors import InternalErrors, _stderr_errors

from .catsock.harness import CONVERSION, GatewayFactory, envelope
from .catsock.test_http import http


class Provoked(Exception):
    """Raised on purpose inside catsock."""


def _raise(*args: Any, **kwargs: Any) -> NoReturn:
    raise Provoked("on purpose")


async def test_a_crashed_connection_fails_the_test_unless_declared(
    start_gateway: GatewayFactory,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await start_gateway()
    monkeypatch.setattr("catsock.connection.Connection.on_message", _raise)
    with trio.fail_after(10):
        async with gw.connect() as client:
            await client.send({"type": "ping"})
            # The gateway logs and counts the crash before it drops the connection.
            with pytest.raises(trio_websocket.ConnectionClosed):
                await client.recv()
    assert gw.gateway.stats.internal_errors == 1
    (problem,) = internal_errors.problems()
    assert problem.startswith("undeclared internal error:\ncatsock.server WARNING:")
    assert "connection ended by an internal error" in problem
    assert "Provoked: on purpose" in problem  # the traceback is part of it
    internal_errors.expect("Provoked: on purpose", count=1)
    assert internal_errors.problems() == []


@pytest.mark.expect_internal_errors(r"HTTP handler failed(.|\n)*Provoked", count=1)
async def test_a_crashed_http_handler_is_declared_with_the_marker(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("catsock.httpapi.HttpApi.handle", _raise)
    gw = await start_gateway()
    with trio.fail_after(10):
        reply = await http(gw.port, "GET", "/health")
    assert reply.status == 500


async def test_a_client_handler_that_raises_is_an_internal_error(
    start_gateway: GatewayFactory, internal_errors: InternalErrors
) -> None:
    gw = await start_gateway()
    handled = trio.Event()

    def handler(event: ReceivedEvent) -> None:
        handled.set()
        raise Provoked("in a handler")

    with trio.fail_after(10):
        async with connect(gw.url, gw.token("afad", "AFAD"), "AFAD") as afad:
            afad.add_handler("conversion", handler)
            async with gw.client("CATS") as cats:
                await cats.send(envelope("conversion", CONVERSION, "CATS", "m-1"))
                await handled.wait()
                await cats.send({"type": "ping"})
                assert (await cats.recv())["type"] == "pong"
            await afad.aclose()
    (error,) = internal_errors.errors()
    assert error.startswith("catsock.client ERROR: handler")
    assert "Provoked: in a handler" in error
    internal_errors.expect("in a handler")


async def test_a_bug_caught_and_logged_as_a_warning_is_an_internal_error(
    start_gateway: GatewayFactory,
    internal_errors: InternalErrors,
    monkeypatch: pytest.MonkeyPatch,
    lazy_clock: trio.testing.MockClock,
) -> None:
    """The event log's commit loop logs a failed commit as a warning with the
    exception's text and tries again (after a pause the fake clock skips): a
    TypeError there is a bug all the same."""
    gw = await start_gateway()
    commit = storage.commit_events
    failures: list[int] = []

    def commit_once_broken(*args: Any) -> Any:
        if not failures:
            failures.append(1)
            raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")
        return commit(*args)

    monkeypatch.setattr("storage.commit_events", commit_once_broken)
    with trio.fail_after(60):
        async with gw.client("CATS") as cats, gw.client("AFAD") as afad:
            await cats.send(envelope("conversion", CONVERSION, "CATS", "m-1"))
            assert (await afad.recv())["message_id"] == "m-1"  # after the retry
    (error,) = internal_errors.errors()
    assert error.startswith("catsock.delivery WARNING: event log: commit of 1 events failed")
    assert error.endswith("(caught builtins.TypeError: unsupported operand type(s) for +:"
                          " 'NoneType' and 'int')")
    internal_errors.expect("caught builtins.TypeError", count=1)


async def test_a_counted_crash_that_was_not_logged_is_reported(
    start_gateway: GatewayFactory, internal_errors: InternalErrors
) -> None:
    gw = await start_gateway()
    gw.gateway.stats.internal_errors += 2
    assert internal_errors.errors() == [
        "stats.internal_errors went up by 2, but only 0 internal errors were logged"
    ]
    internal_errors.expect("went up by 2", count=1)


def test_a_declared_error_that_never_came_is_reported(internal_errors: InternalErrors) -> None:
    watch = InternalErrors()
    watch.expect("KeyError", count=1)
    assert watch.problems() == [
        "declared internal errors not seen as declared: 'KeyError': expected 1, seen 0"
    ]
    assert internal_errors.problems() == []


STDERR = """catsock: listening on ws://127.0.0.1:4242/ws
connection ended by an internal error
Traceback (most recent call last):
  File "/work/main/catsock/server.py", line 306, in _handle_stream
    await self._serve_stream(stream)
TypeError: serve() takes 2 positional arguments but 3 were given
catsock: shutting down
Traceback (most recent call last):
  File "x.py", line 1, in <module>
KeyError: 'a'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "x.py", line 3, in <module>
ValueError: b
catsock: stopped"""


def test_each_report_in_a_process_stderr_is_one_error() -> None:
    first, second = _stderr_errors("gw", STDERR)
    assert first.splitlines() == [
        "gw stderr:",
        "connection ended by an internal error",
        "Traceback (most recent call last):",
        '  File "/work/main/catsock/server.py", line 306, in _handle_stream',
        "    await self._serve_stream(stream)",
        "TypeError: serve() takes 2 positional arguments but 3 were given",
    ]
    assert second.splitlines()[1] == "Traceback (most recent call last):"
    assert second.splitlines()[-1] == "ValueError: b"
    assert "KeyError: 'a'" in second
    assert _stderr_errors("gw", "catsock: listening\ncatsock: stopped") == []


def test_a_quiet_process_passes(internal_errors: InternalErrors) -> None:
    internal_errors.watch_stderr("quiet", lambda: json.dumps({"lines": ["fine"]}))
    assert internal_errors.errors() == []
