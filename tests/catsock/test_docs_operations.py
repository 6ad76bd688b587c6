"""docs/operations.md against the code: every setting, default, variable and command.

The settings reference must list exactly the settings of ``catsock.config.Config``
with their real defaults and variable names; every ``python -m catsock`` line must
parse (checked with ``--help`` appended, through click's runner); every TOML block
must be a valid configuration; every flag and ``CATSOCK_*`` name must exist.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, get_args, get_origin

import attrs
import cattrs
import click
from click.testing import CliRunner

from catsock.cli import main
from catsock.config import Config, load_config

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
REQUIRED = object()
#: How the reference writes a table key it cannot name (``<TYPE>``, ``<name>``).
ANY_KEY = "<*>"
PLACEHOLDER = re.compile(r"<[^>]+>")


@attrs.frozen
class Setting:
    path: str  # "log.policy", "limits.rate.<*>.burst"
    default: Any  # unstructured, or REQUIRED
    env: str | None  # "CATSOCK_LOG__POLICY"; None for a table of tables


def _env_name(path: str) -> str:
    parts = [p if p == ANY_KEY else p.upper() for p in path.split(".")]
    return "CATSOCK_" + "__".join(parts)


#: The effective defaults, as ``python -m catsock config`` prints them with no file
#: and no variables (loading converts, e.g. the default rate limits' ints to floats).
DEFAULTS: dict[str, Any] = cattrs.Converter().unstructure(load_config(environ={}))


def _settings(cls: type, defaults: dict[str, Any], prefix: str = "") -> list[Setting]:
    """Every setting of ``cls``: leaves, tables of values, and tables of tables."""
    out: list[Setting] = []
    for field in attrs.fields(cls):
        path = prefix + field.name
        kind = field.type
        if attrs.has(kind):
            out += _settings(kind, defaults[field.name], path + ".")
        elif get_origin(kind) is dict and attrs.has(get_args(kind)[1]):
            out.append(Setting(path, defaults[field.name], None))
            for sub in attrs.fields(get_args(kind)[1]):
                if sub.default is attrs.NOTHING:
                    default = REQUIRED
                elif hasattr(sub.default, "factory"):  # attrs.Factory
                    default = sub.default.factory()
                else:
                    default = sub.default
                sub_path = f"{path}.{ANY_KEY}.{sub.name}"
                out.append(Setting(sub_path, default, _env_name(sub_path)))
        elif get_origin(kind) is dict:
            out.append(Setting(path, defaults[field.name], _env_name(f"{path}.{ANY_KEY}")))
        else:
            out.append(Setting(path, defaults[field.name], _env_name(path)))
    return out


SETTINGS = _settings(Config, DEFAULTS)


def _same(a: Any, b: Any) -> bool:
    """Equal, with ints and floats told apart (``30`` is not ``30.0``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _table(header: list[str]) -> list[list[str]]:
    """The rows of the doc's markdown table whose header cells are ``header``."""
    lines = DOC.splitlines()
    for index, line in enumerate(lines):
        if [c.strip() for c in line.strip().strip("|").split("|")] == header:
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"no table {header} in {DOC_PATH}")


def _code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match is not None, f"not inline code: {cell!r}"
    return match[1]


def _fenced(language: str) -> list[tuple[int, str]]:
    """(line number, text) of every fenced block in ``language``."""
    blocks = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", DOC, re.MULTILINE | re.DOTALL):
        blocks.append((DOC.count("\n", 0, match.start()) + 1, match[1]))
    return blocks


# -- the configuration reference ----------------------------------------------------------


def test_every_setting_path_appears_in_the_doc() -> None:
    missing = [
        s.path
        for s in SETTINGS
        if not re.search(
            "`" + re.escape(s.path).replace(re.escape(ANY_KEY), PLACEHOLDER.pattern) + "`", DOC
        )
    ]
    assert not missing, f"settings not in {DOC_PATH.name}: {missing}"


def test_reference_table_matches_config_exactly() -> None:
    rows = _table(["setting", "default", "variable", "meaning"])
    documented = {PLACEHOLDER.sub(ANY_KEY, _code(row[0])): row for row in rows}
    assert len(documented) == len(rows), "a setting is listed twice"
    assert sorted(documented) == sorted(s.path for s in SETTINGS)
    for setting in SETTINGS:
        _, default, variable, meaning = documented[setting.path]
        if setting.default is REQUIRED:
            assert default == "required", setting.path
        else:
            value = tomllib.loads(f"v = {_code(default)}")["v"]
            assert _same(value, setting.default), (setting.path, value, setting.default)
        if setting.env is None:
            assert variable == "—", setting.path
        else:
            assert PLACEHOLDER.sub(ANY_KEY, _code(variable)) == setting.env, setting.path
        assert meaning, setting.path


def test_defaults_block_is_what_config_prints() -> None:
    heading = DOC.index("Every setting, with its default")
    (start, block), *_ = [b for b in _fenced("toml") if DOC.index(b[1]) > heading]
    assert _same(tomllib.loads(block), DEFAULTS), f"{DOC_PATH.name}:{start}"


def test_every_toml_block_is_a_valid_config(tmp_path: Path) -> None:
    blocks = _fenced("toml")
    assert len(blocks) >= 3
    for line, block in blocks:
        path = tmp_path / f"line{line}.toml"
        path.write_text(block, encoding="utf-8")
        load_config(path, environ={})  # raises ConfigError naming the problem


def test_environment_examples_set_their_setting() -> None:
    rows = _table(["setting", "variable", "example"])
    assert rows
    for setting, variable, example in rows:
        name, _, value = _code(example).partition("=")
        assert name == _code(variable)
        config = cattrs.Converter().unstructure(load_config(environ={name: value}))
        before: Any = DEFAULTS
        after: Any = config
        for key in _code(setting).split("."):
            before, after = before.get(key), after[key]
        assert after != before, (name, value)


def test_every_catsock_variable_names_a_setting() -> None:
    key = r"(?:<[^>]+>|[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*)"
    known = [
        re.compile(re.escape(s.env).replace(re.escape(ANY_KEY), key)) for s in SETTINGS if s.env
    ]
    known.append(re.compile("CATSOCK_CONFIG"))
    names = set(re.findall(r"CATSOCK_[A-Za-z0-9_<>]+", DOC))
    assert names
    unknown = sorted(n for n in names if not any(p.fullmatch(n) for p in known))
    assert not unknown, f"{DOC_PATH.name} names variables no setting reads: {unknown}"


# -- the command line -----------------------------------------------------------------------


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {prefix: group}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out.update(_all_commands(command, (*prefix, name)))
        else:
            out[(*prefix, name)] = command
    return out


COMMANDS = _all_commands(main)


# The systemd unit and the nginx site are generated (python -m catsock deploy) and
# tested as generated: tests/deploy/test_systemd.py and tests/deploy/test_nginx.py.


def _documented_command_lines() -> list[tuple[str, ...]]:
    lines = []
    for match in re.finditer(r"python -m catsock(?P<rest>[^\n`]*)", DOC):
        rest = match["rest"]
        for stop in (" #", "|", ">", ";", "&&", ")"):
            rest = rest.split(stop, 1)[0]
        args = tuple(shlex.split(rest))
        if args not in lines:
            lines.append(args)
    return lines


DOCUMENTED = _documented_command_lines()


def test_every_command_is_documented() -> None:
    leaves = [c for c, command in COMMANDS.items() if not isinstance(command, click.Group)]
    for command in leaves:
        assert any(line[: len(command)] == command for line in DOCUMENTED), command


def test_every_documented_command_line_parses() -> None:
    """Each line, with ``--help`` appended, exits 0: every command and flag on it exists.

    In-process through click's runner, which runs the same parser as ``python -m
    catsock`` (test_cli.py runs ``--help`` of every command as a real subprocess).
    """
    assert len(DOCUMENTED) > 10
    runner = CliRunner()
    failures = []
    for args in DOCUMENTED:
        result = runner.invoke(main, [*args, "--help"], prog_name="python -m catsock")
        if result.exit_code != 0:
            failures.append(f"python -m catsock {shlex.join(args)}: {result.output}")
        else:
            assert result.output.startswith("Usage: python -m catsock"), result.output
    assert not failures, "\n".join(failures)


def test_every_documented_flag_exists() -> None:
    options = {
        opt
        for command in COMMANDS.values()
        for param in command.params
        for opt in (*param.opts, *param.secondary_opts)
    } | {"--help", "-h"}
    flags = set(re.findall(r"`(--[a-z][a-z-]*)", DOC))
    assert {"--config", "--db", "--user-id", "--json"} <= flags
    assert flags <= options, sorted(flags - options)
