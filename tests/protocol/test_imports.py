"""The layering rules of DESIGN.md, checked in fresh interpreters: protocol/ is
sans-IO (no trio, no sqlite3), storage/ is synchronous (no trio); and
``protocol.__all__`` is exactly the public API (trio's test_exports style)."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

import protocol

PROBE = """
import json, sys
for name in {modules!r}:
    __import__(name)
print(json.dumps(sorted(m for m in {forbidden!r} if m in sys.modules)))
"""


def loaded_after_import(modules: list[str], forbidden: list[str]) -> list[str]:
    """Which of ``forbidden`` a fresh interpreter has loaded after importing ``modules``."""
    code = PROBE.format(modules=modules, forbidden=forbidden)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (["protocol"], ["trio", "sqlite3", "_sqlite3"]),
        (["protocol.diagram"], ["trio", "sqlite3", "_sqlite3"]),
        (["protocol", "protocol.conformance"], ["trio", "sqlite3", "_sqlite3"]),
        (["storage"], ["trio"]),  # storage may use sqlite3, never trio
    ],
)
def test_layering(modules: list[str], forbidden: list[str]) -> None:
    assert loaded_after_import(modules, forbidden) == []


def test_the_probe_can_fail() -> None:
    """The check sees an import when there is one."""
    assert loaded_after_import(["protocol", "trio"], ["trio"]) == ["trio"]


def public_names(module: types.ModuleType) -> set[str]:
    """Names a user of ``module`` sees: public, and not a submodule or a typing helper."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in {"annotations"}
    }


def test_all_is_exactly_the_public_api() -> None:
    exported = set(protocol.__all__)
    assert len(protocol.__all__) == len(exported), "a name is listed twice"
    missing = [name for name in protocol.__all__ if not hasattr(protocol, name)]
    assert missing == []
    assert public_names(protocol) == exported


@pytest.mark.parametrize(
    "name",
    ["codec", "errors", "extensions", "limits", "machine", "messages", "registry", "routing"],
)
def test_submodule_all_is_re_exported(name: str) -> None:
    """Every public name of a submodule is reachable from ``protocol`` itself,
    except the few that are internal helpers of that module."""
    module = __import__(f"protocol.{name}", fromlist=["__all__"])
    internal = {"Id", "valid_type_name", "RESERVED", "SUPPORTED"}
    for exported in module.__all__:
        assert hasattr(module, exported), f"protocol.{name}.__all__ names missing {exported}"
        if exported not in internal:
            assert getattr(protocol, exported) is getattr(module, exported)
