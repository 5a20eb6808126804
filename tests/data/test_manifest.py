"""Manifest CSVs and folders: the real shipped manifests and malformed tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_anomaly.data.manifest import (
    fill_from_dicom_headers,
    load_inputs,
    normalise_manifest,
    read_manifest_csv,
    scan_folder,
)
from cxr_anomaly.dicom import parse_patient_age
from cxr_anomaly.errors import ManifestError, MissingFileError


def test_folder_with_manifest_csv_keeps_patient_ids(shared_data: Path) -> None:
    manifest = load_inputs(shared_data / "nih1000")
    assert len(manifest) == 1000
    assert manifest["patient_id"].notna().all() and manifest["view"].isin(["PA", "AP"]).all()
    assert manifest["path"].map(lambda path: Path(path).is_file()).all()


def test_text_labels_and_patient_key_of_the_kermany_copy(shared_data: Path) -> None:
    manifest = read_manifest_csv(shared_data / "kermany224" / "manifest.csv")
    assert manifest["label"].value_counts().to_dict() == {1: 4273, 0: 1583}
    assert manifest["patient_id"].notna().all()


def test_kermany_tree_gets_patient_keys(shared_data: Path) -> None:
    manifest = load_inputs(shared_data / "kermany224" / "data")
    assert len(manifest) == 5856 and manifest["patient_id"].notna().all()


def write(tmp_path: Path, text: str | bytes, name: str = "manifest.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,label\na.png,0\n", "missing required column 'path'"),
        ("path,label\na.png,maybe\n", "row 1: label 'maybe' is not 0, 1 or empty"),
        ("path,label,split\na.png,0,holdout\n", "row 1: split 'holdout' is not train, val or test"),
        ("path,label\na.png,0\n ,1\n", "row 2: empty path"),
        ("path,label\na.png,2\n", "label '2'"),
        (b"path,label\n\xff\xfe\x00\x81,0\n", "cannot parse CSV"),
        ("", "cannot parse CSV"),
    ],
)
def test_malformed_csv_names_the_file_and_the_problem(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ManifestError) as caught:
        read_manifest_csv(path)
    assert caught.value.path == str(path)
    assert message in caught.value.reason


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        read_manifest_csv(tmp_path / "absent.csv")
    with pytest.raises(MissingFileError):
        load_inputs(tmp_path / "absent_folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no image files"):
        load_inputs(tmp_path / "empty")


def test_npz_without_images(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "labels_only.npz"
    np.savez(path, train_labels=np.zeros((3, 1)))
    with pytest.raises(ManifestError, match="_images"):
        load_inputs(path)
    broken = write(tmp_path, b"not a zip archive", "broken.npz")
    with pytest.raises(ManifestError, match="cannot open as npz"):
        load_inputs(broken)


def test_scan_folder_finds_dicom_files_without_a_suffix(
    tmp_path: Path, shared_data: Path, dicom_writer: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image

    film = np.asarray(Image.open(shared_data / "nih_fullres" / "00000427_000.png").convert("L"))
    series = tmp_path / "series"
    series.mkdir()
    dicom_writer(film, series / "IM0001", study_uid="1.2.3", sop_uid="1.2.3.1")
    dicom_writer(film, series / "1.2.840.10008.99", study_uid="1.2.3", sop_uid="1.2.3.2")
    (series / "notes.bin").write_bytes(b"not an image at all")
    with caplog.at_level("WARNING"):
        table = scan_folder(series)
    assert sorted(Path(p).name for p in table["path"]) == ["1.2.840.10008.99", "IM0001"]
    assert "notes.bin" in caplog.text


def test_a_pacs_series_folder_named_1_gives_no_label(
    tmp_path: Path, shared_data: Path, dicom_writer: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    # A PACS export: study/series folders numbered 0 and 1, beside a documented normal/ folder.
    from PIL import Image

    film = np.asarray(Image.open(shared_data / "nih_fullres" / "00000427_000.png").convert("L"))[::4, ::4]
    export = tmp_path / "export"
    for index, series in enumerate(("1.2.3/1", "1.2.3/0", "positive")):
        (export / series).mkdir(parents=True)
        dicom_writer(film, export / series / "IM0001", study_uid="1.2.3", sop_uid=f"1.2.3.{index}")
    (export / "Normal" / "test").mkdir(parents=True)
    nih_normal = next((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))
    (export / "Normal" / "test" / nih_normal.name).write_bytes(nih_normal.read_bytes())
    with caplog.at_level("INFO", logger="cxr_anomaly.data.manifest"):
        table = scan_folder(export)
    labels = {
        Path(path).relative_to(export.resolve()).as_posix(): label for path, label in zip(table["path"], table["label"])
    }
    assert labels.keys() == {"1.2.3/1/IM0001", "1.2.3/0/IM0001", "positive/IM0001", f"Normal/test/{nih_normal.name}"}
    assert all(labels[name] is pd.NA for name in ("1.2.3/1/IM0001", "1.2.3/0/IM0001", "positive/IM0001"))
    assert labels[f"Normal/test/{nih_normal.name}"] == 0
    assert list(table["split"].dropna()) == ["test"]
    messages = [record.getMessage() for record in caplog.records]
    assert (
        sum("1.2.3/1: 1 film(s) without a label" in text and "'1' is not read as a label" in text for text in messages)
        == 1
    )
    assert sum("Normal/test: 1 film(s) labelled 0 from the folder name 'Normal'" in text for text in messages) == 1


def test_folders_naming_two_labels_are_refused(tmp_path: Path, shared_data: Path) -> None:
    nih_normal = next((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))
    confused = tmp_path / "root" / "abnormal" / "normal"
    confused.mkdir(parents=True)
    (confused / nih_normal.name).write_bytes(nih_normal.read_bytes())
    with pytest.raises(ManifestError, match="'abnormal', 'normal' name different labels"):
        scan_folder(tmp_path / "root")


def test_views_and_ages_of_dicom_films_come_from_their_headers_where_the_manifest_has_none(
    tmp_path: Path, shared_data: Path, dicom_writer: Callable[..., Path]
) -> None:
    film = np.zeros((8, 8), np.uint8)
    headers = [("pa ", "042Y"), ("AP", "006M"), (None, None), ("LL", "bad"), ("AP", "070Y")]
    paths = [
        dicom_writer(film, tmp_path / f"{index}.dcm", study_uid="1.2.3", sop_uid=f"1.2.3.{index}", view=view, age=age)
        for index, (view, age) in enumerate(headers)
    ]
    png = next((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))
    table = normalise_manifest(
        pd.DataFrame(
            {
                "path": [str(path) for path in paths] + [str(png), str(tmp_path / "absent.dcm")],
                "label": [0, 1, 0, 1, 0, 0, 1],
                "view": [None, None, None, None, "PA", None, None],  # the manifest names the fifth film's view
            }
        ),
        "test",
    )
    filled = fill_from_dicom_headers(table)
    # upper-case and stripped; a manifest's own view wins over the header; PNG, missing file and
    # a header without the tag stay empty; the input table is left as it was
    assert filled["view"].fillna("-").tolist() == ["PA", "AP", "-", "LL", "PA", "-", "-"]
    assert filled["age"].fillna(-1).tolist() == [42.0, 0.5, -1, -1, 70.0, -1, -1]
    assert table["view"].isna().sum() == 6 and "age" not in table
    # an age the manifest gives is kept
    with_ages = fill_from_dicom_headers(table.assign(age=[30, None, None, None, None, None, None]))
    assert with_ages["age"].tolist()[:2] == [30.0, 0.5]
    # without ages (the worklist's case) only views are filled and no age column appears
    views_only = fill_from_dicom_headers(table, ages=False)
    assert views_only["view"].fillna("-").tolist() == filled["view"].fillna("-").tolist() and "age" not in views_only
    only_png = filled.iloc[[5]]
    assert fill_from_dicom_headers(only_png) is only_png  # no DICOM film lacking a value: nothing read


@pytest.mark.parametrize(
    ("value", "years"),
    [
        ("042Y", 42.0),
        ("018M", 1.5),
        ("026W", 0.5),
        ("365D", 1.0),
        ("42Y", None),
        ("042", None),
        ("", None),
        (None, None),
    ],
)
def test_dicom_age_strings(value: object, years: float | None) -> None:
    assert parse_patient_age(value) == years
