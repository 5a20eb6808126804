"""The manifest table: one row per film, the common currency of every data source.

Columns (see :data:`MANIFEST_COLUMNS`):

- ``path``: absolute file path, or ``FILE.npz#SPLIT/INDEX`` for an image inside a MedMNIST npz;
- ``label``: 0 normal, 1 abnormal, <NA> unknown (nullable integer);
- ``split``: ``train``, ``val``, ``test`` or <NA>;
- ``patient_id``: string or <NA>;
- ``view``: ``PA``, ``AP``, ``LL``... or <NA>.

Sources may add columns of their own (finding labels, age, ...); they are carried along. Every
source module builds its table through :func:`normalise_manifest`; :mod:`.manifest` reads
manifests from folders, CSVs and npz files and re-exports this module's names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ManifestError

MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "split", "patient_id", "view")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Names of the splits in shipped manifests, folders and npz files, and the split each one means.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def normalise_manifest(table: pd.DataFrame, origin: str | Path) -> pd.DataFrame:
    """Give ``table`` the standard columns and dtypes, validating labels and splits.

    Raises:
        ManifestError: a label is not 0, 1 or empty, or a split is not train/val/test.
    """
    table = table.copy()
    for column in MANIFEST_COLUMNS:
        if column not in table.columns:
            table[column] = pd.NA
    labels = pd.to_numeric(table["label"].replace("", pd.NA), errors="coerce")
    bad = table["label"].notna() & (table["label"].astype(str).str.strip() != "") & ~labels.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ManifestError(origin, f"row {row + 1}: label {table['label'].iloc[row]!r} is not 0, 1 or empty")
    table["label"] = labels.astype("Int64")
    splits = table["split"].astype("string").str.strip().str.lower()
    mapped = splits.map(lambda value: SPLIT_ALIASES.get(value, "?") if isinstance(value, str) and value else pd.NA)
    invalid = (mapped == "?").fillna(False).to_numpy(dtype=bool)  # empty splits compare as NA
    if invalid.any():
        row = int(np.flatnonzero(invalid)[0])
        raise ManifestError(origin, f"row {row + 1}: split {table['split'].iloc[row]!r} is not train, val or test")
    table["split"] = mapped.astype("string")
    for column in ("patient_id", "view"):
        values = table[column].astype("string").str.strip()
        table[column] = values.mask(values == "")
    table["path"] = table["path"].astype(str)
    ordered = list(MANIFEST_COLUMNS) + [c for c in table.columns if c not in MANIFEST_COLUMNS]
    return table[ordered].reset_index(drop=True)
