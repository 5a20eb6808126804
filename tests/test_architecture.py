"""The package's plumbing: families are reached through the registry, never by name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cxr_anomaly.models.registry import FAMILIES, PACKAGES

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cxr_anomaly"

# "features" is also a plain word: only its uses as a name count (a string, the package, the
# config section); the other families' names are distinctive.
NAME_PATTERNS = {
    "features": r"[\"']features[\"']|\bmodels\.features\b|\bconfig\.features\b|--method features|"
    r"\bimport features\b|\bfeatures\.FAMILY\b",
}

# Modules outside models/<family>/ allowed to name a family, and why. Keep this list short and
# explicit; test_the_exceptions_are_still_needed fails once one of them no longer names any.
ALLOWED = {
    "models/registry.py": "the registry lines that import and list the families",
    "config.py": "DEFAULT_METHOD, the family of Config() and of a left-out --method (the config layer "
    "cannot ask the registry; a family's name there is checked against it at registration)",
}


def pattern_of(name: str) -> re.Pattern[str]:
    return re.compile(NAME_PATTERNS.get(name, rf"\b{re.escape(name)}\b"))


def modules_naming(name: str) -> dict[str, list[int]]:
    """Module path (relative to the package) -> line numbers naming family ``name``, outside its folder."""
    pattern = pattern_of(name)
    found: dict[str, list[int]] = {}
    for path in sorted([*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.html")]):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(tuple(f"models/{family}/" for family in FAMILIES)):
            continue
        lines = [number for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
        if lines:
            found[relative] = lines
    return found


def test_no_module_outside_a_family_folder_names_a_family() -> None:
    offenders = {
        name: {module: lines for module, lines in modules_naming(name).items() if module not in ALLOWED}
        for name in FAMILIES
    }
    assert not any(offenders.values()), f"family names outside models/<family>/: {offenders}"


def test_the_search_finds_a_family_name() -> None:
    # the registry imports every family by name: a search that finds nothing there is broken
    for name in FAMILIES:
        assert "models/registry.py" in modules_naming(name), name


def test_the_exceptions_are_still_needed() -> None:
    naming = set().union(*(modules_naming(name) for name in FAMILIES))
    assert set(ALLOWED) <= naming, f"no longer naming a family, remove from ALLOWED: {set(ALLOWED) - naming}"


def test_the_configuration_accepts_every_registered_family() -> None:
    from cxr_anomaly.config import methods, preset_config

    assert methods() == tuple(FAMILIES)
    for name in FAMILIES:
        assert preset_config(name).method == name


def test_each_family_declares_its_sections_and_help_in_its_folder() -> None:
    from cxr_anomaly.config import config_to_dict, family_settings, preset_config

    stored = config_to_dict(preset_config("default"))
    for package in PACKAGES:
        family = FAMILIES[package.NAME]
        assert family.settings is package.SETTINGS is family_settings(package.NAME)
        assert family.settings.components == family.detector_class.component_names, package.NAME
        for section, section_type in family.settings.sections.items():
            assert section_type.__module__.startswith(f"cxr_anomaly.models.{package.NAME}."), section
            assert section in stored  # every family's sections are stored, whatever the method


def test_reading_a_configuration_and_the_cli_parser_do_not_import_torch() -> None:
    # the families' configuration lives apart from their detectors, so `--help` stays fast
    code = (
        "import sys\n"
        "from cxr_anomaly.cli import build_parser\n"
        "from cxr_anomaly.config import preset_config\n"
        "build_parser(); preset_config('paper')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=False)
    assert result.returncode == 0, result.stderr
