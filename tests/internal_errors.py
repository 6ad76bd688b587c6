"""The suite's rule that catsock never fails quietly: a test fails if a gateway or a
client had an internal error that the test did not declare.

A gateway survives a crashed connection or HTTP handler by logging it and counting
it (``Gateway._handle_stream``, the front door's 500), and the client survives a
crashed event handler by logging it, so without this rule a bug there leaves every
test green. What counts as an internal error:

- a record of a ``catsock`` logger at WARNING or above that carries a traceback,
  or any record whose text says "internal error";
- a record at WARNING or above that reports a caught exception of a kind only a bug
  raises (``TypeError``, ``AttributeError``, ``KeyError``...; ``BUG_TYPES``) among its
  arguments, as ``logger.warning("commit failed: %s", exc)`` does: that is how the
  event log's commit loop reported the ``TypeError`` of issue 20's bug 10, retrying
  it forever, while no test noticed;
- ``stats.internal_errors`` of an in-process gateway going up (the harness and the
  framing fuzz's threaded gateway call ``watch_gateway``);
- "Traceback" or "internal error" in the stderr of a gateway process
  (``watch_stderr``: the fault tests' ``python -m catsock serve``).

The ``internal_errors`` fixture (autouse, tests/conftest.py) collects them for each
test and fails it at teardown. A test that provokes one on purpose declares it::

    @pytest.mark.expect_internal_errors("ZeroDivisionError", count=1)
    def test_...

or, with the fixture, ``internal_errors.expect("ZeroDivisionError")``. A pattern is a
regular expression searched in the error's text (logger name, message, traceback);
every error must match a declared pattern, and every declared pattern must match
``count`` errors (at least one when ``count`` is None).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import attrs

__all__ = ["ErrorLog", "InternalErrors"]

#: The wording of the gateway's own report of a crashed connection (server.py).
SAYS_INTERNAL = re.compile(r"internal error", re.IGNORECASE)
#: Exceptions that only a bug raises: caught and logged, they are internal errors.
#: (OSError, sqlite3.Error, ValueError and the like can come from the environment or
#: from input, and tests provoke them on purpose.)
BUG_TYPES = (
    AssertionError,
    AttributeError,
    IndexError,
    KeyError,
    NameError,
    NotImplementedError,
    RecursionError,
    TypeError,
    ZeroDivisionError,
)
#: What a crashed gateway process leaves in its stderr.
IN_STDERR = re.compile(r"Traceback \(most recent call last\)|internal error", re.IGNORECASE)


class _Stats(Protocol):
    internal_errors: int


class _Gateway(Protocol):
    @property
    def stats(self) -> _Stats: ...


@attrs.define
class Expectation:
    pattern: re.Pattern[str]
    count: int | None
    seen: int = 0

    def describe(self) -> str:
        wanted = "at least 1" if self.count is None else str(self.count)
        return f"{self.pattern.pattern!r}: expected {wanted}, seen {self.seen}"


class ErrorLog(logging.Handler):
    """Collects the internal errors the ``catsock`` loggers report, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.errors: list[str] = []
        #: How many of them are the server's "connection ended by an internal error".
        self.connection_crashes = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        serious = record.levelno >= logging.WARNING
        with_traceback = record.exc_info is not None and serious
        args = record.args.values() if isinstance(record.args, dict) else record.args or ()
        bugs = [a for a in args if isinstance(a, BUG_TYPES)] if serious else []
        if not (with_traceback or bugs or SAYS_INTERNAL.search(message)):
            return
        text = f"{record.name} {record.levelname}: {message}"
        if record.exc_info is not None:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        for bug in bugs:
            text += f"\n(caught {type(bug).__module__}.{type(bug).__qualname__}: {bug})"
        self.errors.append(text)
        if record.name == "catsock.server" and SAYS_INTERNAL.search(message):
            self.connection_crashes += 1


class InternalErrors:
    """One test's internal errors and what it declared it expects."""

    def __init__(self) -> None:
        self.log = ErrorLog()
        self.expected: list[Expectation] = []
        self._gateways: list[tuple[_Gateway, int]] = []
        self._stderrs: list[tuple[str, Callable[[], str]]] = []

    def expect(self, pattern: str, *, count: int | None = None) -> None:
        """Declare errors matching ``pattern`` (a regular expression) as expected; the
        same declaration twice (a marker and tests/conftest.py's table) counts once."""
        if any(e.pattern.pattern == pattern and e.count == count for e in self.expected):
            return
        self.expected.append(Expectation(re.compile(pattern), count))

    def watch_gateway(self, gateway: Any) -> None:
        """Check at the end that ``gateway.stats.internal_errors`` did not go up
        (beyond what was logged and declared) from now on; a second call for the
        same gateway changes nothing."""
        if all(gateway is not watched for watched, _ in self._gateways):
            self._gateways.append((gateway, gateway.stats.internal_errors))

    def watch_stderr(self, name: str, read: Callable[[], str]) -> None:
        """Check at the end the stderr ``read()`` returns (a gateway process's)."""
        self._stderrs.append((name, read))

    def errors(self) -> list[str]:
        """Every internal error seen so far, as text."""
        found = list(self.log.errors)
        crashes = sum(gw.stats.internal_errors - base for gw, base in self._gateways)
        if crashes > self.log.connection_crashes:
            found.append(
                f"stats.internal_errors went up by {crashes}, but only "
                f"{self.log.connection_crashes} internal errors were logged"
            )
        for name, read in self._stderrs:
            found.extend(_stderr_errors(name, read()))
        return found

    def problems(self) -> list[str]:
        """What makes the test fail: undeclared errors and unmet declarations."""
        for expectation in self.expected:
            expectation.seen = 0
        unexpected = []
        for error in self.errors():
            matched = next((e for e in self.expected if e.pattern.search(error)), None)
            if matched is None:
                unexpected.append(error)
            else:
                matched.seen += 1
        problems = [f"undeclared internal error:\n{error}" for error in unexpected]
        for e in self.expected:
            if (e.count is None and e.seen == 0) or (e.count is not None and e.seen != e.count):
                problems.append(f"declared internal errors not seen as declared: {e.describe()}")
        return problems


#: Lines that continue a traceback report (chained exceptions, exception groups).
_CONTINUES = ("Traceback", "During handling", "The above exception", "Exception Group", "+", "|")


def _stderr_errors(name: str, text: str) -> list[str]:
    """Each report in a process's stderr (a log line saying "internal error" and
    the traceback under it, or a bare traceback), as one error."""
    lines = text.splitlines()
    found: list[str] = []
    i = 0
    while i < len(lines):
        if not IN_STDERR.search(lines[i]):
            i += 1
            continue
        j, in_traceback = i + 1, lines[i].startswith("Traceback")
        while j < len(lines):
            line = lines[j]
            if not line.strip() or line.startswith((" ", "\t")):
                j += 1
            elif line.lstrip().startswith(_CONTINUES):
                in_traceback = in_traceback or line.startswith("Traceback")
                j += 1
            elif in_traceback:  # the exception line that ends a traceback
                in_traceback = False
                j += 1
            else:
                break
        found.append(f"{name} stderr:\n" + "\n".join(lines[i:j]).rstrip())
        i = j
    return found
