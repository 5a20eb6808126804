"""The DICOM results of one scored film (pacs.results) and the test films they refer to (pacs.testing).

Real chest films from ``../shared/data`` become DICOM films; their results are built, written,
read back with pydicom and highdicom, and checked with dicom3tools' ``dciodvfy`` where installed.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="the DICOM results need highdicom: pip install 'cxr-anomaly[pacs]'")

import pydicom

from cxr_anomaly.explain import _inferno_table, colour_bar, overlay_heatmap
from cxr_anomaly.io import read_image
from cxr_anomaly.pacs.results import (
    FilmResult,
    PacsExtraMissingError,
    ResultObjects,
    build_results,
    read_structured_report,
    result_uids,
    write_results,
)
from cxr_anomaly.pacs.testing import film_dataset_from_png

PATIENT_ID = "PID-93417"
NIH_FILM = "nih_pneumonia256/normal/00001280_004.png"
RSNA_FILM = "rsna_dev256/normal/00f87de5-5fe0-4921-93ea-914d7e683266.jpg"
SCALE_FLOOR, SCALE_TOP = 0.125, 0.875
RESULT = FilmResult(
    raw_score=47.123456789,
    calibrated_score=1.2345,
    percentile=93.5,
    decision="flagged",
    operating_point="threshold 47.3 (sensitivity 0.90 on validation)",
    scope="in_scope",
    model_name="tang2019",
    model_version="tang2019 0.1.0 3f2a9c1",
)


def _film(shared_data: Path, relative: str, **options: object) -> pydicom.Dataset:
    """A DICOM film of a real image, written and read back as a PACS would hold it."""
    image = shared_data / relative
    if not image.is_file():
        pytest.skip(f"{image} not found in ../shared/data")
    return film_dataset_from_png(image, patient_id=PATIENT_ID, study_uid=None, **options)


def _overlay(source: pydicom.Dataset) -> np.ndarray:
    """A heatmap over the film: a smooth bump in the right lung, fixed so reruns agree."""
    film = source.pixel_array.astype(np.float32) / float((1 << source.BitsStored) - 1)
    rows, columns = np.mgrid[0:16, 0:16].astype(np.float32)
    anomaly_map = np.exp(-((rows - 6.0) ** 2 + (columns - 5.0) ** 2) / 8.0)
    return overlay_heatmap(film, anomaly_map, scale=SCALE_TOP, floor=SCALE_FLOOR)


@pytest.fixture(
    scope="module", params=[(NIH_FILM, 12, "DX", "PA"), (RSNA_FILM, 8, "CR", "AP")], ids=["nih-dx12", "rsna-cr8"]
)
def film(request: pytest.FixtureRequest, shared_data: Path) -> pydicom.Dataset:
    relative, bits, modality, view = request.param
    return _film(shared_data, relative, bits=bits, modality=modality, view_position=view)


@pytest.fixture(scope="module")
def written(film: pydicom.Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The film saved as a file, its results built and written, and both read back with pydicom."""
    folder = tmp_path_factory.mktemp("results")
    film_path = folder / "film.dcm"
    film.save_as(film_path, enforce_file_format=True)
    received = pydicom.dcmread(film_path)  # as the listener gets it
    overlay = _overlay(received)
    objects = build_results(received, RESULT, overlay, scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)
    paths = write_results(objects, folder / "out")
    by_modality = {pydicom.dcmread(path).Modality: path for path in paths}
    return {
        "film": received,
        "film_path": film_path,
        "overlay": overlay,
        "objects": objects,
        "paths": paths,
        "sr_path": by_modality["SR"],
        "sc_path": by_modality["OT"],
        "sr": pydicom.dcmread(by_modality["SR"]),
        "sc": pydicom.dcmread(by_modality["OT"]),
    }


def test_structured_report_reads_back_every_value(written: dict[str, object]) -> None:
    film, report = written["film"], written["sr"]
    reported = read_structured_report(report)
    assert reported.raw_score == pytest.approx(RESULT.raw_score, rel=1e-12)
    assert reported.calibrated_score == pytest.approx(RESULT.calibrated_score, rel=1e-12)
    assert reported.percentile == pytest.approx(RESULT.percentile, rel=1e-12)
    assert reported.decision == "flagged"
    assert reported.operating_point == RESULT.operating_point
    assert reported.scope == "in_scope"
    assert (reported.model_name, reported.model_version) == (RESULT.model_name, RESULT.model_version)
    assert reported.source_sop_instance_uid == film.SOPInstanceUID
    assert reported.source_sop_class_uid == film.SOPClassUID
    assert report.SOPClassUID == pydicom.uid.ComprehensiveSRStorage


def test_results_belong_to_the_films_study_in_new_series(written: dict[str, object]) -> None:
    import highdicom as hd

    film, report, capture = written["film"], written["sr"], written["sc"]
    for result in (report, capture):
        assert result.StudyInstanceUID == film.StudyInstanceUID
        assert result.PatientID == film.PatientID and result.PatientName == film.PatientName
        assert result.SeriesInstanceUID != film.SeriesInstanceUID
    assert "PixelData" not in report
    assert report.SeriesInstanceUID != capture.SeriesInstanceUID
    # the SR lists the film as evidence of the current procedure (same study), read by highdicom itself
    evidence = hd.sr.srread(written["sr_path"]).get_evidence(current_procedure_only=True)
    assert evidence == [(film.StudyInstanceUID, film.SeriesInstanceUID, film.SOPInstanceUID, film.SOPClassUID)]
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == film.SOPInstanceUID


def test_secondary_capture_is_the_overlay_above_its_colour_scale(written: dict[str, object]) -> None:
    overlay, capture = written["overlay"], written["sc"]
    pixels = capture.pixel_array
    height, width = overlay.shape[:2]
    assert capture.PhotometricInterpretation == "RGB" and capture.SamplesPerPixel == 3
    assert pixels.shape[1:] == (width, 3) and pixels.shape[0] > height
    np.testing.assert_array_equal(pixels[:height], overlay)
    strip = pixels[height:].astype(np.int64)
    bar_row = strip[strip.shape[0] // 4]  # a row through the bar
    margin = max(4, round(width * 0.04))
    inferno = _inferno_table().astype(np.int64)
    assert np.abs(bar_row[margin + 1] - inferno[0]).max() <= 12  # weakest colour at the left end
    assert np.abs(bar_row[width - margin - 2] - inferno[255]).max() <= 12  # strongest at the right end
    assert (strip[strip.shape[0] // 2 :] >= 250).all(axis=-1).any()  # white label text under the bar
    assert "not for diagnosis" in capture.SeriesDescription


def test_a_given_colour_bar_is_the_one_drawn(film: pydicom.Dataset) -> None:
    green = np.zeros((12, 64, 3), dtype=np.uint8)
    green[..., 1] = 200
    overlay = _overlay(film)
    objects = build_results(film, RESULT, overlay, green, scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)
    strip = objects.secondary_capture.pixel_array[overlay.shape[0] :]
    bar_row = strip[strip.shape[0] // 4]
    width = overlay.shape[1]
    assert (bar_row[width // 4 : 3 * width // 4] == [0, 200, 0]).all()
    assert not np.array_equal(colour_bar(width=64, height=12), green)


def test_uids_are_deterministic_per_film_and_model_version(written: dict[str, object]) -> None:
    film, objects = written["film"], written["objects"]
    again = build_results(film, RESULT, written["overlay"], scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)
    assert _uids(again) == _uids(objects)
    newer = build_results(
        film,
        replace(RESULT, model_version="tang2019 0.2.0"),
        written["overlay"],
        scale_floor=SCALE_FLOOR,
        scale_top=SCALE_TOP,
    )
    assert not set(_uids(newer)) & set(_uids(objects))
    other_film = result_uids("1.2.3.4.5", RESULT.model_version)
    assert other_film != result_uids(film.SOPInstanceUID, RESULT.model_version)
    assert len({*_uids(objects), film.SOPInstanceUID, film.SeriesInstanceUID}) == 6


def _uids(objects: ResultObjects) -> tuple[str, ...]:
    return tuple(
        str(dataset[keyword].value)
        for dataset in (objects.structured_report, objects.secondary_capture)
        for keyword in ("SeriesInstanceUID", "SOPInstanceUID")
    )


def test_a_resend_overwrites_the_same_files(written: dict[str, object]) -> None:
    folder = written["paths"][0].parent
    again = build_results(written["film"], RESULT, written["overlay"], scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)
    assert write_results(again, folder) == written["paths"]
    assert sorted(folder.iterdir()) == sorted(written["paths"])  # no second result, no temporary file left


def test_out_of_scope_film_is_reported_not_assessed(film: pydicom.Dataset) -> None:
    lateral = replace(RESULT, scope="lateral_view", calibrated_score=None, percentile=None, operating_point=None)
    objects = build_results(film, lateral, _overlay(film), scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)
    reported = read_structured_report(objects.structured_report)
    assert reported.decision == "not assessed: lateral_view"
    assert reported.scope == "lateral_view"
    assert reported.raw_score == pytest.approx(RESULT.raw_score)
    assert (reported.calibrated_score, reported.percentile, reported.operating_point) == (None, None, None)


@pytest.mark.parametrize(
    "field, value",
    [
        ("decision", "maybe"),
        ("scope", "upside_down"),
        ("percentile", 150.0),
        ("raw_score", float("nan")),
        ("model_version", " "),
    ],
)
def test_invalid_result_values_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        replace(RESULT, **{field: value})


def test_an_empty_colour_scale_is_refused(film: pydicom.Dataset) -> None:
    with pytest.raises(ValueError, match="scale_top=0.1"):
        build_results(film, RESULT, _overlay(film), scale_floor=0.1, scale_top=0.1)


def test_no_patient_identifier_in_log_records(
    film: pydicom.Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="cxr_anomaly"):
        objects = build_results(film, RESULT, _overlay(film), scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)
        write_results(objects, tmp_path)
    assert film.SOPInstanceUID in caplog.text  # the records were captured
    assert PATIENT_ID not in caplog.text and str(film.PatientName) not in caplog.text


def test_missing_highdicom_names_the_extra(film: pydicom.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(PacsExtraMissingError, match=r"cxr-anomaly\[pacs\]"):
        build_results(film, RESULT, _overlay(film), scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)


def _dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dicom3tools' dciodvfy reports for a file (warnings are allowed)."""
    verifier = shutil.which("dciodvfy")
    if verifier is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools); cannot verify the IODs")
    run = subprocess.run([verifier, str(path)], capture_output=True, text=True, timeout=60, check=False)
    output = run.stdout + run.stderr
    assert output.strip(), "dciodvfy printed nothing"
    return [line for line in output.splitlines() if line.startswith("Error")]


def test_dciodvfy_accepts_the_film_and_its_results(written: dict[str, object]) -> None:
    for path in (written["film_path"], written["sr_path"], written["sc_path"]):
        assert _dciodvfy_errors(path) == [], path.name


def test_dciodvfy_check_can_fail(written: dict[str, object], tmp_path: Path) -> None:
    broken = pydicom.dcmread(written["sr_path"])
    del broken.CompletionFlag  # Type 1 in the SR Document General module
    broken.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    assert _dciodvfy_errors(tmp_path / "broken.dcm")


def test_dcmtk_reads_the_structured_report(written: dict[str, object]) -> None:
    dump = shutil.which("dsrdump")
    if dump is None:
        pytest.skip("dsrdump not installed (Debian package dcmtk)")
    run = subprocess.run([dump, str(written["sr_path"])], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert '"Decision")="flagged"' in run.stdout and "Anomaly score" in run.stdout


def test_film_keeps_the_images_grey_levels_and_a_chest_header(shared_data: Path, tmp_path: Path) -> None:
    film = _film(shared_data, NIH_FILM, bits=12, view_position="AP", patient_age="045Y")
    path = tmp_path / "film.dcm"
    film.save_as(path, enforce_file_format=True)
    read = read_image(path).array
    original = read_image(shared_data / NIH_FILM).array
    assert read.shape == original.shape == (256, 256)
    assert np.abs(read - original).max() <= 1.0 / 4095 + 1e-6
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert (header.BodyPartExamined, header.ViewPosition, header.PresentationIntentType) == (
        "CHEST",
        "AP",
        "FOR PRESENTATION",
    )
    assert (header.BitsStored, header.BitsAllocated, header.PatientID) == (12, 16, PATIENT_ID)
    assert header.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
    again = _film(shared_data, NIH_FILM, bits=12, view_position="AP")
    assert (again.SOPInstanceUID, again.StudyInstanceUID) == (film.SOPInstanceUID, film.StudyInstanceUID)
    other_view = _film(shared_data, NIH_FILM, bits=12, view_position="PA")
    assert other_view.SOPInstanceUID != film.SOPInstanceUID


def test_film_refuses_unsupported_options_by_name(shared_data: Path) -> None:
    with pytest.raises(ValueError, match="modality='MR'"):
        _film(shared_data, NIH_FILM, modality="MR")
    with pytest.raises(ValueError, match="bits=20"):
        _film(shared_data, NIH_FILM, bits=20)


def test_a_sparse_film_header_still_gives_valid_results(
    shared_data: Path, tmp_path: Path, dicom_writer: Callable[..., Path]
) -> None:
    # no patient sex, study date, accession number, body part, orientation or pixel spacing
    pixels = (read_image(shared_data / NIH_FILM).array * 255).astype(np.uint8)
    path = dicom_writer(
        pixels, tmp_path / "sparse.dcm", study_uid="1.2.826.0.1.3680043.10.1", sop_uid="1.2.826.0.1.3680043.10.1.1"
    )
    sparse = pydicom.dcmread(path)
    with pytest.raises(ValueError, match="SeriesInstanceUID") as refused:
        build_results(sparse, RESULT, _overlay(sparse), scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)
    assert "PID-93417" not in str(refused.value) and "Doe" not in str(refused.value)
    sparse.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1.2"
    objects = build_results(
        sparse, replace(RESULT, scope="unknown_view"), _overlay(sparse), scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP
    )
    assert "PixelData" not in objects.structured_report
    assert objects.structured_report.PatientSex == "" and objects.structured_report.PatientID == sparse.PatientID
    reported = read_structured_report(objects.structured_report)
    assert reported.source_sop_instance_uid == sparse.SOPInstanceUID
    assert reported.decision == "not assessed: unknown_view"
    for written_path in write_results(objects, tmp_path / "out"):
        assert _dciodvfy_errors(written_path) == [], written_path.name


def test_no_patient_name_in_warnings(
    film: pydicom.Dataset, recwarn: pytest.WarningsRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    # highdicom warns about a one-component person name, quoting it
    single = copy.deepcopy(film)
    single.PatientName = "JANEDOE"
    with caplog.at_level(logging.DEBUG):
        objects = build_results(single, RESULT, _overlay(single), scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)
    assert objects.structured_report.PatientName == "JANEDOE"
    assert not [warning for warning in recwarn if "JANEDOE" in str(warning.message)]
    assert "JANEDOE" not in caplog.text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A throwaway Orthanc on free local ports, killed after the module's tests."""
    tmp_path = tmp_path_factory.mktemp("orthanc")
    executable = shutil.which("Orthanc")
    if executable is None:
        pytest.skip("Orthanc not installed (Debian package orthanc); cannot check that a PACS stores the results")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "cxr-anomaly test",
        "StorageDirectory": str(tmp_path / "db"),
        "IndexDirectory": str(tmp_path / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "Plugins": [],
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    with (tmp_path / "orthanc.log").open("w") as log:
        process = subprocess.Popen([executable, str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        rest = f"http://127.0.0.1:{http_port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{rest}/system", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"Orthanc did not start: {(tmp_path / 'orthanc.log').read_text()[-2000:]}")
        yield {"rest": rest, "dicom_port": dicom_port}
    finally:
        process.kill()  # its database is a temporary folder; a graceful stop takes seconds
        process.wait(timeout=30)


def _c_store(port: int, datasets: list[pydicom.Dataset]) -> list[int]:
    """C-STORE the data sets to AE ORTHANC on localhost with pynetdicom; their status codes."""
    pynetdicom = pytest.importorskip("pynetdicom", reason="pip install 'cxr-anomaly[pacs]'")
    entity = pynetdicom.AE(ae_title="CXRANOMALY")
    for sop_class in sorted({str(dataset.SOPClassUID) for dataset in datasets}):
        entity.add_requested_context(sop_class, pydicom.uid.ExplicitVRLittleEndian)
    association = entity.associate("127.0.0.1", port, ae_title="ORTHANC")
    assert association.is_established
    try:
        return [int(association.send_c_store(dataset).Status) for dataset in datasets]
    finally:
        association.release()


def test_orthanc_stores_the_film_and_results_once(written: dict[str, object], orthanc: dict[str, object]) -> None:
    film, objects = written["film"], written["objects"]
    assert _c_store(orthanc["dicom_port"], [film, objects.structured_report, objects.secondary_capture]) == [0, 0, 0]
    resend = build_results(film, RESULT, written["overlay"], scale_floor=SCALE_FLOOR, scale_top=SCALE_TOP)
    assert _c_store(orthanc["dicom_port"], [resend.structured_report, resend.secondary_capture]) == [0, 0]
    studies = set()
    for dataset in (film, objects.structured_report, objects.secondary_capture):
        series = _orthanc_get(orthanc["rest"], f"/series/{_orthanc_id(orthanc['rest'], dataset.SeriesInstanceUID)}")
        assert len(series["Instances"]) == 1, dataset.Modality  # the resend added nothing
        studies.add(series["ParentStudy"])
    assert studies == {_orthanc_id(orthanc["rest"], film.StudyInstanceUID)}


def _orthanc_get(rest: str, route: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{rest}{route}", timeout=10) as response:
        return json.load(response)


def _orthanc_id(rest: str, uid: str) -> str:
    """Orthanc's identifier of the one resource with this DICOM UID."""
    request = urllib.request.Request(f"{rest}/tools/lookup", data=uid.encode("ascii"), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        found = json.load(response)
    assert len(found) == 1, uid
    return str(found[0]["ID"])
