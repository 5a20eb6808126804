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
    RLELossless,
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


def make_dataset(
    pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 8, identifying: bool = True
) -> Dataset:
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


def test_twelve_bit_data_declared_as_sixteen_bits_is_stretched_without_a_window(
    film: np.ndarray, tmp_path: Path
) -> None:
    # A writer that declares 16 stored bits for 12-bit data: against 65535 the film would span
    # 1/16 of the range and keep 17 grey levels in its 8-bit copy, so its own range is used.
    stored = np.rint(film.astype(np.float64) / 255.0 * 4095.0).astype(np.uint16)
    read = read_image(save(make_dataset(stored, bits_stored=16), tmp_path / "sixteen.dcm"))
    low, high = float(stored.min()), float(stored.max())
    np.testing.assert_allclose(read.array, (stored - low) / (high - low), atol=1e-6)
    assert read.metadata["range_stretched_from"] == pytest.approx((high - low) / 65535, abs=1e-4)


def test_a_window_is_never_second_guessed_by_the_stretch(film: np.ndarray, tmp_path: Path) -> None:
    stored = np.rint(film.astype(np.float64) / 255.0 * 4095.0).astype(np.uint16)
    dataset = make_dataset(stored, bits_stored=16)
    dataset.WindowCenter, dataset.WindowWidth = "32768", "65536"
    read = read_image(save(dataset, tmp_path / "windowed.dcm"))
    assert "range_stretched_from" not in read.metadata
    assert float(read.array.max()) < 0.1  # the window shows the film dark, as its writer asked


def test_rescale_slope_and_intercept_keep_the_image(film: np.ndarray, tmp_path: Path) -> None:
    stored = np.rint(film.astype(np.float64) / 255.0 * 4095.0).astype(np.uint16)
    dataset = make_dataset(stored, bits_stored=12)
    dataset.RescaleSlope = "0.5"
    dataset.RescaleIntercept = "-1024"
    read = read_image(save(dataset, tmp_path / "rescaled.dcm"))
    assert read.metadata["modality_lut"] == "rescale"
    np.testing.assert_allclose(read.array, film / 255.0, atol=0.6 / 4095.0)


@pytest.mark.parametrize("slope, intercept", [("1", "0"), ("1", "-1024"), ("2", "100"), ("0.37", "11.5")])
def test_rescale_gives_the_float64_reference_bit_for_bit(
    film: np.ndarray, tmp_path: Path, slope: str, intercept: str
) -> None:
    """The rescale runs in place, in float32 where that is exact; the pixels equal the plain
    float64 computation, so films cached before the change need no new cache format."""
    stored = np.rint(film.astype(np.float64) / 255.0 * 4000.0 + 50).astype(np.uint16)
    dataset = make_dataset(stored, bits_stored=12, identifying=False)
    dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
    read = read_image(save(dataset, tmp_path / "rescaled.dcm"))
    low, high = sorted((0.0 * float(slope) + float(intercept), 4095.0 * float(slope) + float(intercept)))
    expected = np.clip((stored.astype(np.float64) * float(slope) + float(intercept) - low) / (high - low), 0.0, 1.0)
    assert read.array.dtype == np.float32
    np.testing.assert_array_equal(read.array, expected.astype(np.float32))


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


def test_missing_handler_gives_a_clear_error(film: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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


# Issue 13: hostile and unusual films, round 2 -------------------------------------------------


def _rle_frame(pixels: np.ndarray) -> bytes:
    """One RLE Lossless frame (the bytes of one fragment) of uint8 ``pixels``."""
    from pydicom.encaps import generate_frames

    dataset = make_dataset(pixels, identifying=False)
    dataset.compress(RLELossless)
    return next(iter(generate_frames(dataset.PixelData, number_of_frames=1)))


def _multi_frame_rle(film: np.ndarray, frames: int, path: Path) -> Path:
    """An RLE file whose first frame is ``film`` and whose other frames are flat grey.

    Flat frames compress about 100:1, which is what makes such a file small on disk and huge
    once every frame is decoded.
    """
    first, flat = _rle_frame(film), _rle_frame(np.full_like(film, 128))
    dataset = make_dataset(film)
    dataset.file_meta.TransferSyntaxUID = RLELossless
    dataset.NumberOfFrames = frames
    dataset.PixelData = encapsulate([first] + [flat] * (frames - 1))
    dataset["PixelData"].VR = "OB"
    return save(dataset, path)


def _peak_bytes(path: Path, **kwargs: object) -> tuple[int, np.ndarray, dict]:
    """Peak traced memory while reading ``path`` (numpy and pydicom allocations are traced)."""
    import tracemalloc

    tracemalloc.start()
    try:
        read = read_image(path, **kwargs)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, read.array, read.metadata


def test_multi_frame_rle_decodes_only_the_first_frame(film: np.ndarray, tmp_path: Path) -> None:
    crop = np.ascontiguousarray(film[:256, :256])  # a real NIH film, 256x256
    single = _multi_frame_rle(crop, 1, tmp_path / "one.dcm")
    many = _multi_frame_rle(crop, 64, tmp_path / "many.dcm")
    assert many.stat().st_size < 3 * single.stat().st_size  # 64 frames, barely bigger on disk
    read_image(single)  # warm pydicom's imports so that they do not count below
    single_peak, single_array, _ = _peak_bytes(single)
    many_peak, many_array, metadata = _peak_bytes(many)
    # Decoding all 64 frames would hold 64 x 64 KiB of uint8 and their float64 copies.
    assert many_peak < 1.5 * single_peak + 256 * 1024, (many_peak, single_peak)
    np.testing.assert_array_equal(many_array, single_array)
    np.testing.assert_allclose(many_array, crop / 255.0, atol=1e-6)
    assert metadata["frames"] == 64 and metadata["multi_frame"] is True and metadata["frame_decoded"] == 0


def test_every_frame_counts_in_the_pixel_limit(film: np.ndarray, tmp_path: Path) -> None:
    crop = np.ascontiguousarray(film[:256, :256])
    many = _multi_frame_rle(crop, 64, tmp_path / "many.dcm")
    limit = 256 * 256 * 10  # ten frames' worth
    assert read_image(_multi_frame_rle(crop, 1, tmp_path / "one.dcm"), max_pixels=limit).array.shape == (256, 256)
    with pytest.raises(DecompressionBombError, match="64 frame") as caught:
        read_image(many, max_pixels=limit)
    assert caught.value.path == str(many)


def test_linear_window_of_width_1_is_the_standards_threshold(film: np.ndarray, tmp_path: Path) -> None:
    stored = np.rint(film.astype(np.float64) / 255.0 * 4095.0).astype(np.uint16)
    dataset = make_dataset(stored, bits_stored=12)
    level = int(np.median(stored))  # a value the film holds, so that some pixels sit on c - 0.5
    dataset.WindowCenter = f"{level}.5"
    dataset.WindowWidth = "1"  # PS3.3 C.11.2.1.2.1: x <= c - 0.5 gives the minimum, above it the maximum
    read = read_image(save(dataset, tmp_path / "width1.dcm"))
    assert bool(np.isfinite(read.array).all()), "width 1 divided by zero"
    np.testing.assert_array_equal(read.array, (stored > level).astype(np.float32))
    assert read.metadata["voi_lut"] == "window_linear"


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_other_window_functions_follow_the_standard(film: np.ndarray, tmp_path: Path, function: str) -> None:
    stored = np.rint(film.astype(np.float64) / 255.0 * 4095.0).astype(np.uint16)
    dataset = make_dataset(stored, bits_stored=12)
    dataset.WindowCenter, dataset.WindowWidth, dataset.VOILUTFunction = "1800", "900", function
    read = read_image(save(dataset, tmp_path / f"{function}.dcm"))
    values = stored.astype(np.float64)
    expected = (
        np.clip((values - 1350.0) / 900.0, 0.0, 1.0)
        if function == "LINEAR_EXACT"
        else 1.0 / (1.0 + np.exp(-4.0 * (values - 1800.0) / 900.0))
    )
    np.testing.assert_allclose(read.array, expected, atol=1e-6)
    assert read.metadata["voi_lut"] == f"window_{function.lower()}"


def test_dicom_without_preamble_is_read(film: np.ndarray, tmp_path: Path) -> None:
    from cxr_anomaly.data.manifest import scan_folder

    whole = save(make_dataset(film), tmp_path / "whole.dcm").read_bytes()
    folder = tmp_path / "series"
    folder.mkdir()
    bare = folder / "IM0001"  # no preamble, no DICM prefix, no suffix: as some PACS exports are
    bare.write_bytes(whole[132:])
    read = read_image(bare)
    np.testing.assert_allclose(read.array, film / 255.0, atol=1e-6)
    assert read.metadata["format"] == "dicom"
    assert list(scan_folder(folder)["path"]) == [str(bare.resolve())]


def test_dicom_data_set_without_file_meta_is_read(film: np.ndarray, tmp_path: Path) -> None:
    dataset = make_dataset(film)
    del dataset.file_meta  # an ACR-NEMA style data set: implicit VR little endian from byte 0
    path = tmp_path / "no_meta.dcm"
    pydicom.dcmwrite(path, dataset, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[:2] == b"\x08\x00"
    read = read_image(path)
    np.testing.assert_allclose(read.array, film / 255.0, atol=1e-6)
    assert read.metadata["transfer_syntax"] == "1.2.840.10008.1.2"


def test_bytes_that_only_resemble_a_data_set_are_not_dicom(tmp_path: Path) -> None:
    from cxr_anomaly.errors import UnreadableImageError
    from cxr_anomaly.io import sniff_format

    assert sniff_format(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100") == "dicom"
    assert sniff_format(b"\x08\x00hello world, not a data set at all" + b"\x00" * 100) is None
    path = tmp_path / "text.dcm"
    path.write_bytes(b"\x02\x00 is how this note starts, but it is text")
    with pytest.raises(UnreadableImageError):
        read_image(path)


def test_palette_color_goes_through_its_palette(film: np.ndarray, tmp_path: Path) -> None:
    dataset = make_dataset(film)
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    inverted = (65535 - np.arange(256, dtype=np.uint16) * 257).astype("<u2")  # 16-bit entries
    for colour in ("Red", "Green", "Blue"):
        setattr(dataset, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(dataset, f"{colour}PaletteColorLookupTableData", inverted.tobytes())
    read = read_image(save(dataset, tmp_path / "palette.dcm"))
    np.testing.assert_allclose(read.array, 1.0 - film / 255.0, atol=1e-6)  # not the indices
    assert read.metadata["voi_lut"] == "palette_color"


@pytest.mark.parametrize(
    ("photometric", "shape", "stored_is_inverted"),
    [
        ("MONOCHROME2", "INVERSE", True),  # an inverse presentation of a MONOCHROME2 film
        ("MONOCHROME1", "INVERSE", True),  # DX's required pairing: one inversion, not two
        ("MONOCHROME2", "IDENTITY", False),
    ],
)
def test_presentation_lut_shape_is_applied(
    film: np.ndarray, tmp_path: Path, photometric: str, shape: str, stored_is_inverted: bool
) -> None:
    dataset = make_dataset(255 - film if stored_is_inverted else film, photometric=photometric)
    dataset.PresentationLUTShape = shape
    read = read_image(save(dataset, tmp_path / "presentation.dcm"))
    np.testing.assert_allclose(read.array, film / 255.0, atol=1e-6)
    assert read.metadata["presentation_lut_shape"] == shape


def test_pydicom_older_than_3_is_named_not_a_misleading_error(
    film: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(make_dataset(film), tmp_path / "film.dcm")
    monkeypatch.setattr(pydicom, "__version__", "2.4.4")
    with pytest.raises(DicomError, match=r"pydicom >= 3\.0.*2\.4\.4") as caught:
        read_image(path)
    assert caught.value.path == str(path)
