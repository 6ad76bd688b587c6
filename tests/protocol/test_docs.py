"""docs/protocol.md and docs/architecture.md against the code they describe.

The state diagram in the spec must be the one ``protocol.diagram`` generates,
every error and close code must be documented, the routing table must name
every default route, and the import rule of the architecture page must hold.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import protocol
from protocol.diagram import mermaid

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The body of the markdown section whose heading line is ``heading``."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    following = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, start)
    return text[start : following.start() if following else len(text)]


def test_diagram_in_spec_is_generated_from_the_transition_table() -> None:
    match = re.search(
        r"<!-- diagram:start -->\n```mermaid\n(.*?)\n```\n<!-- diagram:end -->", SPEC, re.DOTALL
    )
    assert match is not None, "docs/protocol.md needs the diagram between the markers"
    assert match.group(1) == mermaid(), "run `python -m protocol.diagram` and paste its output"


@pytest.mark.parametrize("code", list(protocol.ErrorCode), ids=lambda c: c.value)
def test_every_error_code_is_documented(code: protocol.ErrorCode) -> None:
    table = _section(SPEC, "### 6.1 Error codes")
    assert f"| `{code.value}` |" in table


@pytest.mark.parametrize("code", list(protocol.CloseCode), ids=lambda c: c.name)
def test_every_close_code_is_documented(code: protocol.CloseCode) -> None:
    table = _section(SPEC, "### 6.2 Close codes")
    assert f"| {code.value} | `{code.name}` |" in table


@pytest.mark.parametrize("route", protocol.DEFAULT_ROUTES, ids=lambda r: r.event_type)
def test_every_default_route_is_in_the_routing_table(route: protocol.Route) -> None:
    table = _section(SPEC, "### 8.1 Default routes")
    row = next(
        (line for line in table.splitlines() if line.startswith(f"| `{route.event_type}` |")),
        None,
    )
    assert row is not None, f"no row for {route.event_type}"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert set(cells[1].split(", ")) == set(route.senders)
    assert cells[2].split(", ") == list(route.to_types)
    fields = [] if cells[3] == "—" else [f.strip("`") for f in cells[3].split(", ")]
    assert fields == list(route.user_fields)


def test_every_message_type_is_documented() -> None:
    for name in [*protocol.CONTROL_TYPES, *protocol.EventRegistry()]:
        assert f"`{name}`" in SPEC, name


def test_every_protocol_module_is_in_the_architecture_page() -> None:
    modules = sorted(p.name for p in (ROOT / "protocol").glob("*.py") if p.name != "__init__.py")
    for module in modules:
        assert f"`{module}`" in ARCHITECTURE, module


def _imported_packages(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_imports_point_one_way() -> None:
    assert not _imported_packages("protocol") & {"trio", "storage", "catsock", "sqlite3"}
    assert not _imported_packages("storage") & {"trio", "catsock"}


def test_importing_protocol_and_storage_loads_no_trio() -> None:
    code = "import sys, protocol, protocol.conformance, storage; print('trio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"
