"""Shared pytest fixtures.

Real-data tests read the public chest X-ray collections from ``../shared/data`` beside the
repository root (present in CI); they skip with a clear message only where that folder is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPOSITORY_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return the folder of real chest X-ray data, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"../shared/data not found (looked for {SHARED_DATA}); real-data tests need the "
            "public chest X-ray collections beside the repository checkout"
        )
    return SHARED_DATA
