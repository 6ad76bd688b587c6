"""``python -m catsock conformance``: check any gateway against docs/protocol.md.

The command's arguments become a run of ``catsock.conformance`` (profiles, the
target's limits, its process for the faults profile, its JWT secret for the
expiry checks); rows are printed as checks finish (docs/protocol.md §12.3).
"""

from __future__ import annotations

import signal
import sys
from functools import partial
from pathlib import Path

import click
import trio

from .cli import main

__all__ = ["conformance"]


class _UsageProblem(click.ClickException):
    """One ``Error:`` line and exit status 2 (bad arguments, unreachable gateway)."""

    exit_code = 2


@main.command()
@click.argument("url", required=False)
@click.option(
    "--url",
    "url_option",
    envvar="CATSOCK_URL",
    help="The gateway's WebSocket URL, instead of the URL argument (default: $CATSOCK_URL).",
)
@click.option(
    "--token",
    "token_specs",
    multiple=True,
    metavar="KIND=TOKEN",
    help="A token per kind: CATS, AFAD, DASHBOARD (admin) and optionally DASHBOARD@500 "
    "(bound to user 500). Checks needing a missing token are skipped. Repeatable.",
)
@click.option(
    "--profile",
    "profile_specs",
    multiple=True,
    metavar="NAME",
    help="seed, strict, extensions, limits or faults (opt-in); repeatable or comma-separated. "
    "Default: seed, strict, extensions and limits.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds each check may take (default: the profile's; seed 3, faults 20, others 5).",
)
@click.option(
    "--only", multiple=True, metavar="PREFIX", help="Run the checks whose name starts so."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report (rows go to stderr).")
@click.option(
    "--max-message-size",
    type=click.IntRange(min=64),
    default=None,
    help="limits: the target's size limit in bytes (default catsock's, 65536).",
)
@click.option(
    "--auth-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="limits: the target's auth deadline in seconds (default catsock's, 10).",
)
@click.option(
    "--rate-limit",
    "rate_specs",
    multiple=True,
    metavar="TYPE=PER_MINUTE/BURST",
    help="limits: a client type's rate limit at the target (default catsock's). Repeatable.",
)
@click.option("--no-rate-limits", is_flag=True, help="limits: the target has no rate limits.")
@click.option(
    "--server-cmd",
    metavar="COMMAND",
    help="faults: the command that starts the target (listening at URL); the run starts "
    "it, kills it mid-stream and starts it again.",
)
@click.option(
    "--kill-signal",
    default="KILL",
    show_default=True,
    metavar="SIGNAL",
    help="faults: the signal that kills the target.",
)
@click.option(
    "--server-log",
    type=click.Path(dir_okay=False),
    help="faults: append the target's output to this file (default: discarded).",
)
@click.option(
    "--jwt-secret",
    envvar="CATSOCK_CONFORMANCE_JWT_SECRET",
    help="extensions: the target's jwt.secret, to check token expiry and refresh with "
    "short-lived JWTs it mints ($CATSOCK_CONFORMANCE_JWT_SECRET; without it those "
    "checks are skipped).",
)
@click.option("--jwt-issuer", default="", help="extensions: the target's jwt.issuer.")
@click.option("--jwt-audience", default="", help="extensions: the target's jwt.audience.")
@click.option(
    "--jwt-leeway",
    type=click.FloatRange(min=0),
    default=0.0,
    help="extensions: the target's jwt.leeway in seconds.",
)
@click.option("--insecure", is_flag=True, help="wss://: do not verify the certificate.")
@click.option(
    "--cafile",
    type=click.Path(exists=True, dir_okay=False),
    help="wss://: trust the CA certificates in this PEM file.",
)
def conformance(
    url: str | None,
    url_option: str | None,
    token_specs: tuple[str, ...],
    profile_specs: tuple[str, ...],
    timeout: float | None,
    only: tuple[str, ...],
    as_json: bool,
    max_message_size: int | None,
    auth_timeout: float | None,
    rate_specs: tuple[str, ...],
    no_rate_limits: bool,
    server_cmd: str | None,
    kill_signal: str,
    server_log: str | None,
    jwt_secret: str | None,
    jwt_issuer: str,
    jwt_audience: str,
    jwt_leeway: float,
    insecure: bool,
    cafile: str | None,
) -> None:
    """Check the gateway at URL (ws://HOST:PORT/ws) against docs/protocol.md.

    Prints one row per check as it finishes (PASS/FAIL/SKIP; a failure names the
    rule and its section of docs/protocol.md), then a verdict per profile.
    Exits 1 if a check of an asked profile failed, 2 for bad arguments.
    """
    import json
    import shlex
    import ssl
    import time
    import urllib.parse

    from . import conformance as conf
    from .conformance import report

    if url is None:
        if url_option is None:
            raise _UsageProblem("give the gateway's URL: an argument, --url or $CATSOCK_URL")
        url = url_option

    tokens: dict[str, str] = {}
    for spec in token_specs:
        kind, sep, value = spec.partition("=")
        if not sep or not value:
            raise _UsageProblem(f"--token {spec!r}: expected KIND=TOKEN")
        if kind not in conf.TOKEN_KINDS:
            raise _UsageProblem(
                f"--token {spec.split('=')[0]!r}: the kind must be one of "
                + ", ".join(conf.TOKEN_KINDS)
            )
        if kind in tokens:
            raise _UsageProblem(f"--token {kind}: given twice")
        tokens[kind] = value
    profiles = [p.strip() for spec in profile_specs for p in spec.split(",") if p.strip()]
    profiles = list(dict.fromkeys(profiles)) or list(conf.DEFAULT_PROFILES)
    limits = conf.TargetLimits()
    rates = dict(limits.rate_limits or {})
    for spec in rate_specs:
        try:
            client_type, rate = report.parse_rate_limit(spec)
        except ValueError as exc:
            raise _UsageProblem(f"--rate-limit {exc}") from None
        rates[client_type] = rate
    if no_rate_limits and rate_specs:
        raise _UsageProblem("--no-rate-limits and --rate-limit exclude each other")
    limits = conf.TargetLimits(
        max_message_size=max_message_size or limits.max_message_size,
        auth_timeout=auth_timeout or limits.auth_timeout,
        rate_limits=None if no_rate_limits else rates,
    )
    server: conf.ServerControl | None = None
    if server_cmd is not None:
        try:
            sig = signal.Signals[f"SIG{kill_signal.upper().removeprefix('SIG')}"]
        except KeyError:
            raise _UsageProblem(f"--kill-signal {kill_signal!r}: not a signal name") from None
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "wss" else 80)
            command = shlex.split(server_cmd)
        except ValueError as exc:
            raise _UsageProblem(f"--server-cmd / URL: {exc}") from None
        if not command:
            raise _UsageProblem("--server-cmd is empty")
        log = Path(server_log) if server_log else None
        server = conf.ServerControl(
            command, parts.hostname or "127.0.0.1", port, kill_signal=sig, log=log
        )
    elif "faults" in profiles:
        raise _UsageProblem("--profile faults needs --server-cmd (control of the target)")
    if insecure and cafile:
        raise _UsageProblem("--insecure and --cafile exclude each other")
    context: ssl.SSLContext | None = None
    if url.lower().startswith("wss://"):
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise _UsageProblem(f"--cafile {cafile}: {exc}") from None
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    elif insecure or cafile:
        raise _UsageProblem("--insecure and --cafile apply to wss:// URLs only")
    try:
        planned = conf.plan(profiles, only)
    except ValueError as exc:
        raise _UsageProblem(str(exc)) from None
    if not planned:
        raise _UsageProblem(f"no check name starts with {' or '.join(map(repr, only))}")

    # Rows go to stdout, or to stderr when stdout carries the JSON report.
    def say(text: str) -> None:
        click.echo(text, err=as_json)

    width = max(len(item.name) for item in planned)
    shown: set[str] = set()

    def on_result(result: conf.CheckResult) -> None:
        if result.profile not in shown:
            shown.add(result.profile)
            say(report.profile_header(result.profile, planned, timeout))
        say(report.row(result, width))

    started = time.monotonic()
    try:
        results = trio.run(
            partial(
                conf.run_conformance,
                url,
                tokens,
                profiles=profiles,
                timeout=timeout,
                ssl_context=context,
                only=only,
                limits=limits,
                server=server,
                jwt=None
                if not jwt_secret
                else conf.JwtTarget(
                    secret=jwt_secret,
                    issuer=jwt_issuer,
                    audience=jwt_audience,
                    leeway=jwt_leeway,
                ),
                on_start=lambda: say(report.run_header(planned, timeout)),
                on_result=on_result,
            )
        )
    except ValueError as exc:
        raise _UsageProblem(str(exc)) from None
    except conf.GatewayUnreachable as exc:
        raise _UsageProblem(f"cannot reach the gateway: {exc}") from None
    except KeyboardInterrupt:
        sys.exit(130)
    seconds = time.monotonic() - started
    asked = [p for p in conf.PROFILES if p in profiles]
    for line in report.profile_lines(results, asked):
        say(line)
    say(f"{report.count_line(results)} in {report.duration(seconds)}")
    if as_json:
        data = report.json_report(url, results, asked, seconds, conf.estimate(planned, timeout))
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    if any(r.status is conf.Status.FAIL for r in results):
        sys.exit(1)
