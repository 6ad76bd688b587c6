"""The unit ``python -m catsock deploy systemd`` prints, checked by ``systemd-analyze verify``.

``systemd-analyze verify`` loads the unit as systemd would (every key known and
well formed, the ``ExecStart`` program executable) without running it. It needs
no running systemd, but where it is missing or cannot run at all in this
container the test skips and says why; the content checks run everywhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from catsock.cli import main
from catsock.config import Config
from catsock.groupcommit import SHUTDOWN_FLUSH_SECONDS

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def generate(*args: str) -> str:
    result = CliRunner().invoke(main, ["deploy", "systemd", *args])
    assert result.exit_code == 0, result.output
    return result.output


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze not found: apt-get install systemd")
    # A unit that certainly verifies: if even this fails, the tool cannot run here.
    probe = unit.with_name("probe.service")
    probe.write_text("[Service]\nExecStart=/bin/true\n", encoding="utf-8")
    sanity = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(probe)], capture_output=True, text=True, check=False
    )
    if sanity.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {sanity.stderr.strip()[:200]}")
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, check=False
    )


def test_the_default_unit(tmp_path: Path) -> None:
    text = generate("--command", f"{sys.executable} -m catsock")
    lines = text.splitlines()
    for line in [
        f"ExecStart={sys.executable} -m catsock serve --config /etc/catsock/catsock.toml",
        "User=catsock",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/catsock",
        "StateDirectory=catsock",
        "PrivateTmp=true",
    ]:
        assert line in lines, line
    (stop,) = re.findall(r"^TimeoutStopSec=(\d+)$", text, re.MULTILINE)
    # systemd must not SIGKILL a shutdown still within its bounds: shutdown_timeout,
    # then the log writer's final flush.
    assert int(stop) > Config().shutdown_timeout + SHUTDOWN_FLUSH_SECONDS
    unit = tmp_path / "catsock.service"
    unit.write_text(text, encoding="utf-8")
    checked = verify(unit)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.strip() == "", checked.stderr  # not even a warning


def test_the_unit_follows_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "catsock.toml"
    config.write_text(
        'database = "/srv/catsock data/gw.db"\nshutdown_timeout = 40.0\n', encoding="utf-8"
    )
    text = generate(
        "--user", "gw", "--config", str(config), "--command", f"{sys.executable} -m catsock",
        "--writable", "/var/backups/catsock",
    )  # fmt: skip
    lines = text.splitlines()
    assert "User=gw" in lines
    # A path with a space is quoted: unquoted it would be two paths.
    assert 'ReadWritePaths="/srv/catsock data" /var/backups/catsock' in lines
    assert "WorkingDirectory=/srv/catsock data" in lines
    assert not any(line.startswith("StateDirectory=") for line in lines)  # not under /var/lib
    (stop,) = re.findall(r"^TimeoutStopSec=(\d+)$", text, re.MULTILINE)
    assert int(stop) > 40 + SHUTDOWN_FLUSH_SECONDS
    unit = tmp_path / "catsock.service"
    unit.write_text(text, encoding="utf-8")
    checked = verify(unit)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.strip() == "", checked.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "relative.toml"], "absolute path"),
        (["--command", "catsock"], "absolute path"),
        (["--user", ""], "user name"),
        (["--db", "x.db"], "absolute path"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["deploy", "systemd", *args])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: "), result.output
    assert message in result.output
