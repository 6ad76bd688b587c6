"""A real nginx for the deployment tests: Debian's package, run unprivileged.

``running_nginx`` starts ``nginx -g 'daemon off;'`` with its own prefix,
configuration, pid and log files under the test's directory, including the site
``python -m catsock deploy nginx`` printed, and waits for its "start worker
process" notice on stderr (nothing sleeps). Ports are free loopback ports.
``Nginx.reload`` is ``nginx -s reload`` and waits until the new workers run.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trustme

from tests.lines import LineReader

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx not found: apt-get install nginx (.ci/run does)"
)
STARTED = re.compile(r"start worker process")
RELOADING = re.compile(r"reconfiguring")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@attrs.frozen
class Tls:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_file: Path


def make_tls(directory: Path) -> Tls:
    """A CA and a certificate for ``localhost`` / ``127.0.0.1``, as PEM files."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    ca_file = directory / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return Tls(ca, cert, key, ca_file)


async def catsock_cli(*args: str) -> str:
    """``python -m catsock ARGS``'s stdout (the command must succeed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATSOCK_")}
    done = await trio.run_process(
        [sys.executable, "-m", "catsock", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr.decode()
    return str(done.stdout.decode())


def main_conf(prefix: Path, *, worker_shutdown_timeout: float | None) -> str:
    """An nginx.conf that keeps everything under ``prefix`` and includes the site."""
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    shutdown = (
        f"worker_shutdown_timeout {worker_shutdown_timeout}s;\n"
        if worker_shutdown_timeout is not None
        else ""
    )
    temp = prefix / "temp"
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\n"
        "error_log stderr notice;\n"
        f"{shutdown}"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {prefix}/access.log;\n"
        f"    client_body_temp_path {temp}/body;\n"
        f"    proxy_temp_path {temp}/proxy;\n"
        f"    fastcgi_temp_path {temp}/fastcgi;\n"
        f"    uwsgi_temp_path {temp}/uwsgi;\n"
        f"    scgi_temp_path {temp}/scgi;\n"
        f"    include {prefix}/catsock.conf;\n"
        "}\n"
    )


@attrs.define
class Nginx:
    prefix: Path
    process: trio.Process
    err: LineReader

    def _argv(self, *extra: str) -> list[str]:
        assert NGINX is not None
        conf = self.prefix / "nginx.conf"
        return [NGINX, "-p", f"{self.prefix}/", "-c", str(conf), "-e", "stderr", *extra]

    @property
    def stderr(self) -> str:
        return "\n".join(self.err.lines)

    async def reload(self) -> None:
        """``nginx -s reload``; returns once the new worker has started."""
        before = len(self.err.lines)
        await trio.run_process(self._argv("-s", "reload"), capture_stderr=True)

        def reloaded(lines: list[str]) -> bool:
            after = lines[before:]
            at = next((i for i, line in enumerate(after) if RELOADING.search(line)), None)
            return at is not None and any(STARTED.search(line) for line in after[at:])

        await self.err.wait_for(reloaded)


async def nginx_test(prefix: Path) -> subprocess.CompletedProcess[bytes]:
    """``nginx -t`` on the configuration under ``prefix``."""
    assert NGINX is not None
    argv = [NGINX, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-t"]
    return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


def lay_out(prefix: Path, site: str, *, worker_shutdown_timeout: float | None = None) -> None:
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    (prefix / "catsock.conf").write_text(site, encoding="utf-8")
    conf = main_conf(prefix, worker_shutdown_timeout=worker_shutdown_timeout)
    (prefix / "nginx.conf").write_text(conf, encoding="utf-8")


@asynccontextmanager
async def running_nginx(
    prefix: Path, site: str, *, worker_shutdown_timeout: float | None = None
) -> AsyncIterator[Nginx]:
    """nginx serving ``site`` (its own files under ``prefix``) until the block ends."""
    assert NGINX is not None
    lay_out(prefix, site, worker_shutdown_timeout=worker_shutdown_timeout)
    conf = prefix / "nginx.conf"
    process = await trio.lowlevel.open_process(
        [NGINX, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    nginx = Nginx(prefix, process, LineReader(process.stderr))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(nginx.err.run)
            with trio.fail_after(30):
                await nginx.err.wait_for_match(STARTED)
            try:
                yield nginx
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.terminate()  # SIGTERM: nginx's fast shutdown
                    with trio.move_on_after(10):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
    finally:
        with trio.move_on_after(5, shield=True):
            await process.stderr.aclose()
