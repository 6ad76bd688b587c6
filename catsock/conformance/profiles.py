"""The profiles: named sets of checks, each with one claim about the gateway.

``PROFILES`` maps a name to a ``Profile``; a profile's checks come from its
*sources*, functions that return ``_Check`` lists. Adding a module of checks to
a profile is one line: put ``module_checks("catsock.conformance.NAME", "PREFIX",
"§N")`` in that profile's ``sources`` below. ``module_checks`` takes every
``async def check_<name>(ctx)`` of the module, in source order, as the check
``PREFIX.<name>``; the function's docstring's first line is its rule, and
``@needs("CATS", ...)`` (from this module) names the tokens it needs and
``@section("§10.3")`` a section other than the module's.

The order of ``PROFILES`` is the order a run takes them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

import attrs

from protocol.conformance import load_decode_vectors, load_session_vectors

from .decode_vectors import _decode_vector_check, decode_vector_profile
from .extensions import extension_checks
from .faults import fault_checks
from .fixed import strict_checks
from .limits import last_limit_checks, limit_checks
from .runner import CheckFn, _Check
from .seed import seed_checks
from .session_vectors import _limits_rate, _session_check, session_vector_profile

#: A source of checks: called when a run is planned.
CheckSource = Callable[[], Iterable[_Check]]

F = TypeVar("F", bound=CheckFn)


@attrs.frozen
class Profile:
    """A named set of checks. ``opt_in`` profiles run only when asked for by
    name; ``timeout`` is the per-check timeout when the run gives none."""

    name: str
    claim: str
    sources: tuple[CheckSource, ...]
    opt_in: bool = False
    timeout: float = 5.0

    def checks(self) -> list[_Check]:
        return [check for source in self.sources for check in source()]


def needs(*kinds: str) -> Callable[[F], F]:
    """Mark a ``check_*`` function of a checks module with the tokens it needs."""

    def mark(fn: F) -> F:
        fn.conformance_needs = kinds  # type: ignore[attr-defined]
        return fn

    return mark


def section(number: str) -> Callable[[F], F]:
    """Mark a ``check_*`` function with its section of docs/protocol.md."""

    def mark(fn: F) -> F:
        fn.conformance_section = number  # type: ignore[attr-defined]
        return fn

    return mark


def waits(seconds: float) -> Callable[[F], F]:
    """Mark a ``check_*`` function with the time it spends waiting on purpose (a
    deadline it lets pass), for the run's time estimate."""

    def mark(fn: F) -> F:
        fn.conformance_waits = seconds  # type: ignore[attr-defined]
        return fn

    return mark


def module_checks(module: str, prefix: str, default_section: str) -> CheckSource:
    """The ``check_*`` coroutine functions of ``module`` as checks (see the module
    docstring); the module is imported when a run is planned."""

    def source() -> list[_Check]:
        mod = importlib.import_module(module)
        fns = [
            fn
            for name, fn in vars(mod).items()
            if name.startswith("check_") and inspect.iscoroutinefunction(fn)
        ]
        fns.sort(key=lambda fn: fn.__code__.co_firstlineno)
        return [
            _Check(
                f"{prefix}.{fn.__name__.removeprefix('check_')}",
                fn,
                tuple(getattr(fn, "conformance_needs", ())),
                rule=(inspect.getdoc(fn) or "").split("\n", 1)[0],
                section=getattr(fn, "conformance_section", default_section),
                waits=getattr(fn, "conformance_waits", 0.0),
            )
            for fn in fns
        ]

    return source


def _vectors(profile: str, *, bucket_emptying: bool | None = None) -> CheckSource:
    """The decode and session vectors of ``profile``; ``bucket_emptying`` picks the
    session vectors that need a full bucket (True), the others (False) or all."""

    def source() -> list[_Check]:
        checks = [
            _decode_vector_check(v, i)
            for i, v in enumerate(load_decode_vectors())
            if decode_vector_profile(v) == profile and bucket_emptying is not True
        ]
        checks += [
            _session_check(v)
            for v in load_session_vectors()
            if session_vector_profile(v) == profile
            and (bucket_emptying is None or _limits_rate(v) == bucket_emptying)
        ]
        return checks

    return source


PROFILES: Final = {
    p.name: p
    for p in (
        Profile(
            "seed",
            "the gateway speaks seed 000 §4 and §7: what the seed's PHP and browser clients "
            "rely on",
            (seed_checks,),
            timeout=3.0,
        ),
        Profile(
            "strict",
            "the gateway makes catsock's validation, routing and error-code choices "
            "(docs/protocol.md §3-§8)",
            (strict_checks, _vectors("strict")),
        ),
        Profile(
            "extensions",
            "the gateway negotiates catsock's extensions: heartbeat, acks, resume, publish "
            "acknowledgements (docs/protocol.md §10)",
            (
                _vectors("extensions"),
                extension_checks,
                # A module of further checks joins with one line:
                module_checks("catsock.conformance.expiry", "jwt", "§2.1"),
            ),
        ),
        Profile(
            "limits",
            "the gateway enforces its configured size limit, rate limits and auth deadline "
            "(docs/protocol.md §2, §4.1, §9)",
            (
                limit_checks,
                _vectors("limits", bucket_emptying=False),
                # Vectors that need a full bucket go last, so others never wait for one.
                _vectors("limits", bucket_emptying=True),
                last_limit_checks,
            ),
        ),
        Profile(
            "faults",
            "nothing acknowledged is lost when the gateway is killed, a returning recipient "
            "gets what it missed, a slow consumer stalls nobody, a repeated message_id is "
            "delivered once (docs/protocol.md §12.5; needs --server-cmd)",
            (fault_checks,),
            opt_in=True,
            timeout=20.0,
        ),
    )
}

#: The profiles a run takes when none is named.
DEFAULT_PROFILES: Final = tuple(name for name, p in PROFILES.items() if not p.opt_in)
