"""The jobs' own checks on their input: which splits share patients, and what that costs."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from cxr_anomaly.data.manifest import load_inputs, normalise_manifest
from cxr_anomaly.data.selection import PatientOverlap, warn_on_patient_overlap


def manifest_of(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """A manifest of (patient_id, split) rows."""
    return normalise_manifest(
        pd.DataFrame(
            {
                "path": [f"{index}.png" for index in range(len(rows))],
                "patient_id": [patient for patient, _ in rows],
                "split": [split for _, split in rows],
            }
        ),
        "<test>",
    )


def overlap_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and record.name == "cxr_anomaly.data.selection"
    ]


def test_a_train_val_overlap_is_reported_as_a_calibration_matter_only(caplog: pytest.LogCaptureFixture) -> None:
    manifest = manifest_of([("a", "train"), ("a", "val"), ("b", "train"), ("b", "val"), ("c", "test"), ("d", "train")])
    with caplog.at_level(logging.WARNING, logger="cxr_anomaly.data.selection"):
        overlap = warn_on_patient_overlap(manifest)
    assert overlap == PatientOverlap(patients=2, train_test=0, val_test=0, train_val=2)
    [message] = overlap_warnings(caplog)
    assert message.startswith("2 patients in both train and val: this affects only the calibration")
    assert "test results are not affected" in message and "optimistic" not in message


def test_overlaps_with_test_are_named_and_called_optimistic(caplog: pytest.LogCaptureFixture) -> None:
    manifest = manifest_of(
        [
            ("a", "train"),
            ("a", "test"),
            ("b", "train"),
            ("b", "test"),
            ("c", "val"),
            ("c", "test"),
            ("e", "train"),
            ("e", "val"),
            ("e", "test"),
            ("f", "val"),
        ]
    )
    with caplog.at_level(logging.WARNING, logger="cxr_anomaly.data.selection"):
        overlap = warn_on_patient_overlap(manifest)
    assert overlap == PatientOverlap(patients=4, train_test=3, val_test=2, train_val=1)
    test_message, calibration_message = overlap_warnings(caplog)
    assert test_message.startswith(
        "3 patients in both train and test and 2 in both val and test: the test results will be optimistic"
    )
    assert calibration_message.startswith("1 patient in both train and val: this affects only the calibration")


def test_disjoint_splits_and_unknown_patients_warn_nothing(caplog: pytest.LogCaptureFixture) -> None:
    manifest = manifest_of([("a", "train"), ("b", "val"), ("c", "test"), ("", "train"), ("", "test")])
    with caplog.at_level(logging.WARNING, logger="cxr_anomaly.data.selection"):
        assert warn_on_patient_overlap(manifest) == PatientOverlap()
    assert overlap_warnings(caplog) == []


def test_nih1000_without_the_patients_shared_with_test_warns_only_about_calibration(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What the demo does: NIH1000's given split shares patients between train and test; drop
    # them, and the train/val overlap left must not be reported as optimistic test results.
    manifest = load_inputs([shared_data / "nih1000" / "manifest.csv"])
    with caplog.at_level(logging.WARNING, logger="cxr_anomaly.data.selection"):
        before = warn_on_patient_overlap(manifest)
    assert before.train_test > 0
    test_patients = set(manifest.loc[manifest["split"] == "test", "patient_id"])
    cleaned = manifest[(manifest["split"] == "test") | ~manifest["patient_id"].isin(test_patients)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxr_anomaly.data.selection"):
        after = warn_on_patient_overlap(cleaned)
    assert (after.train_test, after.val_test) == (0, 0) and after.train_val > 0
    [message] = overlap_warnings(caplog)
    assert "calibration" in message and "optimistic" not in message
