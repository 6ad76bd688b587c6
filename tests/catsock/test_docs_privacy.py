"""docs/privacy.md against the code and the tests: every claim names the test that checks it.

Each reference ``tests/...py::test_name`` must name a test that exists; every row of
the "where personal data can be" table and every bullet must name at least one; the
defaults the page quotes must be the configuration's.
"""

from __future__ import annotations

import re
from pathlib import Path

from catsock.config import load_config
from protocol.privacy import DEFAULT_PERSONAL_FIELDS

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "privacy.md").read_text(encoding="utf-8")
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_named_test_exists() -> None:
    found = REFERENCE.findall(DOC)
    assert len(found) >= 15
    for path, name in found:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), (path, name)


def test_every_row_and_bullet_names_a_test() -> None:
    table = [line for line in DOC.splitlines() if line.startswith("| ") and "`" in line]
    assert len(table) >= 8
    for row in table:
        assert REFERENCE.search(row), row
    bullets = re.findall(r"^- .*?(?=^- |^\n|^#|\Z)", DOC, re.MULTILINE | re.DOTALL)
    assert len(bullets) >= 10
    for bullet in bullets:
        assert REFERENCE.search(bullet), bullet


def test_the_defaults_it_quotes_are_the_configuration() -> None:
    config = load_config(environ={})
    assert tuple(config.privacy.personal_fields) == DEFAULT_PERSONAL_FIELDS
    quoted = ", ".join(f"`{f}`" for f in DEFAULT_PERSONAL_FIELDS[:-1])
    assert f"by default {quoted} and `{DEFAULT_PERSONAL_FIELDS[-1]}`" in DOC
    hours = config.privacy.personal_retention_hours
    assert f"`privacy.personal_retention_hours` ({hours:g} h)" in DOC
    assert list(config.privacy.projections) == ["*@user"]
    assert f"`delivery.retention_days` ({config.delivery.retention_days:g} days)" in DOC
    assert f"`log.retention_days` ({config.log.retention_days:g} days)" in DOC


def test_its_toml_example_is_a_valid_configuration(tmp_path: Path) -> None:
    (block,) = re.findall(r"^```toml\n(.*?)^```$", DOC, re.MULTILINE | re.DOTALL)
    path = tmp_path / "privacy.toml"
    path.write_text(block, encoding="utf-8")
    config = load_config(path, environ={})
    assert set(config.privacy.projections) == {"*@user", "DASHBOARD/click", "AFAD"}
