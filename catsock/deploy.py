"""Deployment files: an nginx site and a systemd unit, generated from a few choices.

``python -m catsock deploy nginx`` and ``deploy systemd`` print what these
functions return; docs/deploy.md installs them, and tests/deploy/ runs the nginx
site in a real nginx and checks the unit with ``systemd-analyze verify``. The
text is built here rather than kept as templates so that what it says (the
timeouts, the paths) follows the gateway's own settings.

``build_binary`` (``deploy binary``) makes a single-file executable with
PyInstaller, from the optional ``binary`` extra.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import attrs

from .config import Config
from .groupcommit import SHUTDOWN_FLUSH_SECONDS

__all__ = [
    "DEFAULT_COMMAND",
    "BinaryBuildError",
    "NginxSite",
    "SystemdUnit",
    "build_binary",
    "nginx_site",
    "systemd_unit",
]

#: How the unit starts catsock by default: the virtualenv docs/deploy.md creates.
DEFAULT_COMMAND = "/opt/catsock/.venv/bin/python -m catsock"
#: nginx's idle limit on a proxied WebSocket (no byte either way for this long):
#: a seed PHP receiver may hear nothing for hours, and a negotiated heartbeat
#: pings at most every ``heartbeat.max_interval`` seconds.
WEBSOCKET_IDLE = 86400
#: TCP keepalive nginx asks for on client connections (idle:interval:count), as
#: the gateway's own ``[keepalive]`` defaults: a vanished client is found in
#: about two minutes, and nginx then closes its upstream connection too.
CLIENT_KEEPALIVE = "60s:15s:4"


def _host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or (with a default port) ``HOST``."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if sep else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r}: expected HOST:PORT")
        port_text = str(default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    if not host:
        raise ValueError(f"{text!r}: no host")
    return host, int(port_text)


def _nginx_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR") from None


@attrs.frozen
class NginxSite:
    """What ``nginx_site`` needs; see ``python -m catsock deploy nginx --help``."""

    server_name: str
    #: ``PORT``, ``ADDR:PORT`` or ``[V6]:PORT``; one ``listen`` line each. Empty:
    #: 443 with TLS, 80 without.
    listen: Sequence[str] = ()
    upstream: str = "127.0.0.1:8765"
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Who may read ``/metrics`` through nginx.
    metrics_allow: Sequence[str] = ("127.0.0.1", "::1")
    #: Longest long-poll the gateway allows (``http.max_wait``).
    max_wait: float = 60.0
    #: The gateway's largest message (``limits.max_message_size``): the body limit.
    max_message_size: int = 64 * 1024
    #: ``heartbeat.max_interval``: the WebSocket idle limit must exceed two of them.
    heartbeat_max_interval: float = 300.0

    @classmethod
    def for_config(cls, config: Config, **choices: object) -> NginxSite:
        """A site for the gateway ``config`` describes (its port, limits, heartbeat)."""
        host = config.host if config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        values: dict[str, object] = {
            "upstream": _nginx_address(host, config.port),
            "max_wait": config.http.max_wait,
            "max_message_size": config.limits.max_message_size,
            "heartbeat_max_interval": config.heartbeat.max_interval,
        }
        values.update({k: v for k, v in choices.items() if v not in (None, ())})
        return cls(**values)  # type: ignore[arg-type]


def nginx_site(site: NginxSite) -> str:
    """An nginx site (for ``sites-available/``, included in ``http {}``) that
    forwards ``/ws`` as WebSocket and everything else as HTTP to the gateway.

    Raises ``ValueError`` for a bad address, port or name."""
    name = site.server_name.strip()
    if not name or any(c.isspace() or c in ";{}'\"$\\" for c in name):
        raise ValueError(f"--server-name {site.server_name!r}: expected a host name")
    if bool(site.tls_cert) != bool(site.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = bool(site.tls_cert)
    upstream = _nginx_address(*_host_port(site.upstream))
    listens = [
        _nginx_address(*_host_port(entry)) if not entry.isdigit() else str(_port(entry))
        for entry in (site.listen or (["443"] if tls else ["80"]))
    ]
    allow = [_cidr(entry) for entry in site.metrics_allow]
    ws_idle = max(WEBSOCKET_IDLE, int(2 * site.heartbeat_max_interval) + 60)
    poll_timeout = int(site.max_wait) + 30
    # An HTTP publish may be 4 × max_message_size (UTF-8); nginx refuses more with 413.
    body = max(1, -(-4 * site.max_message_size // (1024 * 1024)))
    ssl = " ssl" if tls else ""
    out: list[str] = [
        f"# catsock behind nginx for {name}: generated by",
        f"#   {_command_line(site)}",
        "# Install as /etc/nginx/sites-available/catsock (docs/deploy.md). The gateway",
        "# must name this nginx a trusted proxy, so that its per-address limits and",
        "# its IP allow-list see the client address nginx puts in X-Forwarded-For:",
        "#   [guard]",
        '#   trusted_proxies = ["127.0.0.1", "::1"]',
        "",
        "upstream catsock {",
        f"    server {upstream};",
        "}",
        "",
        "# WebSocket upgrades keep Upgrade/Connection; other requests close upstream.",
        "map $http_upgrade $catsock_connection {",
        "    default upgrade;",
        "    ''      close;",
        "}",
        "",
        "# The Host the browser sent, port included: the gateway compares a",
        "# dashboard's Origin with it. HTTP/1.0 requests without one get $host.",
        "map $http_host $catsock_host {",
        "    ''      $host;",
        "    default $http_host;",
        "}",
        "",
        "server {",
    ]
    for address in listens:
        out.append(f"    listen {address}{ssl} so_keepalive={CLIENT_KEEPALIVE};")
    out += [f"    server_name {name};", ""]
    if tls:
        out += [
            f"    ssl_certificate     {_quoted(site.tls_cert or '')};",
            f"    ssl_certificate_key {_quoted(site.tls_key or '')};",
            "    ssl_protocols       TLSv1.2 TLSv1.3;",
            "    ssl_prefer_server_ciphers off;",
            "    ssl_session_cache   shared:catsock_tls:10m;",
            "    ssl_session_timeout 1d;",
            "    ssl_session_tickets off;",
            "",
        ]
    out += [
        f"    client_max_body_size {body}m;",
        "",
        "    # Each location sets every proxy header it sends: a location with any",
        "    # proxy_set_header of its own inherits none from the server level.",
        "",
        "    # The WebSocket endpoint. nginx closes a tunnel that carries nothing for",
        "    # proxy_read_timeout: longer than two heartbeat.max_interval, and long",
        "    # enough for seed PHP receivers, which may hear nothing for hours.",
        "    location /ws {",
        "        proxy_pass http://catsock;",
        *_PROXY_HEADERS,
        "        proxy_set_header Upgrade $http_upgrade;",
        "        proxy_set_header Connection $catsock_connection;",
        f"        proxy_read_timeout {ws_idle}s;",
        f"        proxy_send_timeout {ws_idle}s;",
        "        proxy_buffering off;",
        "    }",
        "",
        "    # Prometheus metrics: from these addresses only.",
        "    location = /metrics {",
        *(f"        allow {cidr};" for cidr in allow),
        "        deny  all;",
        "        proxy_pass http://catsock;",
        *_PROXY_HEADERS,
        "        proxy_set_header Connection close;",
        "    }",
        "",
        "    # The HTTP API (publish, long-poll GET /api/events), /health and the dashboard.",
        "    location / {",
        "        proxy_pass http://catsock;",
        *_PROXY_HEADERS,
        "        proxy_set_header Connection close;",
        f"        proxy_read_timeout {poll_timeout}s;  # a long-poll waits up to http.max_wait",
        "        proxy_buffering off;",
        "    }",
        "}",
    ]
    return "\n".join(out) + "\n"


#: What every location sends upstream: the Host the client asked for and, for the
#: gateway's trusted_proxies, the client's address (appended to X-Forwarded-For).
_PROXY_HEADERS = (
    "        proxy_http_version 1.1;",
    "        proxy_set_header Host $catsock_host;",
    "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    "        proxy_set_header X-Forwarded-Proto $scheme;",
    "        proxy_set_header X-Real-IP $remote_addr;",
)


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"--listen {text}: the port must be 1-65535")
    return port


def _quoted(path: str) -> str:
    if any(c.isspace() or c in ";{}\"'$\\" for c in path):
        raise ValueError(f"{path!r}: nginx paths here may not hold spaces, quotes, ; {{ }} or $")
    return path


def _command_line(site: NginxSite) -> str:
    args = ["python -m catsock deploy nginx", "--server-name", site.server_name]
    for entry in site.listen:
        args += ["--listen", entry]
    args += ["--upstream", site.upstream]
    if site.tls_cert:
        args += ["--tls-cert", site.tls_cert, "--tls-key", site.tls_key or ""]
    if tuple(site.metrics_allow) != ("127.0.0.1", "::1"):
        for entry in site.metrics_allow:
            args += ["--metrics-allow", entry]
    return " ".join(a if a.startswith("python") else shlex.quote(a) for a in args)


@attrs.frozen
class SystemdUnit:
    """What ``systemd_unit`` needs; see ``python -m catsock deploy systemd --help``."""

    user: str = "catsock"
    config_path: str = "/etc/catsock/catsock.toml"
    #: How catsock is started (``serve --config ...`` is added).
    command: str = DEFAULT_COMMAND
    #: The gateway's database (``database`` in its config): its directory is the one
    #: writable path.
    database: str = "/var/lib/catsock/catsock.db"
    shutdown_timeout: float = 10.0
    #: Extra paths the gateway may write (e.g. where ``db backup`` writes).
    writable: Sequence[str] = ()
    environment_file: str | None = None


def systemd_unit(unit: SystemdUnit) -> str:
    """A hardened ``catsock.service``. Raises ``ValueError`` for relative paths."""
    for what, path in (("--config", unit.config_path), ("the database", unit.database)):
        if not PurePosixPath(path).is_absolute():
            raise ValueError(f"{what} {path!r}: the unit needs an absolute path")
    argv = shlex.split(unit.command)
    if not argv or not PurePosixPath(argv[0]).is_absolute():
        raise ValueError(f"--command {unit.command!r}: must start with an absolute path")
    if not unit.user or any(c.isspace() for c in unit.user):
        raise ValueError(f"--user {unit.user!r}: expected a user name")
    data_dir = str(PurePosixPath(unit.database).parent)
    writable = [data_dir, *(str(PurePosixPath(p)) for p in unit.writable)]
    for path in writable:
        if not PurePosixPath(path).is_absolute():
            raise ValueError(f"--writable {path!r}: the unit needs an absolute path")
    # SIGTERM, then up to shutdown_timeout closing connections plus the final log
    # flush; systemd waits that long and a margin before SIGKILL.
    stop = int(unit.shutdown_timeout + SHUTDOWN_FLUSH_SECONDS + 15)
    exec_start = " ".join([*(_systemd_word(a) for a in argv), "serve", "--config"])
    exec_start += " " + _systemd_word(unit.config_path)
    state = data_dir.removeprefix("/var/lib/") if data_dir.startswith("/var/lib/") else None
    lines = [
        "# catsock.service: generated by python -m catsock deploy systemd (docs/deploy.md).",
        "# Install as /etc/systemd/system/catsock.service, then:",
        "#   systemctl daemon-reload && systemctl enable --now catsock",
        "[Unit]",
        "Description=catsock WebSocket event gateway",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=simple",
        f"User={unit.user}",
        f"Group={unit.user}",
        f"WorkingDirectory={data_dir}",
        f"ExecStart={exec_start}",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if unit.environment_file:
        lines.append(f"EnvironmentFile={unit.environment_file}")
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        "# Graceful shutdown: SIGTERM closes every connection with 1001 and flushes",
        "# the log within shutdown_timeout + 5 s; SIGKILL only after TimeoutStopSec.",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={stop}",
        "LimitNOFILE=65536",
        "",
        "# The database's directory is the only writable path.",
    ]
    if state is not None and "/" not in state:
        lines += [f"StateDirectory={state}", "StateDirectoryMode=0750"]
    lines += [
        f"ReadWritePaths={' '.join(_systemd_word(path) for path in writable)}",
        "UMask=0027",
        "",
        "# Hardening",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "PrivateDevices=true",
        "ProtectKernelTunables=true",
        "ProtectKernelModules=true",
        "ProtectKernelLogs=true",
        "ProtectControlGroups=true",
        "ProtectClock=true",
        "ProtectHostname=true",
        "ProtectProc=invisible",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "RestrictNamespaces=true",
        "RestrictRealtime=true",
        "RestrictSUIDSGID=true",
        "LockPersonality=true",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _systemd_word(word: str) -> str:
    """One ExecStart= word: quoted when it holds spaces, ``%`` and ``$`` escaped."""
    word = word.replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;" for c in word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


# -- the single-file binary ------------------------------------------------------------


class BinaryBuildError(Exception):
    """PyInstaller is missing or failed (the message says which)."""


_ENTRY = """\
import multiprocessing
import sys

from catsock.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main(prog_name="catsock"))
"""


_EXCLUDED = ("numpy", "pandas", "matplotlib", "PIL", "tkinter", "IPython", "pytest", "hypothesis")


def build_binary(out: Path, *, name: str = "catsock", quiet: bool = True) -> Path:
    """Build ``out/NAME``: one executable holding Python, catsock, its dashboard
    (catsock/static) and the protocol's conformance vectors. Returns its path."""
    if importlib.util.find_spec("PyInstaller") is None:
        raise BinaryBuildError(
            "PyInstaller is not installed: pip install 'catsock[binary]' "
            "(or pip install pyinstaller) in this environment"
        )
    import catsock
    import protocol

    static = Path(catsock.__file__).parent / "static"
    vectors = Path(protocol.__file__).parent / "vectors"
    for directory in (static, vectors):
        if not directory.is_dir():
            raise BinaryBuildError(f"{directory} is missing: build from a complete install")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="catsock-binary-") as work:
        entry = Path(work) / "catsock_main.py"
        entry.write_text(_ENTRY, encoding="utf-8")
        argv = [
            sys.executable,
            "-m",
            "PyInstaller",
            "--onefile",
            "--noconfirm",
            "--clean",
            "--name",
            name,
            "--distpath",
            str(out),
            "--workpath",
            str(Path(work) / "build"),
            "--specpath",
            work,
            "--add-data",
            f"{static}{os.pathsep}catsock/static",
            "--add-data",
            f"{vectors}{os.pathsep}protocol/vectors",
            # Imported by name at run time (click commands, lazy imports).
            "--collect-submodules",
            "catsock",
            "--collect-submodules",
            "protocol",
            "--collect-submodules",
            "storage",
            # Optional imports of dependencies (sqlite-utils tries numpy) that the
            # gateway never needs; without these the file is twice the size.
            *(f"--exclude-module={module}" for module in _EXCLUDED),
            "--log-level",
            "WARN" if quiet else "INFO",
            str(entry),
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
            raise BinaryBuildError(f"PyInstaller failed (exit {done.returncode}):\n{tail}")
    binary = out / name
    if not binary.is_file():
        raise BinaryBuildError(f"PyInstaller reported success but {binary} is missing")
    return binary
