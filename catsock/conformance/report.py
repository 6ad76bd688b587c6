"""What ``python -m catsock conformance`` prints: a header per profile with its
claim and time estimate, one row per check as it finishes, a summary per
profile and in total, and the ``--json`` report. Also parses the command's
``--rate-limit`` values. No I/O: each function returns text or data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protocol import RateLimit

from .profiles import PROFILES
from .results import CheckResult, Status
from .suite import Planned, estimate


def parse_rate_limit(spec: str) -> tuple[str, RateLimit]:
    """``TYPE=PER_MINUTE/BURST`` (``DASHBOARD=100/20``); ``ValueError`` if not."""
    client_type, sep, value = spec.partition("=")
    per_minute, slash, burst = value.partition("/")
    try:
        limit = RateLimit(float(per_minute), int(burst))
    except ValueError:
        limit = None
    if not sep or not slash or not client_type or limit is None:
        raise ValueError(f"{spec!r}: expected TYPE=PER_MINUTE/BURST, as DASHBOARD=100/20")
    if not limit.per_minute > 0 or limit.burst < 1:
        raise ValueError(f"{spec!r}: the rate must be positive and the burst at least 1")
    return client_type, limit


def duration(seconds: float) -> str:
    """``42 s`` or ``3 min 20 s``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    return f"{whole // 60} min {whole % 60} s" if whole % 60 else f"{whole // 60} min"


def run_header(planned: Sequence[Planned], timeout: float | None) -> str:
    profiles = list(dict.fromkeys(item.profile for item in planned))
    each = f"{timeout:g} s" if timeout else "its profile's timeout"
    return (
        f"{len(planned)} checks in {', '.join(profiles)}; at most "
        f"{duration(estimate(planned, timeout))} (each check at most {each}, plus its own waits)"
    )


def profile_header(profile: str, planned: Sequence[Planned], timeout: float | None) -> str:
    mine = [item for item in planned if item.profile == profile]
    limit = timeout or PROFILES[profile].timeout
    return (
        f"== {profile}: {PROFILES[profile].claim}\n"
        f"   {len(mine)} checks, at most {duration(estimate(mine, timeout))} "
        f"({limit:g} s per check)"
    )


def row(result: CheckResult, width: int) -> str:
    """One check: name, status, seconds, and for a failure what went wrong and the
    rule it breaks, with its section of docs/protocol.md."""
    detail = ""
    if result.status is Status.FAIL:
        detail = f"{result.detail} -- rule: {result.where()}" if result.rule else result.detail
    elif result.status is Status.SKIP:
        detail = result.detail
    return f"{result.name:<{width}}  {result.status:<6}  {result.seconds:7.3f}  {detail}".rstrip()


def counts(results: Sequence[CheckResult]) -> dict[Status, int]:
    return {s: sum(r.status is s for r in results) for s in Status}


def count_line(results: Sequence[CheckResult]) -> str:
    n = counts(results)
    return f"{n[Status.PASS]} passed, {n[Status.FAIL]} failed, {n[Status.SKIP]} skipped"


def profile_lines(results: Sequence[CheckResult], profiles: Sequence[str]) -> list[str]:
    """``PROFILE: PASS|FAIL (counts)`` per profile that ran a check, in order."""
    lines = []
    for profile in profiles:
        mine = [r for r in results if r.profile == profile]
        if not mine:
            continue  # --only left none of its checks
        verdict = "FAIL" if counts(mine)[Status.FAIL] else "PASS"
        lines.append(f"{profile}: {verdict} ({count_line(mine)})")
    return lines


def json_report(
    url: str,
    results: Sequence[CheckResult],
    profiles: Sequence[str],
    seconds: float,
    estimated: float,
) -> dict[str, Any]:
    summary = {}
    for profile in profiles:
        mine = [r for r in results if r.profile == profile]
        if not mine:
            continue
        n = counts(mine)
        summary[profile] = {
            "claim": PROFILES[profile].claim,
            "passed": n[Status.PASS],
            "failed": n[Status.FAIL],
            "skipped": n[Status.SKIP],
            "ok": n[Status.FAIL] == 0,
        }
    return {
        "url": url,
        "ok": all(p["ok"] for p in summary.values()),
        "seconds": round(seconds, 3),
        "estimate_seconds": round(estimated, 3),
        "profiles": summary,
        "checks": [r.to_json() for r in results],
    }
