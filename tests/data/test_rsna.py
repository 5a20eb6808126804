"""RSNA pneumonia source: the real challenge tables, DICOM films made from real NIH films."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.rsna import build_rsna_manifest, read_rsna_tables
from cxr_anomaly.errors import ManifestError, MissingFileError

LABELS_HEADER = "patientId,x,y,width,height,Target\n"
CLASS_HEADER = "patientId,class\n"


def labels_dir(shared_data: Path) -> Path:
    return shared_data / "labels"


def test_real_tables_default_excludes_not_normal(shared_data: Path) -> None:
    folder = labels_dir(shared_data)
    manifest = build_rsna_manifest(
        None,
        folder / "kaggle_stage_2_train_labels.csv.zip",
        folder / "stage_2_detailed_class_info.csv",
        headers_csv=folder / "kaggle_stage_2_train_images_dicom_headers.csv.gz",
    )
    assert manifest["label"].value_counts().to_dict() == {0: 8_818, 1: 6_012}
    assert set(manifest["rsna_class"]) == {"Normal", "Lung Opacity"}
    assert manifest["patient_id"].is_unique
    assert manifest["view"].value_counts().to_dict() == {"PA": 8_534, "AP": 6_296}
    assert (manifest.loc[manifest["label"] == 1, "boxes"] >= 1).all()
    assert (manifest.loc[manifest["label"] == 0, "boxes"] == 0).all()


def test_real_tables_can_include_not_normal(shared_data: Path) -> None:
    folder = labels_dir(shared_data)
    manifest = read_rsna_tables(
        folder / "kaggle_stage_2_train_labels.csv.zip",
        folder / "stage_2_detailed_class_info.csv",
        include_not_normal=True,
    )
    assert len(manifest) == 26_684 - 67  # 67 patients have neither a class row nor a box
    not_normal = manifest["rsna_class"] == "No Lung Opacity / Not Normal"
    assert int(not_normal.sum()) == 11_787 and (manifest.loc[not_normal, "label"] == 1).all()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_class_disagreeing_with_target_is_an_error(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", LABELS_HEADER + "p1,,,,,0\np2,1,2,3,4,1\n")
    classes = write(tmp_path / "classes.csv", CLASS_HEADER + "p1,Lung Opacity\np2,Lung Opacity\n")
    with pytest.raises(ManifestError, match="'p1'.*disagrees with Target"):
        read_rsna_tables(labels, classes)


def test_unknown_class_and_bad_target_name_the_row(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", LABELS_HEADER + "p1,,,,,0\n")
    classes = write(tmp_path / "classes.csv", CLASS_HEADER + "p1,Normalish\n")
    with pytest.raises(ManifestError, match="row 2: class 'Normalish'"):
        read_rsna_tables(labels, classes)
    bad_target = write(tmp_path / "bad.csv", LABELS_HEADER + "p1,,,,,yes\n")
    with pytest.raises(ManifestError, match="Target 'yes'") as caught:
        read_rsna_tables(bad_target, classes)
    assert caught.value.path == str(bad_target)


def test_wrong_columns_and_missing_tables(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.csv", "patient,Target\np1,0\n")
    classes = write(tmp_path / "classes.csv", CLASS_HEADER + "p1,Normal\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['patientId'\]"):
        read_rsna_tables(labels, classes)
    with pytest.raises(MissingFileError):
        read_rsna_tables(tmp_path / "absent.csv", classes)


def test_dicom_films_with_views_from_their_headers(shared_data: Path, tmp_path: Path) -> None:
    films = sorted((shared_data / "nih_fullres").glob("*.png"))[:3]
    images = tmp_path / "stage_2_train_images"
    images.mkdir()
    patients = ["p-normal", "p-opacity", "p-other"]
    for patient, film, view in zip(patients, films, ["PA", "AP", "PA"]):
        with Image.open(film) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.uint8)[::4, ::4]  # (1024, 1024) -> (256, 256)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = Dataset()
        dataset.file_meta = meta
        dataset.SOPClassUID = SecondaryCaptureImageStorage
        dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        dataset.ViewPosition = view
        dataset.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=8)
        dataset.save_as(images / f"{patient}.dcm", enforce_file_format=True)
    labels = write(tmp_path / "labels.csv", LABELS_HEADER + "p-normal,,,,,0\np-opacity,1,2,3,4,1\np-other,,,,,0\n")
    classes = write(
        tmp_path / "classes.csv",
        CLASS_HEADER + "p-normal,Normal\np-opacity,Lung Opacity\np-other,No Lung Opacity / Not Normal\n",
    )
    manifest = build_rsna_manifest(images, labels, classes)
    assert manifest.set_index("patient_id")["view"].to_dict() == {"p-normal": "PA", "p-opacity": "AP"}
    loaded = load_images(manifest, DataConfig(image_size=64))
    assert loaded.pixels.shape == (2, 64, 64) and loaded.pixels.std() > 10
