"""RSNA Pneumonia Detection Challenge (2018): frontal chest films as DICOM, one per patient.

Source: Kaggle ``rsna-pneumonia-detection-challenge`` (stage 2): ``stage_2_train_images/``
(``<patientId>.dcm``, 1024x1024 MONOCHROME2), ``stage_2_train_labels.csv`` (``patientId``, box
``x, y, width, height``, ``Target``; one row per box) and ``stage_2_detailed_class_info.csv``
(``patientId``, ``class``). The films are a subset of NIH ChestX-ray14 relabelled by
radiologists of the RSNA and the Society of Thoracic Radiology.

Counts (stage 2 train): 26,684 patients (= films) in the labels table; classes in the detailed
table: 8,818 "Normal", 6,000 "Lung Opacity", 11,787 "No Lung Opacity / Not Normal"; 79
patients of the labels table are absent from the class table (12 with an opacity box, which
makes them "Lung Opacity"; 67 without, whose class is unknown and who are left out, with a
log line). Views (DICOM ``ViewPosition``): 14,511 PA, 12,173 AP; Normal is 7,186 PA + 1,632 AP.

Labels: label 0 = class "Normal"; label 1 = "Lung Opacity". "No Lung Opacity / Not Normal"
(other abnormalities, no pneumonia-like opacity) is excluded by default, as in Tang et al.'s
experiment 2; ``include_not_normal=True`` keeps it as label 1 (it is not normal). The class is
cross-checked against ``Target`` (1 exactly for "Lung Opacity"). Extra columns: ``rsna_class``,
``boxes`` (opacity boxes), and ``age`` and ``sex`` when a header table is given.

Patient id: ``patientId`` (an anonymised UUID; one film per patient).

View: from the challenge's DICOM header table (``headers_csv``, columns ``PatientID`` or
``Filename`` and ``ViewPosition``) when given, else from each DICOM's ``ViewPosition`` (read
without pixel data), else unknown.

The paper's experiment-2 split is :func:`cxr_anomaly.data.splits.rsna_paper_split`
(6,000 / 1,025 + 1,025 / 1,000 + 1,000).

Citation: Shih G, Wu CC, Halabi SS, et al. Augmenting the National Institutes of Health chest
radiograph dataset with expert annotations of possible pneumonia. Radiology: AI 2019;1(1).

Licence: the challenge data are for non-commercial research and education under the Kaggle
competition rules; the underlying NIH films are public (cite Wang et al., CVPR 2017).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..dicom import read_view_positions
from ..errors import ManifestError, MissingFileError
from .manifest import normalise_manifest
from .nih import attach_image_paths, index_image_files

logger = logging.getLogger(__name__)

NORMAL = "Normal"
LUNG_OPACITY = "Lung Opacity"
NOT_NORMAL = "No Lung Opacity / Not Normal"
RSNA_CLASSES: tuple[str, ...] = (NORMAL, LUNG_OPACITY, NOT_NORMAL)


def _read_table(path: str | Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, f"{what} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
        EOFError,
        ValueError,
    ) as error:
        raise ManifestError(path, f"cannot parse the {what}: {error}") from error
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise ManifestError(path, f"missing column(s) {missing} of the {what} (columns are {list(table.columns)})")
    if table.empty:
        raise ManifestError(path, f"the {what} has no rows")
    return table


def read_rsna_tables(
    labels_csv: str | Path, class_info_csv: str | Path, *, include_not_normal: bool = False
) -> pd.DataFrame:
    """Join the labels and class tables into a manifest (``path`` = ``<patientId>.dcm``).

    Raises:
        MissingFileError: a table does not exist.
        ManifestError: a table is malformed, holds an unknown class, or class and Target disagree.
    """
    labels = _read_table(labels_csv, ("patientId", "Target"), "RSNA labels table")
    classes = _read_table(class_info_csv, ("patientId", "class"), "RSNA class table")
    labels["patientId"] = labels["patientId"].str.strip()
    bad_target = ~labels["Target"].str.strip().isin(["0", "1"])
    if bad_target.any():
        row = int(np.flatnonzero(bad_target.to_numpy())[0])
        raise ManifestError(labels_csv, f"row {row + 2}: Target {labels['Target'].iloc[row]!r} is not 0 or 1")
    labels["Target"] = labels["Target"].str.strip().astype(int)
    per_patient = labels.groupby("patientId", sort=False).agg(target=("Target", "max"), boxes=("Target", "sum"))
    classes["patientId"] = classes["patientId"].str.strip()
    classes["class"] = classes["class"].str.strip()
    unknown = ~classes["class"].isin(RSNA_CLASSES)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ManifestError(
            class_info_csv, f"row {row + 2}: class {classes['class'].iloc[row]!r} is not one of {RSNA_CLASSES}"
        )
    classes = classes.drop_duplicates()  # one row per box in the official file
    conflicting = classes["patientId"][classes["patientId"].duplicated()]
    if not conflicting.empty:
        raise ManifestError(class_info_csv, f"patient {conflicting.iloc[0]!r} has more than one class")
    table = per_patient.join(classes.set_index("patientId")["class"], how="left")
    # Patients without a class row: an opacity box makes them "Lung Opacity"; otherwise the
    # class (Normal or Not Normal) is unknown and they cannot be used.
    table.loc[table["class"].isna() & (table["target"] == 1), "class"] = LUNG_OPACITY
    unknown_class = table["class"].isna()
    if unknown_class.any():
        logger.warning(
            "%d RSNA patients have no class row and no opacity box; left out, e.g. %s",
            int(unknown_class.sum()),
            table.index[unknown_class][:3].tolist(),
        )
        table = table[~unknown_class]
    disagree = (table["class"] == LUNG_OPACITY) != (table["target"] == 1)
    if disagree.any():
        patient = table.index[disagree][0]
        raise ManifestError(
            class_info_csv,
            f"patient {patient!r}: class {table.loc[patient, 'class']!r} "
            f"disagrees with Target {table.loc[patient, 'target']} of {labels_csv}",
        )
    if not include_not_normal:
        table = table[table["class"] != NOT_NORMAL]
    manifest = pd.DataFrame(
        {
            "path": [f"{patient}.dcm" for patient in table.index],
            "label": (table["class"] != NORMAL).astype(int).to_numpy(),
            "patient_id": table.index.to_numpy(),
            "rsna_class": table["class"].to_numpy(),
            "boxes": table["boxes"].astype(int).to_numpy(),
        }
    )
    return normalise_manifest(manifest, class_info_csv)


def read_rsna_headers(headers_csv: str | Path) -> pd.DataFrame:
    """``ViewPosition`` (and age, sex) per patient from the challenge's DICOM header table."""
    table = _read_table(headers_csv, ("ViewPosition",), "RSNA DICOM header table")
    if "PatientID" in table.columns:
        keys = table["PatientID"].str.strip()
    elif "Filename" in table.columns:
        keys = table["Filename"].str.strip().str.removesuffix(".dcm")
    else:
        raise ManifestError(
            headers_csv, f"needs a 'PatientID' or 'Filename' column (columns are {list(table.columns)})"
        )
    result = pd.DataFrame({"view": table["ViewPosition"].str.strip().str.upper().to_numpy()}, index=keys.to_numpy())
    if "PatientAge" in table.columns:
        result["age"] = table["PatientAge"].str.strip().to_numpy()
    if "PatientSex" in table.columns:
        result["sex"] = table["PatientSex"].str.strip().to_numpy()
    return result[~result.index.duplicated()]


def build_rsna_manifest(
    image_root: str | Path | None,
    labels_csv: str | Path,
    class_info_csv: str | Path,
    *,
    headers_csv: str | Path | None = None,
    include_not_normal: bool = False,
    on_missing: Literal["error", "skip"] = "error",
) -> pd.DataFrame:
    """The RSNA manifest: Normal (0) vs Lung Opacity (1), with views and DICOM paths.

    Args:
        image_root: folder of ``<patientId>.dcm`` files (searched recursively); None keeps bare
            file names, enough to build splits from the tables alone.
        labels_csv: ``stage_2_train_labels.csv`` (a ``.zip`` holding it works too).
        class_info_csv: ``stage_2_detailed_class_info.csv``.
        headers_csv: optional DICOM header table giving ``ViewPosition`` without opening files.
        include_not_normal: keep "No Lung Opacity / Not Normal" as label 1.
        on_missing: a film absent from ``image_root`` raises (``"error"``) or is left out and
            counted in ``manifest.attrs["absent_files_count"]`` and logged (``"skip"``).
    """
    manifest = read_rsna_tables(labels_csv, class_info_csv, include_not_normal=include_not_normal)
    if headers_csv is not None:
        headers = read_rsna_headers(headers_csv)
        for column in headers.columns:
            manifest[column] = manifest["patient_id"].map(headers[column]).astype("string")
    if image_root is not None:
        manifest = attach_image_paths(manifest, index_image_files(image_root, (".dcm",)), labels_csv, on_missing)
        if headers_csv is None:
            manifest["view"] = read_view_positions(manifest["path"].tolist())
    return normalise_manifest(manifest, class_info_csv)
