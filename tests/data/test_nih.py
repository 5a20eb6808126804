"""NIH ChestX-ray14 source: the real label table, exact label matching, hostile tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxr_anomaly.data.nih import NIH_FINDINGS, attach_image_paths, index_image_files, nih_label, read_nih_table
from cxr_anomaly.errors import ManifestError, MissingFileError

HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"


def write_table(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(HEADER + "".join(row + "\n" for row in rows))
    return path


def test_real_table_counts(nih_table: pd.DataFrame) -> None:
    manifest = nih_table
    assert len(manifest) == 112_120
    assert manifest["label"].value_counts().to_dict() == {0: 60_361, 1: 51_759}
    assert manifest["patient_id"].nunique() == 30_805
    assert manifest["view"].value_counts().to_dict() == {"PA": 67_310, "AP": 44_810}
    assert int(manifest["finding_hernia"].sum()) == 227
    assert int(manifest["finding_pneumonia"].sum()) == 1_431
    # label 1 exactly when some finding column is set
    finding_columns = [f"finding_{name.lower()}" for name in NIH_FINDINGS]
    assert (manifest[finding_columns].sum(axis=1).gt(0).astype(int) == manifest["label"]).all()


def test_labels_are_matched_as_whole_tokens(tmp_path: Path) -> None:
    table = write_table(
        tmp_path,
        [
            "a_000.png,No Finding,0,1,50,M,PA",
            "b_000.png,Pleural_Thickening|Hernia,0,2,50,F,AP",
            "c_000.png,Pneumonia,0,3,50,F,PA",
        ],
    )
    manifest = read_nih_table(table)
    assert manifest["label"].tolist() == [0, 1, 1]
    assert manifest["finding_pneumonia"].tolist() == [0, 0, 1]
    assert manifest["finding_pleural_thickening"].tolist() == [0, 1, 0]


@pytest.mark.parametrize("bad_value", ["No Findings", "Pneumonia2", "Pleural", "No Finding|Mass", "mass"])
def test_unknown_or_partial_labels_are_errors_naming_the_row(tmp_path: Path, bad_value: str) -> None:
    table = write_table(tmp_path, ["a_000.png,No Finding,0,1,50,M,PA", f"b_000.png,{bad_value},0,2,50,F,AP"])
    with pytest.raises(ManifestError) as caught:
        read_nih_table(table)
    assert caught.value.path == str(table)
    assert "row 3" in caught.value.reason and bad_value in caught.value.reason


def test_single_label_helper() -> None:
    assert nih_label("No Finding") == 0
    assert nih_label("Effusion|Mass") == 1
    with pytest.raises(ManifestError):
        nih_label("Effusions")


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("Image Index,Finding Labels,Patient ID\na.png,No Finding,1\n")
    with pytest.raises(ManifestError, match="View Position") as caught:
        read_nih_table(path)
    assert caught.value.path == str(path)


def test_missing_or_empty_table(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        read_nih_table(tmp_path / "absent.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ManifestError, match="cannot parse"):
        read_nih_table(empty)


def test_manifest_with_images_on_disk(shared_data: Path, nih_table: pd.DataFrame) -> None:
    folder = shared_data / "nih_fullres"
    files = index_image_files(folder)
    with pytest.raises(MissingFileError, match="not under the image folder"):
        attach_image_paths(nih_table, files, "Data_Entry_2017_v2020.csv.gz", "error")
    manifest = attach_image_paths(nih_table, files, "Data_Entry_2017_v2020.csv.gz", "skip")
    assert len(manifest) == 20 and manifest.attrs["absent_files_count"] == 112_100
    assert manifest["path"].map(lambda path: Path(path).is_file()).all()
    reference = pd.read_csv(folder / "manifest.csv").set_index("image_index")
    expected = reference.loc[manifest["image_index"], "abnormal"].to_numpy()
    assert (manifest["label"].to_numpy() == expected).all()
