"""NIH ChestX-ray14: 112,120 frontal chest films of 30,805 patients, 1024x1024 8-bit PNG.

Source: NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC; the label table is
``Data_Entry_2017_v2020.csv`` (columns ``Image Index``, ``Finding Labels``, ``Follow-up #``,
``Patient ID``, ``Patient Age``, ``Patient Gender``, ``View Position``, ...).

Counts (v2020 table): 112,120 films; 60,361 "No Finding"; 51,759 with at least one finding;
67,310 PA and 44,810 AP.

Labels: ``Finding Labels`` holds "No Finding" or a ``|``-separated list of the 14 findings
:data:`NIH_FINDINGS`, text-mined from reports (about 90% accurate). label 0 = exactly
"No Finding"; label 1 = at least one of the 14 findings. Each finding is matched as a whole
token after splitting on ``|``, never by substring, and an unknown token or "No Finding"
mixed with a finding is an error naming the row. One 0/1 column per finding is added
(``finding_atelectasis``, ...), with ``finding_labels``, ``image_index``, ``follow_up``,
``age`` and ``sex``.

Builders:

- :func:`read_nih_table` reads the label table (``.csv`` or ``.csv.gz``) into a manifest whose
  ``path`` is the bare image name (enough for building splits without the images);
- :func:`build_nih_manifest` joins it with the image files under ``image_root`` (searched
  recursively, so the official ``images_001/images/`` ... layout works as it is).

The paper's experiment-1 split is :func:`cxr_anomaly.data.splits.nih_paper_split`.

Citation: Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale
chest X-ray database and benchmarks on weakly-supervised classification and localization of
common thorax diseases. CVPR 2017.

Licence: public, unrestricted use; the NIH asks that users cite the paper above and
acknowledge the NIH Clinical Center as the data provider.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..errors import ManifestError, MissingFileError
from .manifest import normalise_manifest

logger = logging.getLogger(__name__)

NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
NIH_REQUIRED_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Patient ID", "View Position")
_OPTIONAL_COLUMNS = {"Follow-up #": "follow_up", "Patient Age": "age", "Patient Gender": "sex"}


def finding_column(finding: str) -> str:
    """The manifest column of one finding, e.g. ``finding_pleural_thickening``."""
    return "finding_" + finding.lower()


def nih_label(finding_labels: str, origin: str | Path = "<nih table>", row: int | None = None) -> int:
    """0 for exactly "No Finding", 1 for one or more of the 14 findings.

    Raises:
        ManifestError: an empty value, an unknown finding or "No Finding" with a finding.
    """
    tokens = [token.strip() for token in str(finding_labels).split("|")]
    where = f"row {row}: " if row is not None else ""
    if tokens == [NO_FINDING]:
        return 0
    if NO_FINDING in tokens:
        raise ManifestError(origin, f"{where}Finding Labels {finding_labels!r} mixes {NO_FINDING!r} with findings")
    unknown = [token for token in tokens if token not in NIH_FINDINGS]
    if unknown:
        raise ManifestError(
            origin,
            f"{where}Finding Labels {finding_labels!r} has unknown label(s) {unknown}; "
            f"expected {NO_FINDING!r} or some of {list(NIH_FINDINGS)}",
        )
    return 1


def read_nih_table(labels_csv: str | Path) -> pd.DataFrame:
    """Read ``Data_Entry_2017*.csv[.gz]`` into a manifest (``path`` = the image file name).

    Raises:
        MissingFileError: the table does not exist.
        ManifestError: it cannot be parsed, lacks a required column, or has a bad label.
    """
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise MissingFileError(labels_csv, "NIH label table does not exist")
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as error:
        raise ManifestError(labels_csv, f"cannot parse the NIH label table: {error}") from error
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in NIH_REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ManifestError(
            labels_csv, f"missing column(s) {missing} of the NIH label table (columns are {list(table.columns)})"
        )
    if table.empty:
        raise ManifestError(labels_csv, "the NIH label table has no rows")
    findings = table["Finding Labels"].str.strip()
    # Whole-token matching: one indicator column per distinct token (never a substring test).
    tokens = findings.str.get_dummies(sep="|")
    tokens.columns = [str(column).strip() for column in tokens.columns]
    tokens = tokens.T.groupby(level=0).max().T  # merge tokens that differed only by spaces
    allowed = set(NIH_FINDINGS) | {NO_FINDING}
    unknown_tokens = [token for token in tokens.columns if token not in allowed]
    mixed = tokens[NO_FINDING].astype(bool) & (tokens.sum(axis=1) > 1) if NO_FINDING in tokens else None
    bad = tokens[unknown_tokens].any(axis=1) if unknown_tokens else pd.Series(False, index=tokens.index)
    if mixed is not None:
        bad |= mixed
    bad |= tokens.sum(axis=1) == 0  # an empty Finding Labels
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = findings.iloc[row]
        if value and not unknown_tokens and mixed is not None and mixed.iloc[row]:
            raise ManifestError(
                labels_csv, f"row {row + 2}: Finding Labels {value!r} mixes {NO_FINDING!r} with findings"
            )
        nih_label(value, labels_csv, row + 2)  # raises with the row of the file
    manifest = pd.DataFrame(
        {
            "path": table["Image Index"].str.strip(),
            "label": (findings != NO_FINDING).astype(int),
            "patient_id": table["Patient ID"].str.strip().str.lstrip("0").replace("", "0"),
            "view": table["View Position"].str.strip().str.upper(),
            "image_index": table["Image Index"].str.strip(),
            "finding_labels": findings,
        }
    )
    for source, target in _OPTIONAL_COLUMNS.items():
        if source in table.columns:
            manifest[target] = table[source].str.strip()
    for finding in NIH_FINDINGS:
        manifest[finding_column(finding)] = tokens[finding].to_numpy() if finding in tokens else 0
    if manifest["image_index"].duplicated().any():
        duplicate = manifest.loc[manifest["image_index"].duplicated(), "image_index"].iloc[0]
        raise ManifestError(labels_csv, f"image {duplicate!r} appears more than once")
    return normalise_manifest(manifest, labels_csv)


def index_image_files(image_root: str | Path, suffixes: tuple[str, ...] = (".png",)) -> dict[str, str]:
    """Map file name to absolute path for every file under ``image_root`` (recursively)."""
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise MissingFileError(image_root, "image folder does not exist")
    found: dict[str, str] = {}
    for folder, _, names in os.walk(image_root):
        for name in names:
            if name.lower().endswith(suffixes):
                found.setdefault(name, os.path.join(os.path.abspath(folder), name))
    return found


def attach_image_paths(
    manifest: pd.DataFrame, files: dict[str, str], origin: str | Path, on_missing: Literal["error", "skip"]
) -> pd.DataFrame:
    """Replace bare file names in ``path`` by the found files; missing ones error or are reported."""
    names = manifest["path"]
    present = names.isin(files.keys())
    if not present.all():
        absent = names[~present].tolist()
        if on_missing == "error":
            raise MissingFileError(
                absent[0],
                f"{len(absent)} of {len(names)} films of {origin} are not under the "
                "image folder (pass on_missing='skip' to build a manifest of the films present)",
            )
        logger.warning(
            "%d of %d films of %s are absent and left out, e.g. %s", len(absent), len(names), origin, absent[:5]
        )
    result = manifest[present.to_numpy()].copy()
    result["path"] = result["path"].map(files)
    # attrs travel (deep-copied) with every derived frame, so they hold a count, not 100k names.
    result.attrs["absent_files_count"] = int((~present).sum())
    result.attrs["absent_files_examples"] = names[~present].head(10).tolist()
    return result.reset_index(drop=True)


def build_nih_manifest(
    image_root: str | Path | None, labels_csv: str | Path, *, on_missing: Literal["error", "skip"] = "error"
) -> pd.DataFrame:
    """The NIH manifest with absolute image paths.

    Args:
        image_root: folder holding the PNGs anywhere below it; None keeps bare file names.
        labels_csv: ``Data_Entry_2017_v2020.csv`` (or ``.csv.gz``).
        on_missing: a film of the table absent from ``image_root`` raises
            :class:`MissingFileError` (``"error"``) or is left out and listed in
            counted in ``manifest.attrs["absent_files_count"]`` and logged (``"skip"``).
    """
    manifest = read_nih_table(labels_csv)
    if image_root is None:
        return manifest
    return attach_image_paths(manifest, index_image_files(image_root), labels_csv, on_missing)
