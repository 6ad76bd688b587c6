"""docs/deploy.md runs real commands: each ``python -m catsock`` line parses, and its
``deploy systemd`` line makes a unit that ``systemd-analyze verify`` accepts.

(Its ``deploy nginx`` line and ``catsock.toml`` are what tests/deploy/test_nginx.py
runs in nginx; its ``db`` lines are the commands tests/deploy/test_backup.py runs.)
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from click.testing import CliRunner

from catsock.cli import main
from tests.deploy.test_systemd import verify

DOC = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text(encoding="utf-8")


def command_lines() -> list[list[str]]:
    lines = []
    for match in re.finditer(r"python -m catsock (?P<rest>[^\n`]*)", DOC):
        rest = match["rest"]
        for stop in (" #", "|", ">", "&&", ";"):
            rest = rest.split(stop, 1)[0]
        lines.append(shlex.split(rest))
    return lines


def test_every_command_line_parses() -> None:
    lines = command_lines()
    commands = {tuple(line[:2]) for line in lines}
    for needed in [("deploy", "nginx"), ("deploy", "systemd"), ("deploy", "binary"),
                   ("db", "backup"), ("db", "check"), ("db", "restore"), ("token", "create")]:
        assert needed in commands, needed  # fmt: skip
    for args in lines:
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)


def test_the_documented_systemd_line_makes_a_unit_that_verifies(tmp_path: Path) -> None:
    (args,) = [line for line in command_lines() if line[:2] == ["deploy", "systemd"]]
    # The doc's config file is not on this machine: the unit then uses the defaults.
    # Its ExecStart must exist for verify: this interpreter instead of /opt/catsock.
    result = CliRunner().invoke(main, [*args, "--command", f"{sys.executable} -m catsock"])
    assert result.exit_code == 0, result.output
    assert "ExecStart=" in result.output
    unit = tmp_path / "catsock.service"
    unit.write_text(result.output, encoding="utf-8")
    checked = verify(unit)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.strip() == "", checked.stderr


def test_deploy_nginx_follows_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "catsock.toml"
    config.write_text(
        'host = "0.0.0.0"\nport = 9100\n[heartbeat]\nmax_interval = 50000.0\n'
        "[http]\nmax_wait = 300.0\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        main, ["deploy", "nginx", "--config", str(config), "--server-name", "gw.example"]
    )
    assert result.exit_code == 0, result.output
    site = result.output
    assert "    server 127.0.0.1:9100;" in site.splitlines()  # the bound port, on loopback
    (ws_timeout,) = re.findall(r"location /ws \{.*?proxy_read_timeout (\d+)s;", site, re.S)
    assert int(ws_timeout) > 2 * 50000  # longer than two heartbeats, whatever they are
    (poll_timeout,) = re.findall(r"location / \{.*?proxy_read_timeout (\d+)s;", site, re.S)
    assert int(poll_timeout) > 300
    assert "listen 80 " in site  # no certificate: plain HTTP
