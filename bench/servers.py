"""The servers under test: catsock and the peer relays, started pinned, measured, stopped.

``PEERS`` names every server the harness knows. ``Server.start`` launches one as a
subprocess (on its own CPU via ``taskset``, or ``sched_setaffinity`` when taskset is
missing, with ``RLIMIT_NOFILE`` raised to the hard limit), waits until its port
accepts connections, and ``Server.stop`` ends it. ``cpu_seconds`` and ``rss_kib``
read ``/proc/PID/stat`` and ``/proc/PID/status`` (Linux only).
"""

from __future__ import annotations

import contextlib
import glob
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import trio

__all__ = [
    "PEERS",
    "CatsockTokens",
    "PeerSpec",
    "Server",
    "ServerFailed",
    "cpu_seconds",
    "ensure_node_peer",
    "free_port",
    "kill_leftovers",
    "peer_available",
    "raise_nofile",
    "rss_kib",
    "soak_token_name",
]

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"
REPO_ROOT = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Limits catsock runs with in the benchmark (everything else is its default).
CATSOCK_BENCH_ENV = {
    "CATSOCK_LIMITS__RATE_LIMITS_ENABLED": "false",
    "CATSOCK_LIMITS__PER_IDENTITY_DEFAULT": "1000000",
    "CATSOCK_LIMITS__SEND_QUEUE": "1000000",
    "CATSOCK_LIMITS__MAX_CONNECTIONS": "50000",
}


class ServerFailed(Exception):
    """A server did not start, or died while it was measured."""


@dataclass(frozen=True)
class PeerSpec:
    name: str
    description: str
    #: Speaks socket.io (Engine.IO v4 over WebSocket) instead of seed frames.
    sio: bool = False
    script: str = ""
    node: bool = False


PEERS: dict[str, PeerSpec] = {
    p.name: p
    for p in (
        PeerSpec("catsock", "catsock (trio, validation, routing, SQLite log, real tokens)"),
        PeerSpec(
            "trio-wsproto",
            "trio + wsproto reference relay: 256 KiB reads, frame once, coalesced writes",
            script="wsproto_relay.py",
        ),
        PeerSpec("websockets", "websockets 'asyncio' relay", script="websockets_relay.py"),
        PeerSpec(
            "socketio",
            "python-socketio AsyncServer on uvicorn (seed 001)",
            sio=True,
            script="socketio_relay.py",
        ),
        PeerSpec("ws-node", "Node 'ws' relay", script="ws_relay.mjs", node=True),
        PeerSpec(
            "naive-trio",
            "naive trio-websocket relay (one send_message per recipient)",
            script="naive_trio_relay.py",
        ),
    )
}


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """``pid``'s children, theirs, and so on (``serve --workers`` runs its nodes so)."""
    out: list[int] = []
    children: list[int] = []
    # Per thread: trio starts a process from a worker thread, whose child it is.
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError), open(task) as f:
            children += [int(c) for c in f.read().split()]
    for child in children:
        out += [child, *descendants(child)]
    return out


def _tree(measure: Callable[[int], float], pid: int) -> float:
    total = measure(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError):  # it ended between the listing and the read
            total += measure(child)
    return total


def peer_available(spec: PeerSpec) -> str | None:
    """None if ``spec`` can run here, else the reason it cannot."""
    if spec.node:
        if shutil.which("node") is None:
            return "node is not installed"
        return None
    if spec.name == "socketio":
        import importlib.util

        missing = [m for m in ("socketio", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            return f"missing {', '.join(missing)} (pip install python-socketio uvicorn)"
    if spec.name == "websockets":
        import importlib.util

        if importlib.util.find_spec("websockets") is None:
            return "missing Python package websockets (pip install websockets)"
    return None


def ensure_node_peer(log: Callable[[str], None]) -> str | None:
    """``npm install --prefix bench/peers`` when node_modules is missing; None or a reason."""
    if (PEERS_DIR / "node_modules" / "ws").is_dir():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed, so bench/peers/node_modules cannot be installed"
    log("bench: installing the Node peer's packages (npm install --prefix bench/peers)")
    result = subprocess.run(
        [npm, "install", "--prefix", str(PEERS_DIR), "--no-audit", "--no-fund"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        return f"npm install failed: {result.stderr.strip().splitlines()[-1:]}"
    return None


@dataclass
class CatsockTokens:
    """One database holding a CATS and an AFAD token, made with the real CLI once per run;
    each catsock start gets a fresh copy of it. ``more`` holds the extra tokens asked
    for (the soak's: one identity per AFAD recipient, one for the dashboards), by
    client type, named ``bench-soak-<type>-<i>``."""

    template: Path
    cats: str
    afad: str
    more: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, more: dict[str, int] | None = None) -> CatsockTokens:
        template = directory / "tokens.db"
        plain = [_create_token(template, t, f"bench-{t.lower()}") for t in ("CATS", "AFAD")]
        extra = {
            client_type: [
                _create_token(template, client_type, soak_token_name(client_type, i))
                for i in range(count)
            ]
            for client_type, count in (more or {}).items()
        }
        return cls(template, plain[0], plain[1], extra)


def soak_token_name(client_type: str, i: int) -> str:
    return f"bench-soak-{client_type.lower()}-{i}"


def _create_token(template: Path, client_type: str, name: str) -> str:
    """``python -m catsock token create``; returns the token it printed."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "catsock",
            "token",
            "create",
            "--client-type",
            client_type,
            "--name",
            name,
            "--db",
            str(template),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_clean_env(),
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise ServerFailed(f"catsock token create failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CATSOCK_") and k != "SOCKET_AUTH_TOKEN"
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(eq=False)
class Server:
    """A running server. ``tokens`` is what clients send: real ones for catsock."""

    spec: PeerSpec
    port: int
    process: trio.Process
    log_path: Path
    cats_token: str = "bench"
    afad_token: str = "bench"
    workdir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """The server's CPU time so far, its worker processes' included."""
        return _tree(cpu_seconds, self.pid)

    def rss_kib(self) -> int:
        return int(_tree(rss_kib, self.pid))

    def alive(self) -> bool:
        return self.process.poll() is None

    @classmethod
    async def start(
        cls,
        spec: PeerSpec,
        *,
        log_dir: Path,
        tag: str,
        cpu: int | None,
        tokens: CatsockTokens | None = None,
        env: dict[str, str] | None = None,
        limits: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> Server:
        """Start ``spec`` and wait until it listens. catsock gets ``limits`` (by
        default ``CATSOCK_BENCH_ENV``), then ``env``, in its environment."""
        port = free_port()
        environment = _clean_env()
        workdir: Path | None = None
        cats = afad = "bench"
        if spec.name == "catsock":
            if tokens is None:
                raise ServerFailed("catsock needs tokens")
            workdir = Path(tempfile.mkdtemp(prefix="catsock-bench-"))
            db = workdir / "catsock.db"
            shutil.copyfile(tokens.template, db)
            cats, afad = tokens.cats, tokens.afad
            environment.update(CATSOCK_BENCH_ENV if limits is None else limits)
            command = [
                sys.executable,
                "-m",
                "catsock",
                "serve",
                "--port",
                str(port),
                "--db",
                str(db),
                *(args or []),
            ]
        elif spec.node:
            command = ["node", str(PEERS_DIR / spec.script), "--port", str(port)]
            environment["NODE_PATH"] = str(PEERS_DIR / "node_modules")
        else:
            command = [sys.executable, str(PEERS_DIR / spec.script), "--port", str(port)]
        environment.update(env or {})
        taskset = shutil.which("taskset")
        if cpu is not None and taskset is not None:
            command = [taskset, "-c", str(cpu), *command]
        log_path = log_dir / f"{tag}.log"
        pin = cpu if taskset is None else None
        with _open_log(log_path) as log_file:
            process = await trio.lowlevel.open_process(
                command,
                cwd=REPO_ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _child_setup(pin),
            )
        server = cls(spec, port, process, log_path, cats, afad, workdir, dict(env or {}))
        _running.add(server)
        try:
            await server._wait_ready()
        except BaseException:
            await server.stop()
            raise
        return server

    async def _wait_ready(self, within: float = 30.0) -> None:
        with trio.move_on_after(within):
            while True:
                if not self.alive():
                    raise ServerFailed(
                        f"{self.spec.name} exited with {self.process.returncode}; "
                        f"see {self.log_path}: {self.log_tail()}"
                    )
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return
        raise ServerFailed(f"{self.spec.name} did not listen within {within:.0f} s")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    @property
    def database(self) -> Path | None:
        """catsock's database (None for the peers); gone after ``stop`` unless kept."""
        return None if self.workdir is None else self.workdir / "catsock.db"

    async def stop(self, grace: float = 15.0, *, keep_workdir: bool = False) -> None:
        """SIGTERM, then SIGKILL after ``grace``; the work directory is removed unless
        ``keep_workdir`` (then call ``cleanup`` once done with it)."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.process.wait()
            if self.alive():
                self.process.kill()
                await self.process.wait()
        _running.discard(self)
        if not keep_workdir:
            self.cleanup()

    def cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")  # closed by the caller's with


def _child_setup(cpu: int | None) -> None:
    raise_nofile()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


#: Servers started and not yet stopped, so ``kill_leftovers`` can end them.
_running: set[Server] = set()


def kill_leftovers() -> None:
    """Kill every server still running (after an interrupted run)."""
    for server in list(_running):
        if server.alive():
            server.process.kill()
        _running.discard(server)
