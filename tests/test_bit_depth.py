"""The same film scores the same however it is encoded: 8-bit PNG, 12- and 16-bit DICOM, LUTs, compression.

Real NIH films (``nih_pneumonia256``) are written as an 8-bit PNG and as DICOM in each encoding of
issue 29 that holds the same pixels, and 12-bit films made from them in each encoding of a 12-bit
film; a small features detector scores them all. Every encoding must give its reference's raw score
(the PNG's, the plain 12-bit DICOM's) within 0.5% and its percentile among 100 normal films within
1 point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.io import read_image, resize_grey
from cxr_anomaly.models.registry import fit_detector
from cxr_anomaly.scoring import score_films

SMALL = with_overrides(
    Config(), "features", memory_bank_size=256, pooled_bank_size=64, batch_size=16, finetune_epochs=0
)
FILMS = 8
RAW_TOLERANCE = 0.005  # relative
PERCENTILE_TOLERANCE = 1.0  # points


def _dicom(
    stored: np.ndarray,
    path: Path,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    extra: Callable[[object], None] | None = None,
    compress: str | None = None,
) -> Path:
    """Write ``stored`` (rows, columns) as a DX film of ``bits_stored`` bits, optionally compressed."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLSLossless,
        RLELossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.Modality = "DX"
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    dataset.set_pixel_data(
        np.ascontiguousarray(stored, dtype=dtype), photometric_interpretation=photometric, bits_stored=bits_stored
    )
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    if extra is not None:
        extra(dataset)
    if compress not in (None, "jpeg_lossless"):
        syntax = {"rle": RLELossless, "jpeg_ls": JPEGLSLossless, "jpeg_2000": JPEG2000Lossless}[compress]
        dataset.compress(syntax)
    dataset.save_as(path, enforce_file_format=True)
    if compress == "jpeg_lossless":
        _to_jpeg_lossless(path)
    return path


def _to_jpeg_lossless(path: Path) -> None:
    """Rewrite a DICOM file as JPEG Lossless, Process 14 SV1, with GDCM (pydicom has no encoder for it)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"GDCM could not read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM could not encode {path} as JPEG Lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM could not write {path}")


def _rescale(dataset: object) -> None:
    # stored = (modality value + 200) / 2: the Modality LUT gives back 16 x the 8-bit film
    dataset.RescaleSlope = 2
    dataset.RescaleIntercept = -200
    dataset.RescaleType = "US"


def _window(dataset: object) -> None:
    dataset.WindowCenter = 2048
    dataset.WindowWidth = 4096
    dataset.VOILUTFunction = "LINEAR"


def _voi_lut(dataset: object) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [int(v) for v in np.rint(np.arange(4096) * 65535 / 4095)]
    item["LUTData"].VR = "US"
    dataset.VOILUTSequence = Sequence([item])


def _full_range(film: np.ndarray) -> np.ndarray:
    low, high = int(film.min()), int(film.max())
    return np.rint((film.astype(np.float64) - low) * 65535 / max(high - low, 1))


# name -> writer of the 8-bit film (rows, columns) uint8 to a file
ENCODINGS: dict[str, Callable[[np.ndarray, Path], Path]] = {
    "dicom_8bit_monochrome1": lambda film, path: _dicom(255 - film, path, bits_stored=8, photometric="MONOCHROME1"),
    "dicom_12bit_x16": lambda film, path: _dicom(film * np.uint16(16), path, bits_stored=12),
    "dicom_16bit_x257": lambda film, path: _dicom(film * np.uint16(257), path, bits_stored=16),
    "dicom_16bit_full_range": lambda film, path: _dicom(_full_range(film), path, bits_stored=16),
    "dicom_12bit_monochrome1": lambda film, path: _dicom(
        (255 - film) * np.uint16(16), path, bits_stored=12, photometric="MONOCHROME1"
    ),
    "dicom_12bit_rescale": lambda film, path: _dicom(film * np.uint16(8) + 100, path, bits_stored=12, extra=_rescale),
    "dicom_12bit_window": lambda film, path: _dicom(film * np.uint16(16), path, bits_stored=12, extra=_window),
    "dicom_12bit_voi_lut": lambda film, path: _dicom(film * np.uint16(16), path, bits_stored=12, extra=_voi_lut),
    "dicom_12bit_rle": lambda film, path: _dicom(film * np.uint16(16), path, bits_stored=12, compress="rle"),
    "dicom_12bit_jpeg_ls": lambda film, path: _dicom(film * np.uint16(16), path, bits_stored=12, compress="jpeg_ls"),
    "dicom_12bit_jpeg_2000": lambda film, path: _dicom(
        film * np.uint16(16), path, bits_stored=12, compress="jpeg_2000"
    ),
    "dicom_12bit_jpeg_lossless": lambda film, path: _dicom(
        film * np.uint16(16), path, bits_stored=12, compress="jpeg_lossless"
    ),
}


def twelve_bit_film(film: np.ndarray) -> np.ndarray:
    """A 12-bit film of about 2,000 grey levels made from an 8-bit one (a 3x3 mean, x16)."""
    padded = np.pad(film.astype(np.float64), 1, mode="edge")
    rows, columns = film.shape
    mean = sum(padded[r : r + rows, c : c + columns] for r in range(3) for c in range(3)) / 9.0
    return np.clip(np.rint(mean * 16.0), 0, 4095).astype(np.uint16)


def _sixteen_bit_png(film: np.ndarray, path: Path) -> Path:
    Image.fromarray(film * np.uint16(16)).save(path.with_suffix(".png"))  # mode I;16
    return path.with_suffix(".png")


def _offset_rescale(dataset: object) -> None:
    # stored = modality value + 2048 in 13 bits: the same values, half the contrast of the stored range
    dataset.RescaleSlope = 1
    dataset.RescaleIntercept = -2048
    dataset.RescaleType = "US"


# name -> writer of a 12-bit film (rows, columns) uint16 to a file; "dicom_12bit" is the reference
TWELVE_BIT_ENCODINGS: dict[str, Callable[[np.ndarray, Path], Path]] = {
    "dicom_12bit": lambda film, path: _dicom(film, path, bits_stored=12),
    "png_16bit_x16": _sixteen_bit_png,
    "dicom_16bit_x16": lambda film, path: _dicom(film * np.uint16(16), path, bits_stored=16),
    "dicom_16bit_full_range": lambda film, path: _dicom(_full_range(film), path, bits_stored=16),
    "dicom_12bit_monochrome1": lambda film, path: _dicom(4095 - film, path, bits_stored=12, photometric="MONOCHROME1"),
    "dicom_13bit_rescale": lambda film, path: _dicom(
        film + np.uint16(2048), path, bits_stored=13, extra=_offset_rescale
    ),
    "dicom_12bit_rle": lambda film, path: _dicom(film, path, bits_stored=12, compress="rle"),
    "dicom_12bit_jpeg_ls": lambda film, path: _dicom(film, path, bits_stored=12, compress="jpeg_ls"),
    "dicom_12bit_jpeg_2000": lambda film, path: _dicom(film, path, bits_stored=12, compress="jpeg_2000"),
    "dicom_12bit_jpeg_lossless": lambda film, path: _dicom(film, path, bits_stored=12, compress="jpeg_lossless"),
}


@dataclass(frozen=True)
class EncodedScores:
    """Raw scores of the films per encoding and the normal films' raw scores.

    Attributes:
        raw: 8-bit films: "png" and the names of :data:`ENCODINGS`; 12-bit films: "12bit:" and the
            names of :data:`TWELVE_BIT_ENCODINGS`.
        normals: raw scores of 100 normal films, for percentiles.
        skipped: encodings this machine cannot write, with the reason.
    """

    raw: dict[str, np.ndarray]
    normals: np.ndarray
    skipped: dict[str, str]

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Percent of the normal films that score below each score."""
        return 100.0 * (self.normals[None, :] < scores[:, None]).mean(axis=1)


def encoding_available(name: str) -> str | None:
    """None when this machine can write ``name``; otherwise why not."""
    from pydicom.pixels.encoders import JPEG2000LosslessEncoder, JPEGLSLosslessEncoder

    if name == "dicom_12bit_jpeg_lossless":
        try:
            import gdcm  # noqa: F401
        except ImportError:
            return "no encoder for JPEG Lossless (pip install python-gdcm)"
        return None
    encoder = {"dicom_12bit_jpeg_ls": JPEGLSLosslessEncoder, "dicom_12bit_jpeg_2000": JPEG2000LosslessEncoder}.get(name)
    if encoder is not None and not encoder.is_available:
        return f"no encoder for {encoder.UID.name} (pip install pyjpegls / pylibjpeg-openjpeg)"
    return None


def _write_all(
    film: np.ndarray,
    stem: Path,
    encodings: dict[str, Callable[[np.ndarray, Path], Path]],
    prefix: str,
    paths: dict[str, list[str]],
    skipped: dict[str, str],
) -> None:
    for name, write in encodings.items():
        reason = encoding_available(name)
        if reason is not None:
            skipped[prefix + name] = reason
            continue
        paths.setdefault(prefix + name, []).append(str(write(film, stem.with_name(f"{stem.name}_{prefix}{name}.dcm"))))


def score_encodings(shared_data: Path, folder: Path, films: int = FILMS) -> EncodedScores:
    """Fit a small features detector, write ``films`` real films in every encoding and score them.

    The films are ``nih_pneumonia256`` films (256², half pneumonia) that are not among the 100
    normal films the percentiles count. An encoding whose 8-bit codes equal its reference's (the
    PNG's, or the plain 12-bit DICOM's) gets the reference's scores without being scored again:
    the detector sees the same input.
    """
    train = load_inputs(shared_data / "rsna_normal224" / "manifest.csv").iloc[:48]
    detector = fit_detector(SMALL, load_images(train, SMALL.data, workers=1).pixels, progress=False).detector
    pneumonia = load_inputs(shared_data / "nih_pneumonia256" / "manifest.csv")
    normal_rows = pneumonia[pneumonia["label"] == 0]
    normals = score_films(
        detector, load_images(normal_rows.head(100), SMALL.data, workers=1).pixels, precision="fp32"
    ).raw
    sources = pd.concat([pneumonia[pneumonia["label"] == 1].head(films // 2), normal_rows.iloc[100 : 100 + films // 2]])
    paths: dict[str, list[str]] = {"png": []}
    skipped: dict[str, str] = {}
    for index, source in enumerate(sources["path"]):
        film = np.asarray(Image.open(source).convert("L"))
        png = folder / f"film{index}.png"
        Image.fromarray(film).save(png)
        paths["png"].append(str(png))
        _write_all(film, folder / f"film{index}", ENCODINGS, "", paths, skipped)
        _write_all(twelve_bit_film(film), folder / f"film{index}", TWELVE_BIT_ENCODINGS, "12bit:", paths, skipped)
    pixels = {
        name: load_images(pd.DataFrame({"path": files}), SMALL.data, workers=1).pixels for name, files in paths.items()
    }
    raw = {}
    for name in ("png", "12bit:dicom_12bit", *paths):  # references first
        reference = "12bit:dicom_12bit" if name.startswith("12bit:") else "png"
        if name in raw:
            continue
        if name != reference and np.array_equal(pixels[name], pixels[reference]):
            raw[name] = raw[reference]
        else:
            raw[name] = score_films(detector, pixels[name], precision="fp32").raw
    return EncodedScores(raw, normals, skipped)


@pytest.fixture(scope="module")
def encoded(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> EncodedScores:
    return score_encodings(shared_data, tmp_path_factory.mktemp("encodings"))


def _assert_close(encoded: EncodedScores, reference: str, name: str) -> None:
    if name in encoded.skipped:
        pytest.skip(encoded.skipped[name])
    expected, other = encoded.raw[reference], encoded.raw[name]
    relative = np.abs(other - expected) / np.abs(expected)
    assert relative.max() <= RAW_TOLERANCE, f"{name}: raw scores up to {100 * relative.max():.2f}% off {reference}'s"
    moved = np.abs(encoded.percentile(other) - encoded.percentile(expected))
    assert moved.max() <= PERCENTILE_TOLERANCE, f"{name}: percentile moved by up to {moved.max():.1f} points"


@pytest.mark.parametrize("name", sorted(set(TWELVE_BIT_ENCODINGS) - {"dicom_12bit"}))
def test_every_encoding_of_a_twelve_bit_film_scores_the_same(encoded: EncodedScores, name: str) -> None:
    _assert_close(encoded, "12bit:dicom_12bit", "12bit:" + name)


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_every_encoding_scores_as_the_png(encoded: EncodedScores, name: str) -> None:
    _assert_close(encoded, "png", name)


@pytest.fixture(scope="module")
def real_film(shared_data: Path) -> np.ndarray:
    """One real NIH film, 1024² uint8."""
    source = load_inputs(shared_data / "nih_fullres" / "manifest.csv")["path"].iloc[0]
    return np.asarray(Image.open(source).convert("L"))


def test_eight_bit_films_are_reduced_as_before(real_film: np.ndarray, tmp_path: Path) -> None:
    """8-bit PNGs and 8-bit DICOM keep the codes (and so the scores) of the fixed 8-bit grid."""
    from cxr_anomaly.io import (
        reduce_film,  # here, not above: the benchmark runs this module against older code
    )

    Image.fromarray(real_film).save(tmp_path / "film.png")
    png = read_image(tmp_path / "film.png")
    assert np.array_equal(reduce_film(png, 224), resize_grey(png.array, 224))
    plain = read_image(_dicom(real_film, tmp_path / "plain.dcm", bits_stored=8))
    assert np.array_equal(plain.array, png.array)
    assert np.array_equal(reduce_film(plain, 224), resize_grey(png.array, 224))
    inverted = read_image(ENCODINGS["dicom_8bit_monochrome1"](real_film, tmp_path / "inverted.dcm"))
    assert not np.array_equal(inverted.array, png.array)  # 1 - (255 - v) / 255 in float32: rounding apart
    assert np.array_equal(reduce_film(inverted, 224), resize_grey(png.array, 224))


@pytest.mark.parametrize(
    "name",
    ["dicom_12bit_x16", "dicom_12bit_monochrome1", "dicom_12bit_rescale", "dicom_12bit_window", "dicom_12bit_voi_lut"],
)
def test_an_eight_bit_film_in_twelve_bits_gets_its_png_codes(real_film: np.ndarray, tmp_path: Path, name: str) -> None:
    from cxr_anomaly.image_base import as_eight_bit_film
    from cxr_anomaly.io import reduce_film

    Image.fromarray(real_film).save(tmp_path / "film.png")
    png = read_image(tmp_path / "film.png")
    wide = read_image(ENCODINGS[name](real_film, tmp_path / "film.dcm"))
    assert not np.array_equal(resize_grey(wide.array, 224), resize_grey(png.array, 224))  # the fixed grid moves it
    eight_bit = as_eight_bit_film(wide.array)
    assert eight_bit is not None and eight_bit.levels == np.unique(real_film).size
    # one code per level; the lowest level's code comes from its value on the film's own grid: the
    # PNG's for a plain x16 film, shifted where a rescale or an inversion moves the grid's zero
    offset = eight_bit.first_code - int(real_film.min())
    assert np.array_equal(eight_bit.array, (real_film.astype(np.int32) + offset).astype(np.float32) / np.float32(255.0))
    if name in ("dicom_12bit_x16", "dicom_12bit_window", "dicom_12bit_voi_lut"):
        assert offset == 0 and np.array_equal(reduce_film(wide, 224), resize_grey(png.array, 224))


def test_films_that_are_not_eight_bit_films_are_left_alone() -> None:
    from cxr_anomaly.image_base import as_eight_bit_film

    generator = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, 512 * 512).reshape(512, 512)
    twelve_bit = (np.rint(ramp * 4095) + generator.integers(0, 3, ramp.shape)).clip(0, 4095) / 4095
    assert as_eight_bit_film(twelve_bit.astype(np.float32)) is None  # thousands of levels
    mask = (ramp > 0.5).astype(np.float32)
    assert as_eight_bit_film(mask) is None  # two levels
    gamma = ((np.rint(ramp * 200) / 200) ** 2.2).astype(np.float32)
    assert as_eight_bit_film(gamma) is None  # 201 levels, unevenly spaced
    assert as_eight_bit_film(np.zeros((0, 0), np.float32)) is None
    stretched = (np.rint(ramp * 150) * (65535 / 150)).round() / 65535  # 151 levels stretched to 16 bits
    film = as_eight_bit_film(stretched.astype(np.float32))
    assert film is not None and film.levels == 151 and film.first_code == 0
    assert np.array_equal(film.array * np.float32(255), np.rint(ramp * 150).astype(np.float32))


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("dicom_12bit_rle", "1.2.840.10008.1.2.5"),
        ("dicom_12bit_jpeg_ls", "1.2.840.10008.1.2.4.80"),
        ("dicom_12bit_jpeg_2000", "1.2.840.10008.1.2.4.90"),
        ("dicom_12bit_jpeg_lossless", "1.2.840.10008.1.2.4.70"),
    ],
)
def test_compressed_encodings_are_written_in_their_transfer_syntax(
    real_film: np.ndarray, tmp_path: Path, name: str, syntax: str
) -> None:
    reason = encoding_available(name)
    if reason is not None:
        pytest.skip(reason)
    for films, prefix in ((ENCODINGS, ""), (TWELVE_BIT_ENCODINGS, "12bit")):
        source = twelve_bit_film(real_film) if prefix else real_film
        read = read_image(films[name](source[:128, :128], tmp_path / f"{prefix}{name}.dcm"))
        assert read.metadata["transfer_syntax"] == syntax and read.metadata["bits_stored"] == 12


def test_a_wide_film_is_stretched_level_by_level() -> None:
    """The same 12-bit levels in a 12-bit range and stretched to 16 bits (rounded) give the same numbers."""
    from cxr_anomaly.image_base import stretch_to_own_range

    generator = np.random.default_rng(1)
    stored = np.clip(
        np.rint(np.linspace(300, 3300, 300 * 300).reshape(300, 300) + generator.normal(0, 20, (300, 300))), 0, 4095
    )
    twelve = (stored / 4095).astype(np.float32)
    low, high = stored.min(), stored.max()
    sixteen = (np.rint((stored - low) * 65535 / (high - low)) / 65535).astype(np.float32)
    expected = ((stored - low) / (high - low)).astype(np.float32)
    for film in (twelve, sixteen):
        stretched = stretch_to_own_range(film).array
        assert np.allclose(stretched, expected, atol=1e-6)
        assert np.array_equal(stretched, stretch_to_own_range(twelve).array)
    curved = np.sqrt(twelve)  # not evenly spaced: a plain linear stretch
    lowest, highest = float(curved.min()), float(curved.max())
    np.testing.assert_allclose(stretch_to_own_range(curved).array, (curved - lowest) / (highest - lowest), atol=1e-6)
