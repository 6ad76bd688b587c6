"""The README runs catsock from ``pip install .``: the wheel must carry every module and file.

An editable install (what the test command uses) finds files that a wheel could
leave out, so this builds the real wheel and looks inside. It builds from a copy
of the sources in a temporary directory: setuptools leaves ``build/`` and
``catsock.egg-info`` beside the project it builds, and those must not appear in
the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


#: What the build reads: the project's metadata and its packages.
SOURCES = ("pyproject.toml", "README.md", "catsock", "protocol", "storage")
PACKAGES = ("catsock", "protocol", "storage")


def _copy_sources(to: Path) -> Path:
    project = to / "catsock-src"
    project.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(source, project / name, ignore=ignore)
        else:
            shutil.copy2(source, project / name)
    return project


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    work = tmp_path_factory.mktemp("wheel")
    project = _copy_sources(work)
    out = work / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if built.returncode != 0 and "No matching distribution" in built.stderr:
        pytest.skip("building a wheel needs setuptools from PyPI (pip could not reach it)")
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("catsock-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_every_module_and_data_file(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for package in PACKAGES:
        for source in (ROOT / package).rglob("*"):
            if source.is_file() and "__pycache__" not in source.parts and source.suffix != ".pyc":
                relative = source.relative_to(ROOT).as_posix()
                assert relative in names, f"{relative} is missing from the wheel"
