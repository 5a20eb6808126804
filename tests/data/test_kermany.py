"""Kermany/ZhangLab source on the real 224² copy."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxr_anomaly.data.kermany import build_kermany_manifest, is_kermany_folder, kermany_patient_key
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.data.splits import summarise_split
from cxr_anomaly.errors import ManifestError, MissingFileError


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1_virus_6.jpeg", "person1"),
        ("person1000_virus_1681_1.jpeg", "person1000"),
        ("IM-0005-0001.jpeg", "N1-IM-0005"),
        ("IM-0115-0001-0002.jpeg", "N1-IM-0115"),
        ("NORMAL2-IM-0041-0001.jpeg", "N2-IM-0041"),
        ("scan.jpeg", None),
    ],
)
def test_patient_keys_from_file_names(name: str, key: str | None) -> None:
    assert kermany_patient_key(name) == key


def test_real_copy(shared_data: Path) -> None:
    root = shared_data / "kermany224" / "data"
    assert is_kermany_folder(root)
    manifest = build_kermany_manifest(root)
    assert summarise_split(manifest).films == {
        ("train", 0): 1108,
        ("train", 1): 2991,
        ("val", 0): 237,
        ("val", 1): 641,
        ("test", 0): 238,
        ("test", 1): 641,
    }
    reference = pd.read_csv(shared_data / "kermany224" / "manifest.csv")
    reference["name"] = reference["path"].str.rsplit("/", n=1).str[-1]
    keys = manifest.assign(name=manifest["path"].str.rsplit("/", n=1).str[-1]).merge(reference, on="name")
    assert len(keys) == 5856 and (keys["patient_id"] == keys["patient_key"]).all()
    assert set(manifest.loc[manifest["label"] == 1, "pneumonia_type"]) == {"bacteria", "virus"}
    assert manifest.loc[manifest["label"] == 0, "pneumonia_type"].isna().all()
    # The shipped split shares patients between train and test: the reason for re-splitting.
    train = set(manifest.loc[manifest["split"] == "train", "patient_id"])
    test = set(manifest.loc[manifest["split"] == "test", "patient_id"])
    assert len(train & test) == 408


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        build_kermany_manifest(tmp_path / "absent")
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "train" / "NORMAL" / "notes.txt").write_text("no films")
    with pytest.raises(ManifestError, match="no .jpeg"):
        build_kermany_manifest(tmp_path)


def test_a_sites_normal_and_abnormal_folders_are_not_read_as_kermany(tmp_path: Path, shared_data: Path) -> None:
    # A folder named normal/ once sent the whole tree to the Kermany reader, which read only
    # NORMAL/PNEUMONIA films: the abnormal/ films were left out and every film was called AP.
    nih = shared_data / "nih1000" / "test"
    site = tmp_path / "site"
    for folder, source in (("normal", "0_normal"), ("abnormal", "1_abnormal")):
        (site / folder).mkdir(parents=True)
        for film in sorted((nih / source).glob("*.png"))[:2]:
            (site / folder / film.name).write_bytes(film.read_bytes())
    assert not is_kermany_folder(site)
    table = load_inputs(site)
    assert sorted(table["label"].tolist()) == [0, 0, 1, 1] and table["view"].isna().all()


def test_a_kermany_like_tree_with_other_files_is_scanned_whole(tmp_path: Path, shared_data: Path) -> None:
    kermany = next((shared_data / "kermany224" / "data").rglob("person*.jpeg"))
    tree = tmp_path / "chest_xray" / "test"
    for folder in ("NORMAL", "PNEUMONIA"):
        (tree / folder).mkdir(parents=True)
    (tree / "PNEUMONIA" / kermany.name).write_bytes(kermany.read_bytes())
    assert is_kermany_folder(tmp_path)
    # a film the Kermany reader cannot list (no .jpeg/.jpg/.png suffix, a DICOM from a PACS, say)
    (tree / "NORMAL" / "IM0001").write_bytes(kermany.read_bytes())
    assert not is_kermany_folder(tmp_path)
    table = load_inputs(tmp_path)
    assert sorted(Path(path).name for path in table["path"]) == ["IM0001", kermany.name]
    # file names without Kermany patient keys are not Kermany's either
    other = tmp_path / "other" / "NORMAL"
    other.mkdir(parents=True)
    (other / "scan.png").write_bytes(next((shared_data / "nih1000" / "test" / "0_normal").glob("*.png")).read_bytes())
    assert not is_kermany_folder(tmp_path / "other")
