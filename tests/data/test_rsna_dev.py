"""rsna_dev256's data source: its seeded val and test halves, by patient within each class and view."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.data.rsna_dev import TASKS, validation_and_test_halves
from cxr_anomaly.data.selection import read_label_column
from cxr_anomaly.errors import ManifestError


def test_the_halves_share_no_patient_and_split_each_class_and_view_evenly(shared_data: Path) -> None:
    manifest = load_inputs(shared_data / "rsna_dev256" / "manifest.csv")
    halves = validation_and_test_halves(manifest)
    assert len(halves) == len(manifest) == 735 and set(halves["split"]) == {"val", "test"}
    val, test = halves[halves["split"] == "val"], halves[halves["split"] == "test"]
    assert not set(val["patient_id"]) & set(test["patient_id"])
    counts = halves.groupby(["class", "view", "split"]).size().unstack("split")
    assert ((counts["test"] - counts["val"]).abs() <= 1).all()  # 19 of the 38 PA opacities in each
    assert counts.loc[("Lung Opacity", "PA"), "val"] == 19
    # seeded: the same halves every time, other halves under another seed
    assert validation_and_test_halves(manifest)["split"].equals(halves["split"])
    assert not validation_and_test_halves(manifest, seed=1)["split"].equals(halves["split"])


def test_each_task_reads_its_own_column(shared_data: Path) -> None:
    manifest = load_inputs(shared_data / "rsna_dev256" / "manifest.csv")
    labelled = {task.name: read_label_column(manifest, task.label_column, "rsna_dev256") for task in TASKS}
    opacity, any_abnormality = labelled["lung_opacity"], labelled["any_abnormality"]
    assert opacity["label"].isna().sum() == 325  # Not Normal films take no part in the opacity task
    assert int((opacity["label"] == 1).sum()) == 184 and int((any_abnormality["label"] == 1).sum()) == 509


def test_a_manifest_without_class_or_view_is_refused() -> None:
    with pytest.raises(ManifestError, match="no column class, view to split by"):
        validation_and_test_halves(pd.DataFrame({"path": ["a.png"], "label": [0], "patient_id": ["p"]}))
