"""Fixtures for the data tests: the real official label tables, read once per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxr_anomaly.data.nih import read_nih_table


@pytest.fixture(scope="session")
def nih_table(shared_data: Path) -> pd.DataFrame:
    """The official NIH table (112,120 rows) as a manifest; tests must not modify it."""
    return read_nih_table(shared_data / "labels" / "Data_Entry_2017_v2020.csv.gz")
