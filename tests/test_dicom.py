"""DICOM decoding, tested on DICOM files written with pydicom from real NIH films."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxr_anomaly.errors import DecompressionBombError, DicomError
from cxr_anomaly.io import read_image

IDENTIFYING = {
    "PatientName": "Kowalska^Zofia",
    "PatientID": "PID-83721-SECRET",
    "PatientBirthDate": "19470312",
    "AccessionNumber": "ACC99887766",
    "InstitutionName": "St Example Hospital",
}


@pytest.fixture(scope="module")
def film(shared_data: Path) -> np.ndarray:
    """A real 1024x1024 NIH film as uint8 (height, width), cropped to keep tests quick."""
    path = shared_data / "nih_fullres" / "00000427_000.png"
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
    return np.ascontiguousarray(grey[256:768, 256:768])  # (1024, 1024) -> (512, 512)


def make_dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 8,
                 identifying: bool = True) -> Dataset:
    """A minimal Digital X-Ray-like dataset holding ``pixels`` (rows, columns)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.ViewPosition = "PA"
    if identifying:
        for keyword, value in IDENTIFYING.items():
            setattr(dataset, keyword, value)
    dataset.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    return dataset


def save(dataset: Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_monochrome2_8bit_matches_the_source_film(film: np.ndarray, tmp_path: Path) -> None:
    path = save(make_dataset(film), tmp_path / "plain.dcm")
    read = read_image(path)
    assert read.metadata["format"] == "dicom"
    np.testing.assert_allclose(read.array, film / 255.0, atol=1e-6)


def test_monochrome1_is_inverted_so_bone_is_white(film: np.ndarray, tmp_path: Path) -> None:
    path = save(make_dataset(255 - film, photometric="MONOCHROME1"), tmp_path / "inverted.dcm")
    read = read_image(path)
    assert read.metadata["photometric_interpretation"] == "MONOCHROME1"
    np.testing.assert_allclose(read.array, film / 255.0, atol=1e-6)


def test_16bit_with_bits_stored_12_uses_the_12_bit_range(film: np.ndarray, tmp_path: Path) -> None:
    stored = np.rint(film.astype(np.float64) / 255.0 * 4095.0).astype(np.uint16)
    dataset = make_dataset(stored, bits_stored=12)
    assert dataset.BitsAllocated == 16 and dataset.BitsStored == 12
    read = read_image(save(dataset, tmp_path / "twelve.dcm"))
    # Normalised by 4095 (12 bits), not by 65535 (16 allocated) nor by the film's own max.
    np.testing.assert_allclose(read.array, film / 255.0, atol=0.6 / 4095.0)
    assert read.metadata["bits_stored"] == 12


def test_rescale_slope_and_intercept_keep_the_image(film: np.ndarray, tmp_path: Path) -> None:
    stored = np.rint(film.astype(np.float64) / 255.0 * 4095.0).astype(np.uint16)
    dataset = make_dataset(stored, bits_stored=12)
    dataset.RescaleSlope = "0.5"
    dataset.RescaleIntercept = "-1024"
    read = read_image(save(dataset, tmp_path / "rescaled.dcm"))
    assert read.metadata["modality_lut"] == "rescale"
    np.testing.assert_allclose(read.array, film / 255.0, atol=0.6 / 4095.0)


def test_window_center_and_width_are_applied(film: np.ndarray, tmp_path: Path) -> None:
    stored = np.rint(film.astype(np.float64) / 255.0 * 4095.0).astype(np.uint16)
    dataset = make_dataset(stored, bits_stored=12)
    dataset.WindowCenter = "2048"
    dataset.WindowWidth = "1025"
    read = read_image(save(dataset, tmp_path / "window.dcm"))
    expected = np.clip((stored - (2048 - 0.5)) / 1024.0 + 0.5, 0.0, 1.0)
    assert read.metadata["voi_lut"] == "window_linear"
    np.testing.assert_allclose(read.array, expected, atol=1e-6)
    assert (read.array == 0.0).any() and (read.array == 1.0).any()  # the window clips


def test_jpeg2000_lossless_round_trips_exactly(film: np.ndarray, tmp_path: Path) -> None:
    dataset = make_dataset(film)
    dataset.compress(JPEG2000Lossless)
    path = save(dataset, tmp_path / "j2k.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEG2000Lossless
    read = read_image(path)
    np.testing.assert_allclose(read.array, film / 255.0, atol=1e-6)


def _jpeg_baseline_dataset(film: np.ndarray) -> tuple[Dataset, np.ndarray]:
    buffer = io.BytesIO()
    Image.fromarray(film, mode="L").save(buffer, format="JPEG", quality=95)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        reference = np.asarray(decoded, dtype=np.float64) / 255.0
    dataset = make_dataset(film)
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.PixelData = encapsulate([buffer.getvalue()])
    dataset["PixelData"].VR = "OB"
    return dataset, reference


def test_jpeg_baseline_decodes_through_the_handler(film: np.ndarray, tmp_path: Path) -> None:
    dataset, reference = _jpeg_baseline_dataset(film)
    read = read_image(save(dataset, tmp_path / "jpeg.dcm"))
    assert np.abs(read.array - reference).mean() < 1.0 / 255.0
    assert np.abs(read.array - film / 255.0).mean() < 2.0 / 255.0


def test_missing_handler_gives_a_clear_error(film: np.ndarray, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels import get_decoder

    dataset, _ = _jpeg_baseline_dataset(film)
    path = save(dataset, tmp_path / "needs-handler.dcm")
    monkeypatch.setattr(get_decoder(JPEGBaseline8Bit), "_available", {})
    with pytest.raises(DicomError) as caught:
        read_image(path)
    assert caught.value.path == str(path)
    assert "JPEG Baseline" in caught.value.reason and "pylibjpeg" in caught.value.reason


def test_no_identifying_value_reaches_metadata_errors_or_logs(
    film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = save(make_dataset(film), tmp_path / "good.dcm")
    broken_dataset = make_dataset(film)
    broken_dataset.PixelData = broken_dataset.PixelData[: len(broken_dataset.PixelData) // 3]
    broken = save(broken_dataset, tmp_path / "broken.dcm")
    texts = []
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        texts.append(repr(read_image(good).metadata))
        with pytest.raises(DicomError) as caught:
            read_image(broken)
    texts.append(str(caught.value))
    texts.extend(record.getMessage() for record in caplog.records)
    texts.extend(str(warning.message) for warning in caught_warnings)
    assert "broken.dcm" in str(caught.value)
    joined = "\n".join(texts)
    for value in IDENTIFYING.values():
        assert value not in joined
        assert value.split("^")[0] not in joined


def test_truncated_dicom_names_the_file(film: np.ndarray, tmp_path: Path) -> None:
    path = save(make_dataset(film), tmp_path / "whole.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(DicomError) as caught:
        read_image(truncated)
    assert caught.value.path == str(truncated)


def test_dicom_without_pixel_data(tmp_path: Path, film: np.ndarray) -> None:
    dataset = make_dataset(film)
    del dataset.PixelData
    with pytest.raises(DicomError, match="no pixel data"):
        read_image(save(dataset, tmp_path / "header-only.dcm"))


def test_dicom_decompression_bomb_is_refused_before_decoding(tmp_path: Path, film: np.ndarray) -> None:
    dataset = make_dataset(film[:16, :16])
    dataset.Rows = 60000
    dataset.Columns = 60000  # declares 3.6e9 pixels but holds 256
    with pytest.raises(DecompressionBombError, match="exceeds the limit"):
        read_image(save(dataset, tmp_path / "bomb.dcm"))


def test_voi_lut_sequence_is_applied(film: np.ndarray, tmp_path: Path) -> None:
    dataset = make_dataset(film)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = [255 - value for value in range(256)]  # an inverting LUT
    dataset.VOILUTSequence = [item]
    dataset["VOILUTSequence"].value[0]["LUTData"].VR = "US"
    read = read_image(save(dataset, tmp_path / "voi_lut.dcm"))
    assert read.metadata["voi_lut"] == "voi_lut_sequence"
    np.testing.assert_allclose(read.array, 1.0 - film / 255.0, atol=1e-6)
