"""Which rows of a manifest a job uses: training and calibration normals, evaluated films, and
checks of the choice (patients in two splits, both classes present, skipped files listed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import ManifestError, NoNormalImagesError
from .dataset import SkippedFile

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The normal films chosen for training and for calibration, and what was left out."""

    train: pd.DataFrame
    calibration: pd.DataFrame
    calibration_source: str
    ignored_counts: dict[str, int] = field(default_factory=dict)


def select_training_rows(manifest: pd.DataFrame, config: Config, origin: str) -> TrainingData:
    """Pick normal training films and normal calibration films from a manifest.

    With a ``split`` column, training uses label-0 rows of ``train`` and calibration uses label-0
    rows of ``val``. Without a split, or without validation normals, a ``calibration_fraction``
    of the training normals is held out by patient (seeded). Abnormal and unlabelled films never
    train the model.

    Raises:
        NoNormalImagesError: no training row is labelled normal.
    """
    has_split = manifest["split"].notna().any()
    candidates = manifest[manifest["split"] == "train"] if has_split else manifest
    normal = candidates[candidates["label"] == 0]
    ignored = {
        "abnormal": int((candidates["label"] == 1).sum()),
        "unlabelled": int(candidates["label"].isna().sum()),
        "not_train_split": int(len(manifest) - len(candidates)),
    }
    if normal.empty:
        raise NoNormalImagesError(
            f"{origin}: no normal (label 0) images to train on among {len(candidates)} "
            f"{'train-split ' if has_split else ''}rows ({ignored['abnormal']} abnormal, "
            f"{ignored['unlabelled']} unlabelled)"
        )
    validation = manifest[(manifest["split"] == "val") & (manifest["label"] == 0)] if has_split else normal.iloc[:0]
    if len(validation) >= 2:
        return TrainingData(normal, validation, "validation split normals", ignored)
    fraction = config.train.calibration_fraction
    if fraction == 0 or len(normal) < 10:
        logger.warning("calibrating on the training normals themselves: scores will look optimistic")
        return TrainingData(normal, normal, "training normals (no hold-out)", ignored)
    groups = normal["patient_id"].fillna(pd.Series(normal.index.astype(str), index=normal.index))
    unique_groups = np.array(sorted(groups.unique()))
    rng = np.random.default_rng(config.train.seed)
    held = set(rng.choice(unique_groups, size=max(1, round(fraction * len(unique_groups))), replace=False))
    mask = groups.isin(held)
    held_by = "by patient" if normal["patient_id"].notna().any() else "film by film (no patient ids)"
    return TrainingData(normal[~mask], normal[mask], f"{mask.sum()} training normals held out {held_by}", ignored)


@dataclass
class PatientOverlap:
    """Patients found in more than one split of a manifest, per pair of splits.

    Attributes:
        patients: patients in more than one split (each counted once).
        train_test: patients in both train and test: the model has seen them.
        val_test: patients in both val and test: the operating point was fitted on them.
        train_val: patients in both train and val: only the calibration is affected.
    """

    patients: int = 0
    train_test: int = 0
    val_test: int = 0
    train_val: int = 0


def _patients(count: int) -> str:
    """``1 patient``, ``3 patients``."""
    return f"{count} patient" if count == 1 else f"{count} patients"


def warn_on_patient_overlap(manifest: pd.DataFrame) -> PatientOverlap:
    """Warn about patients shared between splits, saying which splits share them and what it costs.

    Overlaps with test make the test results optimistic. An overlap of train and val alone leaves
    the test results honest: it only fits the operating point on normals of patients the model
    trained on, so that scores of new patients sit higher than calibrated.
    """
    known = manifest.dropna(subset=["patient_id", "split"])
    splits_of = known.groupby("patient_id")["split"].agg(frozenset)

    def both(first: str, second: str) -> int:
        """Patients with films in both splits."""
        # sum() of an empty object Series is "", not 0: count explicitly
        return sum(1 for splits in splits_of if first in splits and second in splits)

    overlap = PatientOverlap(
        patients=sum(1 for splits in splits_of if len(splits) > 1),
        train_test=both("train", "test"),
        val_test=both("val", "test"),
        train_val=both("train", "val"),
    )
    if overlap.train_test or overlap.val_test:
        logger.warning(
            "%s in both train and test and %d in both val and test: the test results will be optimistic "
            "(the model or its operating point has seen these patients). Use `cxr-anomaly split` for a "
            "patient-disjoint split.",
            _patients(overlap.train_test),
            overlap.val_test,
        )
    if overlap.train_val:
        logger.warning(
            "%s in both train and val: this affects only the calibration (the operating point is fitted "
            "on normals of patients the model trained on, so it may flag more new films than intended); "
            "the test results are not affected.",
            _patients(overlap.train_val),
        )
    return overlap


def report_skipped(skipped: list[SkippedFile], path: Path) -> None:
    """Write every skipped file with its reason to a CSV beside the job's outputs."""
    if skipped:
        pd.DataFrame([{"path": s.path, "reason": s.reason} for s in skipped]).to_csv(path, index=False)
        logger.warning("%d files were skipped; see %s", len(skipped), path)


@dataclass
class ChosenRows:
    """The manifest rows a job works on and the split they came from (``all`` for every row)."""

    manifest: pd.DataFrame
    split: str


def columns_with_values(manifest: pd.DataFrame) -> list[str]:
    """The manifest's columns that hold at least one value (the standard ones are added empty)."""
    return [
        str(column)
        for column in manifest.columns
        if manifest[column].astype("string").str.strip().replace("", pd.NA).notna().any()
    ]


def read_label_column(manifest: pd.DataFrame, label_column: str, origin: str) -> pd.DataFrame:
    """Take the labels (0 normal, 1 abnormal, empty unknown) from ``label_column`` instead of ``label``.

    Raises:
        ManifestError: the column is absent (the message lists the columns there) or holds a
            value other than 0, 1 or empty.
    """
    if label_column == "label":
        return manifest
    if label_column not in manifest.columns:
        raise ManifestError(
            origin,
            f"no column {label_column!r} to read labels from (--label-column); "
            f"columns found: {', '.join(columns_with_values(manifest))}",
        )
    text = manifest[label_column].astype("string").str.strip()
    text = text.mask(text == "")
    numbers = pd.to_numeric(text, errors="coerce")
    bad = (text.notna() & ~numbers.isin([0, 1])).to_numpy(dtype=bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ManifestError(
            origin,
            f"{manifest['path'].iloc[row]}: {label_column} {text.iloc[row]!r} is not 0 (normal), 1 (abnormal) or empty",
        )
    return manifest.assign(label=numbers.astype("Int64"))


def require_both_classes(manifest: pd.DataFrame, origin: str, label_column: str, split: str) -> None:
    """Refuse an evaluation that could measure nothing: no labels at all, or one class only.

    Raises:
        ManifestError: no film has a label (the message names the columns found and the one
            needed), or every labelled film is of one class (AUC needs both).
    """
    labels = manifest["label"]
    where = "" if split == "all" else f" of the {split} split"
    if labels.isna().all():
        raise ManifestError(
            origin,
            f"none of the {len(manifest)} films{where} has a label, so there is nothing to measure: "
            f"evaluate needs column {label_column!r} holding 0 (normal) or 1 (abnormal); columns "
            f"found: {', '.join(columns_with_values(manifest))} (--label-column NAME reads the "
            "labels from another column)",
        )
    normal, abnormal = int((labels == 0).sum()), int((labels == 1).sum())
    if normal == 0 or abnormal == 0:
        raise ManifestError(
            origin,
            f"AUC needs both classes, but the labelled films{where} are {normal} normal and "
            f"{abnormal} abnormal (column {label_column!r})",
        )


def choose_evaluation_rows(manifest: pd.DataFrame, split: str) -> ChosenRows:
    """Rows to evaluate: ``auto`` means the test split when one exists, else every row."""
    if split == "auto":
        split = "test" if (manifest["split"] == "test").any() else "all"
    if split == "all":
        return ChosenRows(manifest, split)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"no rows with split {split!r} in the data")
    return ChosenRows(rows, split)
