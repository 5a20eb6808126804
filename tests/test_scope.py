"""Scope rules on real films: header rules on real films written as DICOM, the rotation rule on
real films turned a quarter turn, and out-of-scope films listed apart in the worklist and the service."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_anomaly.dicom import FilmHeader, film_header_from_dataset, read_film_headers
from cxr_anomaly.io import read_image
from cxr_anomaly.scope import (
    FOR_PROCESSING,
    IN_SCOPE,
    LATERAL_VIEW,
    NOT_CHEST,
    PAEDIATRIC,
    ROTATED,
    UNKNOWN_VIEW,
    decide_scope,
    fitted_on_adults,
    rotation_evidence,
    scope_column,
    upload_scope,
)

DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"


def dicom_with(pixels: np.ndarray, path: Path, **tags: object) -> Path:
    """Save uint8 pixels as a DX DICOM film carrying the given header tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = tags.pop("SOPClassUID", SecondaryCaptureImageStorage)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.Modality = "DX"
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    dataset.set_pixel_data(
        np.ascontiguousarray(pixels, dtype=np.uint8), photometric_interpretation="MONOCHROME2", bits_stored=8
    )
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def real_films(shared_data: Path) -> list[np.ndarray]:
    """Eight real adult PA films of rsna_dev256 (256x256 uint8)."""
    folder = shared_data / "rsna_dev256"
    manifest = pd.read_csv(folder / "manifest.csv")
    rows = manifest[(manifest["view"] == "PA") & (manifest["age"] >= 18)].head(8)
    return [np.clip(np.rint(read_image(folder / path).array * 255), 0, 255).astype(np.uint8) for path in rows["path"]]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"ViewPosition": "PA", "BodyPartExamined": "CHEST"}, IN_SCOPE),
        ({"ViewPosition": "AP", "PresentationIntentType": "FOR PRESENTATION"}, IN_SCOPE),
        ({"ViewPosition": "LL", "BodyPartExamined": "CHEST"}, LATERAL_VIEW),
        ({"ViewPosition": "RL"}, LATERAL_VIEW),
        ({"ViewPosition": "LATERAL"}, LATERAL_VIEW),
        ({"ViewPosition": "PA", "BodyPartExamined": "HAND"}, NOT_CHEST),
        ({"ViewPosition": "PA", "PresentationIntentType": "FOR PROCESSING"}, FOR_PROCESSING),
        ({"ViewPosition": "PA", "SOPClassUID": DX_FOR_PROCESSING}, FOR_PROCESSING),
        ({"BodyPartExamined": "CHEST"}, UNKNOWN_VIEW),
        ({"ViewPosition": "LLD"}, UNKNOWN_VIEW),
        ({"ViewPosition": "PA", "PatientOrientation": ["F", "L"]}, ROTATED),
        ({"ViewPosition": "PA", "PatientOrientation": ["L", "F"]}, IN_SCOPE),
        ({"ViewPosition": "PA", "PatientAge": "009Y"}, PAEDIATRIC),
        ({"ViewPosition": "PA", "PatientAge": "045Y"}, IN_SCOPE),
    ],
)
def test_header_rules_on_real_films_written_as_dicom(
    real_films: list[np.ndarray], tmp_path: Path, tags: dict[str, object], expected: str
) -> None:
    paths = [
        str(dicom_with(film, tmp_path / f"film{index}.dcm", **dict(tags))) for index, film in enumerate(real_films)
    ]
    headers = read_film_headers(paths)
    reasons = [
        decide_scope(header, read_image(path).array, fitted_on_adults=True).reason
        for header, path in zip(headers, paths)
    ]
    assert reasons == [expected] * len(real_films)


def test_a_child_is_in_scope_for_a_model_not_fitted_on_adults(real_films: list[np.ndarray]) -> None:
    header = FilmHeader("PA", 9.0)
    assert decide_scope(header, real_films[0], fitted_on_adults=False).reason == IN_SCOPE
    assert decide_scope(None, real_films[0], fitted_on_adults=True, manifest_age=9.0).reason == PAEDIATRIC
    assert decide_scope(None, real_films[0], fitted_on_adults=True, manifest_view="LL").reason == LATERAL_VIEW
    assert decide_scope(None, real_films[0], fitted_on_adults=True, manifest_view="PA").reason == IN_SCOPE


def test_rotation_rule_on_real_films_turned_a_quarter_turn(nih_train_normals: np.ndarray) -> None:
    """40 NIH1000 normals as they are, and turned 90 and 270 degrees (the PNG case: no header)."""

    def rotated_count(films: list[np.ndarray]) -> int:
        return sum(decide_scope(None, film, fitted_on_adults=True).reason == ROTATED for film in films)

    assert rotated_count(list(nih_train_normals)) <= 1
    assert rotated_count([np.rot90(film, 1) for film in nih_train_normals]) >= 38
    assert rotated_count([np.rot90(film, 3) for film in nih_train_normals]) >= 38
    evidence = [rotation_evidence(film) for film in nih_train_normals]
    assert np.median(evidence) > 0.3


def test_a_blank_film_gives_no_rotation_evidence() -> None:
    assert rotation_evidence(np.zeros((32, 32), dtype=np.uint8)) == 0.0


def test_film_header_from_a_received_dataset() -> None:
    from pydicom.dataset import Dataset

    dataset = Dataset()
    dataset.ViewPosition = "ll "
    dataset.BodyPartExamined = "Chest"
    dataset.PatientAge = "006M"
    dataset.PresentationIntentType = "FOR PRESENTATION"
    dataset.PatientOrientation = ["L", "F"]
    header = film_header_from_dataset(dataset)
    assert header == FilmHeader("LL", 0.5, "CHEST", "FOR PRESENTATION", None, ("L", "F"))
    assert film_header_from_dataset(Dataset()) == FilmHeader(None, None)


def test_fitted_on_adults_reads_the_training_ages_and_assumes_adults_without_them() -> None:
    assert fitted_on_adults({})  # older checkpoints: RSNA and NIH are adult collections
    assert fitted_on_adults({"training_ages": {"known": 100, "under_adult_age": 3}})
    assert not fitted_on_adults({"training_ages": {"known": 100, "under_adult_age": 60}})


def test_scope_column_reads_dicom_headers_and_the_manifest(real_films: list[np.ndarray], tmp_path: Path) -> None:
    lateral = dicom_with(real_films[0], tmp_path / "lateral.dcm", ViewPosition="LL")
    frontal = dicom_with(real_films[1], tmp_path / "frontal.dcm", ViewPosition="PA")
    png = tmp_path / "film.png"
    from PIL import Image

    Image.fromarray(real_films[2]).save(png)
    manifest = pd.DataFrame(
        {
            "path": [str(lateral), str(frontal), str(png), str(png)],
            "view": [None, None, None, "RL"],
            "age": [None, None, 12, None],
        }
    )
    pixels = np.stack([real_films[0], real_films[1], real_films[2], real_films[2]])
    assert scope_column(manifest, pixels, fitted_on_adults=True) == [LATERAL_VIEW, IN_SCOPE, PAEDIATRIC, LATERAL_VIEW]


def test_upload_scope_reads_the_dicom_bytes(real_films: list[np.ndarray], tmp_path: Path) -> None:
    path = dicom_with(real_films[0], tmp_path / "hand.dcm", ViewPosition="PA", BodyPartExamined="HAND")
    assert upload_scope(path.read_bytes(), "dicom", real_films[0], fitted_on_adults=True).reason == NOT_CHEST
    assert upload_scope(b"\x89PNG", "png", real_films[0], fitted_on_adults=True).reason == IN_SCOPE


class SectionParser(HTMLParser):
    """The paths in the ranked worklist rows and in the out-of-scope rows."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.cell_class: str | None = None
        self.paths: dict[str, list[str]] = {"film-row": [], "out-of-scope-row": []}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "tr" and values.get("class") in self.paths:
            self.section = values["class"]
        if tag == "td":
            self.cell_class = values.get("class")

    def handle_data(self, data: str) -> None:
        if self.section is not None and self.cell_class == "path" and data.strip():
            self.paths[self.section].append(data.strip())

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.cell_class = None


def test_worklist_lists_out_of_scope_films_apart_unranked(
    tiny_nih_model, real_films: list[np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """score --report on four frontal PNGs, one lateral DICOM and one film turned a quarter turn."""
    from PIL import Image

    from cxr_anomaly.cli import main

    paths = []
    for index, film in enumerate(real_films[:4]):
        paths.append(tmp_path / f"frontal{index}.png")
        Image.fromarray(film).save(paths[-1])
    paths.append(dicom_with(real_films[4], tmp_path / "lateral.dcm", ViewPosition="LL"))
    paths.append(tmp_path / "turned.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(real_films[5]))).save(paths[-1])
    manifest = tmp_path / "films.csv"
    pd.DataFrame({"path": [str(path) for path in paths]}).to_csv(manifest, index=False)
    out_csv, report = tmp_path / "worklist.csv", tmp_path / "worklist.html"
    assert (
        main(
            [
                "score",
                "--model",
                str(tiny_nih_model.checkpoint),
                str(manifest),
                "--out",
                str(out_csv),
                "--report",
                str(report),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "2 outside the model's scope" in printed and " of 4 flagged)" in printed
    worklist = pd.read_csv(out_csv)
    assert len(worklist) == 6  # never dropped
    assert worklist["scope"].tolist()[:4] == [IN_SCOPE] * 4
    assert sorted(worklist["scope"].tolist()[4:]) == [LATERAL_VIEW, ROTATED]
    assert worklist["rank"].tolist()[:4] == [1, 2, 3, 4] and worklist["rank"].iloc[4:].isna().all()
    parser = SectionParser()
    parser.feed(report.read_text(encoding="utf-8"))
    assert sorted(parser.paths["film-row"]) == sorted(str(path) for path in paths[:4])
    assert sorted(parser.paths["out-of-scope-row"]) == sorted(str(path) for path in paths[4:])


def test_service_reply_carries_the_scope(tiny_nih_model, real_films: list[np.ndarray], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cxr_anomaly.serve import ServiceSettings, create_app

    lateral = dicom_with(real_films[0], tmp_path / "lateral.dcm", ViewPosition="LL").read_bytes()
    frontal = dicom_with(real_films[1], tmp_path / "frontal.dcm", ViewPosition="PA").read_bytes()
    with TestClient(create_app(tiny_nih_model.checkpoint, ServiceSettings())) as client:
        replies = [
            client.post("/v1/score", files={"file": ("film.dcm", data, "application/dicom")})
            for data in (lateral, frontal)
        ]
        png = client.post("/v1/score?format=png", files={"file": ("film.dcm", lateral, "application/dicom")})
    assert [reply.status_code for reply in replies] == [200, 200]
    assert [reply.json()["scope"] for reply in replies] == [LATERAL_VIEW, IN_SCOPE]
    assert png.headers["X-Scope"] == LATERAL_VIEW
