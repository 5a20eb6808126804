"""Dependency floors that are true: pyproject.toml asks for what the code needs (issue 13 point 8).

Installing the old versions in CI would need the network, so the floors are checked where it is
cheap: the declared floors against the code's own minimums, the installed versions against the
floors, and every source file against Python 3.11's grammar.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
# What the code needs, and where: the floors in pyproject.toml may not be lower.
NEEDED: dict[str, tuple[tuple[int, ...], str]] = {
    "pydicom": ((3, 0), "pydicom.pixels.pixel_array(ds, index=0) in dicom.py"),
    "torch": ((2, 5), "torch.onnx.export(..., dynamo=False) in export.py"),
    "scipy": ((1, 15), "scipy.stats.bootstrap(..., rng=...) in calibration.py"),
}


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def declared_floors() -> dict[str, tuple[int, ...]]:
    project = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        match = re.match(r"^([A-Za-z0-9_.-]+).*?>=\s*([0-9.]+)", requirement)
        if match:
            floors[match.group(1).lower()] = version_tuple(match.group(2))
    return floors


def test_python_floor_is_3_11_for_tomllib() -> None:
    project = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["project"]
    assert re.fullmatch(r">=\s*3\.11", project["requires-python"].strip()), project["requires-python"]


@pytest.mark.parametrize("package", sorted(NEEDED))
def test_declared_floor_covers_what_the_code_needs(package: str) -> None:
    needed, why = NEEDED[package]
    floors = declared_floors()
    assert package in floors, f"pyproject.toml declares no floor for {package} ({why})"
    assert floors[package] >= needed, f"{package}>={floors[package]} is allowed, but {why} needs {needed}"


def test_dicom_reader_and_pyproject_agree_on_pydicom() -> None:
    from cxr_anomaly.dicom import MIN_PYDICOM_VERSION

    assert declared_floors()["pydicom"][:2] == MIN_PYDICOM_VERSION


@pytest.mark.parametrize("package", sorted(NEEDED))
def test_installed_versions_meet_the_floors(package: str) -> None:
    installed = version_tuple(importlib.metadata.version(package))
    assert installed >= declared_floors()[package], (package, installed)


def test_every_source_file_parses_as_python_3_11() -> None:
    sources = [
        source
        for folder in ("src", "benchmarks", "docs/notebook/research")
        for source in sorted((REPOSITORY_ROOT / folder).rglob("*.py"))
    ]
    assert len(sources) > 20
    for source in sources:
        ast.parse(source.read_text(encoding="utf-8"), filename=str(source), feature_version=(3, 11))
