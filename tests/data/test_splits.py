"""Paper splits on the real NIH and RSNA tables, and patient-disjoint re-splits of real sets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxr_anomaly.data.manifest import read_manifest_csv
from cxr_anomaly.data.rsna import build_rsna_manifest
from cxr_anomaly.data.splits import (
    NIH_PAPER_SIZES,
    RSNA_PAPER_SIZES,
    PaperSplitSizes,
    nih_paper_split,
    patient_disjoint_split,
    resplit_manifest,
    rsna_paper_split,
    summarise_split,
)
from cxr_anomaly.errors import ConfigError, ManifestError

NIH_EXPECTED = {("train", 0): 4479, ("val", 0): 849, ("val", 1): 857, ("test", 0): 677, ("test", 1): 667}
RSNA_EXPECTED = {("train", 0): 6000, ("val", 0): 1025, ("val", 1): 1025, ("test", 0): 1000, ("test", 1): 1000}


@pytest.fixture(scope="module")
def rsna_table(shared_data: Path) -> pd.DataFrame:
    labels = shared_data / "labels"
    return build_rsna_manifest(
        None,
        labels / "kaggle_stage_2_train_labels.csv.zip",
        labels / "stage_2_detailed_class_info.csv",
        headers_csv=labels / "kaggle_stage_2_train_images_dicom_headers.csv.gz",
    )


def assert_patient_disjoint(split: pd.DataFrame) -> None:
    patients_per_split = [set(split.loc[split["split"] == name, "patient_id"]) for name in ("train", "val", "test")]
    assert not patients_per_split[0] & patients_per_split[1]
    assert not patients_per_split[0] & patients_per_split[2]
    assert not patients_per_split[1] & patients_per_split[2]
    assert summarise_split(split).crossing_patients == []


@pytest.mark.parametrize("view", ["all", "PA", "AP"])
def test_nih_paper_split_has_the_exact_sizes_and_no_shared_patient(nih_table: pd.DataFrame, view: str) -> None:
    split = nih_paper_split(nih_table, seed=7, view=view)
    assert summarise_split(split).films == NIH_EXPECTED
    assert len(split) == 4479 + 849 + 857 + 677 + 667
    assert_patient_disjoint(split)
    assert not split["path"].duplicated().any()
    if view != "all":
        assert set(split["view"]) == {view}
    # Labels come from the official table: "No Finding" exactly for normal films.
    assert (split.loc[split["label"] == 0, "finding_labels"] == "No Finding").all()
    assert (split.loc[split["label"] == 1, "finding_labels"] != "No Finding").all()


def test_nih_paper_split_is_deterministic_for_a_seed(nih_table: pd.DataFrame) -> None:
    first = nih_paper_split(nih_table, seed=3)
    again = nih_paper_split(nih_table.sample(frac=1.0, random_state=1), seed=3)  # row order must not matter
    other = nih_paper_split(nih_table, seed=4)
    assert first[["path", "split"]].reset_index(drop=True).equals(again[["path", "split"]].reset_index(drop=True))
    assert set(first["path"]) != set(other["path"])


def test_nih_sizes_can_be_changed(nih_table: pd.DataFrame) -> None:
    sizes = PaperSplitSizes(train_normal=100, val_normal=20, val_abnormal=30, test_normal=40, test_abnormal=50)
    split = nih_paper_split(nih_table, seed=0, view="PA", sizes=sizes)
    assert summarise_split(split).films == {
        ("train", 0): 100,
        ("val", 0): 20,
        ("val", 1): 30,
        ("test", 0): 40,
        ("test", 1): 50,
    }
    assert_patient_disjoint(split)


def test_impossible_sizes_say_what_is_missing(nih_table: pd.DataFrame) -> None:
    with pytest.raises(ManifestError, match="train/normal"):
        nih_paper_split(nih_table, seed=0, view="AP", sizes=NIH_PAPER_SIZES.scaled(2.0))


def test_rsna_paper_split_has_the_exact_sizes(rsna_table: pd.DataFrame) -> None:
    split = rsna_paper_split(rsna_table, seed=11)
    assert summarise_split(split).films == RSNA_EXPECTED
    assert_patient_disjoint(split)
    assert set(split.loc[split["label"] == 0, "rsna_class"]) == {"Normal"}
    assert set(split.loc[split["label"] == 1, "rsna_class"]) == {"Lung Opacity"}
    assert rsna_paper_split(rsna_table, seed=11)["path"].tolist() == split["path"].tolist()


def test_rsna_view_filter(rsna_table: pd.DataFrame) -> None:
    # The RSNA table holds 7,186 PA normals: the full experiment 2 (8,025 normals) cannot be PA only.
    with pytest.raises(ManifestError, match="view=PA"):
        rsna_paper_split(rsna_table, seed=0, view="PA")
    split = rsna_paper_split(rsna_table, seed=0, view="PA", sizes=RSNA_PAPER_SIZES.scaled(0.5))
    assert set(split["view"]) == {"PA"}
    assert len(split) == sum(vars(RSNA_PAPER_SIZES.scaled(0.5)).values())


def test_unknown_view_is_refused(nih_table: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match="LATERAL"):
        nih_paper_split(nih_table, seed=0, view="LATERAL")  # type: ignore[arg-type]


def test_patient_disjoint_split_of_nih1000(shared_data: Path) -> None:
    manifest = read_manifest_csv(shared_data / "nih1000" / "manifest.csv")
    assert summarise_split(manifest).crossing_patients  # the shipped split shares patients
    result = patient_disjoint_split(manifest, seed=0, val_fraction=0.1, test_fraction=0.2)
    assert_patient_disjoint(result)
    counts = result["split"].value_counts()
    assert 150 <= counts["test"] <= 250 and 60 <= counts["val"] <= 140
    for split_name in ("train", "val", "test"):  # roughly stratified: both labels everywhere
        assert set(result.loc[result["split"] == split_name, "label"]) == {0, 1}
    assert (result["original_split"] == manifest["split"]).all()
    again = patient_disjoint_split(manifest, seed=0, val_fraction=0.1, test_fraction=0.2)
    assert again["split"].equals(result["split"])


def test_rows_without_patient_are_their_own_group() -> None:
    manifest = pd.DataFrame(
        {
            "path": [f"f{i}.png" for i in range(40)],
            "label": [0] * 30 + [1] * 10,
            "patient_id": ["A"] * 10 + [pd.NA] * 30,
        }
    )
    result = patient_disjoint_split(manifest, seed=1, val_fraction=0.25, test_fraction=0.25)
    assert result.loc[:9, "split"].nunique() == 1  # patient A stays together
    assert result.loc[10:, "split"].nunique() == 3  # the others are spread


@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(-0.1, 0.2), (0.5, 0.5), (0.1, 1.0)])
def test_bad_fractions_are_refused(val_fraction: float, test_fraction: float) -> None:
    manifest = pd.DataFrame({"path": ["a.png"], "label": [0], "patient_id": ["1"]})
    with pytest.raises(ConfigError):
        patient_disjoint_split(manifest, seed=0, val_fraction=val_fraction, test_fraction=test_fraction)


@pytest.mark.parametrize("folder", ["nih1000", "kermany224"])
def test_resplit_command_writes_a_disjoint_manifest(shared_data: Path, tmp_path: Path, folder: str) -> None:
    output = tmp_path / "split.csv"
    report = resplit_manifest(shared_data / folder, output, seed=5, val_fraction=0.15, test_fraction=0.15)
    assert report.original_crossing_patients > 0
    written = read_manifest_csv(output)
    assert len(written) == {"nih1000": 1000, "kermany224": 5856}[folder]
    assert_patient_disjoint(written)
    assert written["path"].map(lambda path: Path(path).is_file()).all()


def test_resplit_refuses_data_without_patient_ids(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="patient"):
        resplit_manifest(
            shared_data / "medmnist" / "pneumoniamnist.npz",
            tmp_path / "x.csv",
            seed=0,
            val_fraction=0.1,
            test_fraction=0.1,
        )


def test_split_command_builds_the_nih_paper_split(shared_data: Path, tmp_path: Path) -> None:
    from cxr_anomaly.cli import main

    output = tmp_path / "nih_paper.csv"
    table = shared_data / "labels" / "Data_Entry_2017_v2020.csv.gz"
    assert main(["split", str(table), "--paper", "nih", "--view", "PA", "--seed", "2", "--out", str(output)]) == 0
    written = pd.read_csv(output, dtype={"patient_id": str})
    assert summarise_split(written).films == NIH_EXPECTED and set(written["view"]) == {"PA"}


def test_paper_split_with_images_on_disk(shared_data: Path, tmp_path: Path) -> None:
    from cxr_anomaly.data.splits import write_paper_split

    sizes = PaperSplitSizes(train_normal=4, val_normal=2, val_abnormal=2, test_normal=2, test_abnormal=2)
    report = write_paper_split(
        "nih",
        tmp_path / "small.csv",
        seed=0,
        sizes=sizes,
        on_missing="skip",
        labels_csv=shared_data / "labels" / "Data_Entry_2017_v2020.csv.gz",
        image_root=shared_data / "nih_fullres",
    )
    written = read_manifest_csv(tmp_path / "small.csv")
    assert len(written) == 12 and report.summary.crossing_patients == []
    assert written["path"].map(lambda path: Path(path).is_file()).all()


def test_rsna_view_filter_without_views_is_explained(shared_data: Path) -> None:
    labels = shared_data / "labels"
    table = build_rsna_manifest(
        None, labels / "kaggle_stage_2_train_labels.csv.zip", labels / "stage_2_detailed_class_info.csv"
    )
    with pytest.raises(ManifestError, match="no view information"):
        rsna_paper_split(table, seed=0, view="PA")
