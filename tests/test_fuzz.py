"""Property-based fuzzing of the image readers, the manifest parser and the checkpoint loader.

Inputs are mutated bytes of real files from ``../shared/data`` (NIH PNGs, Kermany JPEGs, DICOM
files built from a real NIH film, the shipped manifest CSVs), random CSV tables, and, for
``--model`` (issue 12), mutated and truncated real checkpoints, random bytes and files of other
types; and (issue 13) DICOM files of a real film whose attributes are drawn (frames, window,
photometric interpretation, bits, rescale, presentation shape, preamble and file meta) and folder
trees of real films whose names are drawn from label, split and PACS series names. Every input must either read cleanly (a finite float32 grey image in [0, 1]; a manifest
with the documented columns and values; a detector) or raise one of the project's documented
errors (:class:`CxrAnomalyError` subclasses). Anything else (an ``IndexError`` from deep inside a
decoder, say) fails the test.

CI runs a few hundred examples (deterministically); ``benchmarks/fuzz_long.py`` runs more via
``CXR_ANOMALY_FUZZ_EXAMPLES`` (examples per test) and tallies outcomes via ``CXR_ANOMALY_FUZZ_TALLY``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from cxr_anomaly.checkpoint import LoadedModel, load_checkpoint
from cxr_anomaly.data.manifest import MANIFEST_COLUMNS, load_inputs
from cxr_anomaly.errors import CxrAnomalyError
from cxr_anomaly.io import read_image

EXAMPLES = int(os.environ.get("CXR_ANOMALY_FUZZ_EXAMPLES", "80"))
LONG_RUN = "CXR_ANOMALY_FUZZ_EXAMPLES" in os.environ
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a shared 2-core machine makes timings meaningless
    derandomize=not LONG_RUN,  # CI sees the same inputs every run; the long run explores
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
TALLY: Counter[str] = Counter()
HEADER_BYTES = 512  # half of all mutations land here, where the formats keep their structure
INTERESTING_VALUES = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x00\x00\xff\xff",
    b"\xff\xfe",
    b"-1",
    b"1e309",
    b"nan",
)


@pytest.fixture(scope="module", autouse=True)
def tally() -> Iterator[Counter[str]]:
    """Count outcomes per reader; written to ``CXR_ANOMALY_FUZZ_TALLY`` (JSON) when set."""
    yield TALLY
    target = os.environ.get("CXR_ANOMALY_FUZZ_TALLY")
    if target:
        Path(target).write_text(json.dumps(dict(sorted(TALLY.items())), indent=2))


@st.composite
def mutations(draw: st.DrawFn, seed: bytes) -> bytes:
    """Apply 1-8 random byte-level mutations to ``seed``."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            data.extend(draw(st.binary(min_size=1, max_size=16)))
            continue
        limit = len(data) - 1
        position = draw(st.one_of(st.integers(0, min(HEADER_BYTES, limit)), st.integers(0, limit)))
        kind = draw(st.sampled_from(("flip", "byte", "interesting", "insert", "delete", "truncate", "duplicate")))
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[position] = draw(st.integers(0, 255))
        elif kind == "interesting":
            value = draw(st.sampled_from(INTERESTING_VALUES))
            data[position : position + len(value)] = value
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[position:]
        else:
            length = draw(st.integers(1, 256))
            data[position:position] = data[position : position + length]
    return bytes(data)


def check_image(data: bytes, path: Path, reader: str) -> None:
    """Write ``data`` to ``path`` and read it: a valid image or a documented error, nothing else."""
    path.write_bytes(data)
    try:
        result = read_image(path)
    except CxrAnomalyError as error:
        TALLY[f"{reader}: {type(error).__name__}"] += 1
        assert str(path) in str(error), f"the error does not name the file: {error}"
        return
    array = result.array
    assert array.ndim == 2 and array.size > 0 and array.dtype == np.float32
    assert bool(np.isfinite(array).all()), "non-finite pixels"
    assert float(array.min()) >= 0.0 and float(array.max()) <= 1.0, (array.min(), array.max())
    TALLY[f"{reader}: read"] += 1


def real_files(folder: Path, pattern: str, count: int) -> list[bytes]:
    """The bytes of the first ``count`` files matching ``pattern`` (sorted, so CI is stable)."""
    files = sorted(folder.glob(pattern))[:count]
    assert files, f"no {pattern} under {folder}"
    return [path.read_bytes() for path in files]


@pytest.fixture(scope="module")
def png_seeds(shared_data: Path) -> list[bytes]:
    """Three 64x64 NIH PNGs (RGB) and one full-resolution NIH PNG."""
    small = real_files(shared_data / "nih1000", "test/0_normal/*.png", 3)
    return small + real_files(shared_data / "nih_fullres", "*.png", 1)


@pytest.fixture(scope="module")
def jpeg_seeds(shared_data: Path) -> list[bytes]:
    """Two Kermany 224x224 JPEGs."""
    return real_files(shared_data / "kermany224", "data/test/NORMAL/*.jpeg", 2)


def dicom_bytes(
    pixels: np.ndarray, *, bits_stored: int, photometric: str, compress: bool, rescale: bool, window: bool
) -> bytes:
    """A DICOM file of a real film, encoded as asked."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "FUZZ^PATIENT"
    dataset.PatientID = "FUZZ-0001"
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 8 if bits_stored == 8 else 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = 0
    stored = pixels.astype(np.uint8 if bits_stored == 8 else np.uint16)
    if bits_stored != 8:
        stored = (pixels.astype(np.uint32) * ((1 << bits_stored) - 1) // 255).astype(np.uint16)
    dataset.PixelData = stored.tobytes()
    if rescale:
        dataset.RescaleSlope, dataset.RescaleIntercept = "2", "-100"
    if window:
        dataset.WindowCenter, dataset.WindowWidth = "1800", "3000"
    if compress:
        dataset.compress(RLELossless, stored)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dicom_seeds(shared_data: Path) -> list[bytes]:
    """DICOM files of a real NIH film (128x128): 8-bit, 12-bit windowed, MONOCHROME1, RLE."""
    film = sorted((shared_data / "nih_fullres").glob("*.png"))[0]
    with Image.open(film) as image:
        pixels = np.asarray(image.convert("L").resize((128, 128)), dtype=np.uint8)
    return [
        dicom_bytes(pixels, bits_stored=8, photometric="MONOCHROME2", compress=False, rescale=False, window=False),
        dicom_bytes(pixels, bits_stored=12, photometric="MONOCHROME2", compress=False, rescale=True, window=True),
        dicom_bytes(pixels, bits_stored=12, photometric="MONOCHROME1", compress=False, rescale=False, window=False),
        dicom_bytes(pixels, bits_stored=8, photometric="MONOCHROME2", compress=True, rescale=False, window=False),
    ]


def test_seed_files_read_cleanly(
    png_seeds: list[bytes], jpeg_seeds: list[bytes], dicom_seeds: list[bytes], tmp_path: Path
) -> None:
    # Without this, a fuzz run over broken seeds would only ever exercise the error paths.
    for index, seed in enumerate(png_seeds + jpeg_seeds + dicom_seeds):
        path = tmp_path / f"seed_{index}"
        path.write_bytes(seed)
        assert read_image(path).array.ndim == 2
    assert repair_png_checksums(png_seeds[0]) == png_seeds[0]
    assert pydicom.dcmread(io.BytesIO(dicom_seeds[3])).file_meta.TransferSyntaxUID == RLELossless


def repair_png_checksums(data: bytes) -> bytes:
    """Recompute every chunk's CRC, so that a mutation reaches the decoder instead of the CRC check."""
    repaired = bytearray(data)
    position = 8  # after the signature
    while position + 12 <= len(repaired):
        length = int.from_bytes(repaired[position : position + 4], "big")
        end = position + 8 + length
        if end + 4 > len(repaired):
            break
        checksum = zlib.crc32(bytes(repaired[position + 4 : end]))
        repaired[end : end + 4] = checksum.to_bytes(4, "big")
        position = end + 4
    return bytes(repaired)


@FUZZ_SETTINGS
@given(data=st.data())
def test_png_reader_on_mutated_real_files(png_seeds: list[bytes], tmp_path: Path, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(png_seeds))
    mutated = data.draw(mutations(seed))
    if data.draw(st.booleans()):
        mutated = repair_png_checksums(mutated)
    check_image(mutated, tmp_path / "input.png", "png")


@FUZZ_SETTINGS
@given(data=st.data())
def test_jpeg_reader_on_mutated_real_files(jpeg_seeds: list[bytes], tmp_path: Path, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(jpeg_seeds))
    check_image(data.draw(mutations(seed)), tmp_path / "input.jpeg", "jpeg")


@FUZZ_SETTINGS
@given(data=st.data())
def test_dicom_reader_on_mutated_real_files(dicom_seeds: list[bytes], tmp_path: Path, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(dicom_seeds))
    check_image(data.draw(mutations(seed)), tmp_path / "input.dcm", "dicom")


def check_manifest(data: bytes, path: Path, origin: str) -> None:
    """Parse ``data`` as a manifest CSV: a valid manifest or a documented error, nothing else."""
    path.write_bytes(data)
    try:
        manifest = load_inputs([path])
    except CxrAnomalyError as error:
        TALLY[f"{origin}: {type(error).__name__}"] += 1
        return
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert str(manifest["label"].dtype) == "Int64"
    assert set(manifest["label"].dropna().unique()) <= {0, 1}
    assert set(manifest["split"].dropna().unique()) <= {"train", "val", "test"}
    assert manifest["path"].map(lambda value: isinstance(value, str) and value != "").all()
    TALLY[f"{origin}: parsed"] += 1


@pytest.fixture(scope="module")
def manifest_seeds(shared_data: Path) -> list[bytes]:
    """The first 20 lines of the NIH1000 and Kermany manifests."""
    seeds = []
    for folder in ("nih1000", "kermany224"):
        lines = (shared_data / folder / "manifest.csv").read_bytes().splitlines(keepends=True)
        seeds.append(b"".join(lines[:20]))
    return seeds


@FUZZ_SETTINGS
@given(data=st.data())
def test_manifest_parser_on_mutated_real_manifests(
    manifest_seeds: list[bytes], tmp_path: Path, data: st.DataObject
) -> None:
    seed = data.draw(st.sampled_from(manifest_seeds))
    check_manifest(data.draw(mutations(seed)), tmp_path / "manifest.csv", "manifest (mutated)")


CELL_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "2",
            "-1",
            "0.0",
            "1.0",
            "normal",
            "Normal",
            "ABNORMAL",
            "pneumonia",
            "No Finding",
            "train",
            "val",
            "valid",
            "Test",
            "training",
            "nan",
            "NaN",
            "NA",
            "None",
            " ",
            "PA",
            "AP",
            "a.png",
            "sub/b.png",
            "/abs/c.png",
            "x.npz#train/0",
            "#",
            '"',
            ",",
            "\n",
        ]
    ),
    st.text(max_size=12),
    st.integers(-5, 5).map(str),
)
COLUMN_NAMES = st.one_of(
    st.sampled_from(
        ["path", "label", "split", "patient_id", "view", "patient_key", "PatientID", " path ", "Label", "path", ""]
    ),
    st.text(max_size=8),
)


@st.composite
def random_tables(draw: st.DrawFn) -> bytes:
    """A CSV table with random columns (usually including ``path``) and random cell values."""
    columns = draw(st.lists(COLUMN_NAMES, min_size=0, max_size=7))
    if draw(st.booleans()):
        columns = ["path", *columns]
    rows = draw(st.lists(st.lists(CELL_VALUES, min_size=len(columns), max_size=len(columns)), max_size=8))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(rows)
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1"]))
    return text.getvalue().encode(encoding, errors="replace")


@FUZZ_SETTINGS
@given(table=random_tables())
def test_manifest_parser_on_random_tables(table: bytes, tmp_path: Path) -> None:
    check_manifest(table, tmp_path / "manifest.csv", "manifest (random)")


def check_checkpoint(data: bytes, path: Path, origin: str) -> None:
    """Load ``data`` as ``--model`` does: a detector or a documented error naming the file."""
    path.write_bytes(data)
    try:
        loaded = load_checkpoint(path)
    except CxrAnomalyError as error:
        TALLY[f"{origin}: {type(error).__name__}"] += 1
        assert str(path) in str(error), f"the error does not name the file: {error}"
        return
    assert isinstance(loaded, LoadedModel)
    TALLY[f"{origin}: loaded"] += 1


@pytest.fixture(scope="module")
def checkpoint_seed(tiny_nih_model) -> bytes:
    """A real calibrated checkpoint, as ``cxr-anomaly train`` writes it."""
    return tiny_nih_model.checkpoint.read_bytes()


@pytest.fixture(scope="module")
def foreign_seeds(
    png_seeds: list[bytes], jpeg_seeds: list[bytes], dicom_seeds: list[bytes], manifest_seeds: list[bytes]
) -> list[bytes]:
    """Files that are not checkpoints but get passed as one: films, CSVs, other torch and zip files."""
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, buffer)  # a torch file of someone else's
    other_torch = buffer.getvalue()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"not a pickle")
    zip_file = buffer.getvalue()
    buffer = io.BytesIO()
    np.savez(buffer, train_images=np.zeros((2, 4, 4), np.uint8))
    return [
        png_seeds[0],
        jpeg_seeds[0],
        dicom_seeds[0],
        manifest_seeds[0],
        other_torch,
        zip_file,
        buffer.getvalue(),
        b"",
        b"hello world\n",
        b"\x80\x04K\x01.",
    ]


def test_checkpoint_seed_loads(checkpoint_seed: bytes, tmp_path: Path) -> None:
    # Without this, a fuzz run over a broken seed would only ever exercise the error paths.
    path = tmp_path / "model.pt"
    path.write_bytes(checkpoint_seed)
    assert load_checkpoint(path).calibration is not None


@FUZZ_SETTINGS
@given(data=st.data())
def test_model_loader_on_mutated_and_truncated_real_checkpoints(
    checkpoint_seed: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    if data.draw(st.booleans()):
        damaged = checkpoint_seed[: data.draw(st.integers(0, len(checkpoint_seed) - 1))]
        check_checkpoint(damaged, tmp_path / "model.pt", "checkpoint (truncated)")
    else:
        check_checkpoint(data.draw(mutations(checkpoint_seed)), tmp_path / "model.pt", "checkpoint (mutated)")


@FUZZ_SETTINGS
@given(data=st.data())
def test_model_loader_on_random_bytes_and_other_file_types(
    foreign_seeds: list[bytes], tmp_path: Path, data: st.DataObject
) -> None:
    kind = data.draw(st.sampled_from(("random", "foreign", "mutated foreign")))
    if kind == "random":
        candidate = data.draw(st.binary(max_size=2048))
    else:
        candidate = data.draw(st.sampled_from(foreign_seeds))
        if kind == "mutated foreign":
            candidate = data.draw(mutations(candidate))
    check_checkpoint(candidate, tmp_path / "model.pt", f"not a checkpoint ({kind})")


# Issue 13: strategies over DICOM attributes and folder layouts ---------------------------------
#
# Byte mutations seldom produce a well-formed file that says something odd; these build valid
# DICOM files of a real NIH film whose attributes are drawn (frames, window, photometric
# interpretation, bits, rescale, presentation shape, preamble), and folder trees whose names are
# drawn from label, split and PACS series names, with real films and other files in them.

WINDOW_VALUES = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "0.5",
            "1.5",
            "2048",
            "4095",
            "40\\400",
            "1e300",
            "-1e300",
            "nan",
            "inf",
            "-inf",
            "",
            "abc",
            "1e-300",
        ]
    ),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda value: f"{value:.6g}"),
)
PHOTOMETRIC = st.one_of(
    st.sampled_from(["MONOCHROME2", "MONOCHROME1", "PALETTE COLOR"]),  # mostly valid
    st.sampled_from(
        ["MONOCHROME2", "MONOCHROME1", "PALETTE COLOR", "RGB", "YBR_FULL", "monochrome2", "", "HSV", "MONOCHROME3"]
    ),
)


@pytest.fixture(scope="module")
def attribute_film(shared_data: Path) -> np.ndarray:
    """A real NIH film reduced to 48x40 uint8 (rows, columns), the pixels of every drawn file."""
    film = sorted((shared_data / "nih_fullres").glob("*.png"))[1]
    with Image.open(film) as image:
        return np.asarray(image.convert("L").resize((40, 48)), dtype=np.uint8)


def _text_element(dataset: Dataset, keyword: str, value: str) -> None:
    """Set ``keyword`` to ``value`` as written text, even where its VR would refuse it ("abc" as
    a DS): written as LO, which an explicit VR file keeps and an implicit VR file forgets."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    dataset.add_new(tag, "LO", value)


@st.composite
def dicom_attribute_files(draw: st.DrawFn, film: np.ndarray) -> bytes:
    """A DICOM file of ``film`` whose frames, window, photometric, bits and more are drawn."""
    from pydicom.config import disable_value_validation
    from pydicom.uid import ImplicitVRLittleEndian

    frames = draw(st.integers(1, 5))
    samples = draw(st.sampled_from([1, 1, 1, 3]))
    bits_allocated = draw(st.sampled_from([8, 16]))
    bits_stored = draw(st.integers(1, bits_allocated))
    signed = draw(st.booleans())
    top = (1 << bits_stored) - 1
    scaled = (film.astype(np.int64) * top) // 255  # (rows, columns) in [0, 2**bits - 1]
    if signed:
        scaled -= 1 << (bits_stored - 1)
    stack = np.stack([np.roll(scaled, shift, axis=1) for shift in range(frames)])  # (frames, rows, columns)
    if samples == 3:
        stack = np.repeat(stack[..., None], 3, axis=-1)  # (frames, rows, columns, 3)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
    stored = stack.astype(dtype[(bits_allocated, signed)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = "FUZZ^ATTRIBUTES"
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = film.shape
    dataset.SamplesPerPixel = samples
    if samples == 3:
        dataset.PlanarConfiguration = 0
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = bits_allocated, bits_stored, bits_stored - 1
    dataset.PixelRepresentation = int(signed)
    dataset.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if frames > 1 or draw(st.booleans()):
        dataset.NumberOfFrames = frames
    dataset.PixelData = stored.tobytes()
    with disable_value_validation():
        if draw(st.booleans()):
            try:
                dataset.compress(RLELossless, stored if frames > 1 else stored[0])
            except Exception:  # an encoder that refuses these bits: the file stays native
                pass
        # Attributes drawn after the pixels are encoded, so they may contradict them.
        dataset.PhotometricInterpretation = draw(PHOTOMETRIC)
        if dataset.PhotometricInterpretation == "PALETTE COLOR" and draw(st.booleans()):
            entries = draw(st.sampled_from([256, 16, 4096]))
            depth = draw(st.sampled_from([8, 16]))
            table = (np.linspace(0, (1 << depth) - 1, entries)[::-1]).astype("<u2")
            for colour in ("Red", "Green", "Blue"):
                setattr(dataset, f"{colour}PaletteColorLookupTableDescriptor", [entries, 0, depth])
                setattr(dataset, f"{colour}PaletteColorLookupTableData", table.tobytes())
        frames_text = draw(
            st.one_of(
                st.none(),
                st.none(),
                st.sampled_from(["0", "-1", "abc", "", "1e9", "99999999"]),
                st.integers(1, 12).map(str),
            )
        )
        if frames_text is not None:
            _text_element(dataset, "NumberOfFrames", frames_text)
        for keyword in ("BitsStored", "BitsAllocated", "HighBit", "PixelRepresentation"):
            if draw(st.integers(0, 19)) == 0:
                setattr(dataset, keyword, draw(st.sampled_from([0, 1, 7, 8, 12, 15, 16, 17, 32, 64])))
        if draw(st.booleans()):
            _text_element(dataset, "WindowCenter", draw(WINDOW_VALUES))
            _text_element(dataset, "WindowWidth", draw(WINDOW_VALUES))
            if draw(st.booleans()):
                dataset.VOILUTFunction = draw(st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID", "", "BOGUS"]))
        if draw(st.integers(0, 3)) == 0:
            _text_element(dataset, "RescaleSlope", draw(WINDOW_VALUES))
            _text_element(dataset, "RescaleIntercept", draw(WINDOW_VALUES))
        if draw(st.integers(0, 3)) == 0:
            dataset.PresentationLUTShape = draw(st.sampled_from(["IDENTITY", "INVERSE", "", "FOO"]))
        layout = draw(st.sampled_from(["file", "file", "no preamble", "no file meta"]))
        buffer = io.BytesIO()
        if layout == "no file meta":
            del dataset.file_meta
            if "PixelData" in dataset and dataset["PixelData"].VR == "OB" and dataset["PixelData"].is_undefined_length:
                dataset.file_meta = meta  # encapsulated pixels need their transfer syntax
                dataset.save_as(buffer, enforce_file_format=True)
                layout = "file"
            else:
                meta.TransferSyntaxUID = ImplicitVRLittleEndian
                pydicom.dcmwrite(buffer, dataset, implicit_vr=True, little_endian=True)
        else:
            dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data[132:] if layout == "no preamble" else data


@FUZZ_SETTINGS
@given(data=st.data())
def test_dicom_reader_on_drawn_attributes_of_a_real_film(
    attribute_film: np.ndarray, tmp_path: Path, data: st.DataObject
) -> None:
    import warnings

    with warnings.catch_warnings():  # building the file warns about the odd values, by design
        warnings.simplefilter("ignore")
        dicom = data.draw(dicom_attribute_files(attribute_film))
    path = tmp_path / "attributes"  # no suffix, as in a PACS export: the bytes decide
    check_image(dicom, path, "dicom attributes")


FOLDER_NAMES = st.sampled_from(
    [
        "normal",
        "Normal",
        "NORMAL",
        "0_normal",
        "abnormal",
        "1_abnormal",
        "pneumonia",
        "Pneumonia",
        "0",
        "1",
        "2",
        "positive",
        "negative",
        "no_finding",
        "train",
        "val",
        "valid",
        "Test",
        "series",
        "1.2.840.113619.2.1",
        "study 2",
        "normal_old",
        "abnormalities",
        ".hidden",
    ]
)
FILE_KINDS = st.sampled_from(
    ["png", "jpeg", "dicom", "dicom without suffix", "dicom without preamble", "text", "empty", "hidden png", "csv"]
)


@st.composite
def folder_layouts(draw: st.DrawFn) -> list[tuple[tuple[str, ...], str]]:
    """1-6 files as (folder names below the root, kind of file)."""
    return draw(st.lists(st.tuples(st.lists(FOLDER_NAMES, max_size=3).map(tuple), FILE_KINDS), min_size=1, max_size=6))


@pytest.fixture(scope="module")
def layout_files(png_seeds: list[bytes], jpeg_seeds: list[bytes], dicom_seeds: list[bytes]) -> dict[str, bytes]:
    """The bytes of each kind of file a drawn folder holds (real films, and some that are not)."""
    return {
        "png": png_seeds[0],
        "jpeg": jpeg_seeds[0],
        "dicom": dicom_seeds[0],
        "dicom without suffix": dicom_seeds[3],
        "dicom without preamble": dicom_seeds[1][132:],
        "text": b"reading notes, not a film\n",
        "empty": b"",
        "hidden png": png_seeds[1],
        "csv": b"path,label\nmissing.png,0\n",
    }


def expected_folder_label(parts: tuple[str, ...]) -> int | None | str:
    """The label README promises for a file under ``parts``; "conflict" when two are named."""
    labels = {
        0 if part.lower() in ("normal", "0_normal") else 1
        for part in parts
        if part.lower() in ("normal", "0_normal", "abnormal", "1_abnormal", "pneumonia")
    }
    return "conflict" if len(labels) > 1 else (labels.pop() if labels else None)


@FUZZ_SETTINGS
@given(layout=folder_layouts())
def test_folder_scan_on_drawn_layouts_of_real_films(
    layout_files: dict[str, bytes], layout: list[tuple[tuple[str, ...], str]]
) -> None:
    import tempfile

    import pandas as pd

    from cxr_anomaly.data.manifest import scan_folder

    suffixes = {
        "png": ".png",
        "jpeg": ".jpeg",
        "dicom": ".dcm",
        "dicom without suffix": "",
        "dicom without preamble": "",
        "text": ".txt",
        "empty": ".png",
        "hidden png": ".png",
        "csv": ".csv",
    }
    with tempfile.TemporaryDirectory() as scratch:  # a fresh tree per example
        root = Path(scratch) / "root"
        root.mkdir()
        films: dict[str, tuple[str, ...]] = {}
        for index, (parts, kind) in enumerate(layout):
            folder = root.joinpath(*parts)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{'.' if kind == 'hidden png' else ''}f{index}{suffixes[kind]}"
            (folder / name).write_bytes(layout_files[kind])
            if kind in ("png", "jpeg", "dicom", "dicom without suffix", "dicom without preamble", "empty"):
                films[str((folder / name).resolve())] = parts
        try:
            manifest = scan_folder(root)
        except CxrAnomalyError as error:
            TALLY[f"folder layout: {type(error).__name__}"] += 1
            expected = [expected_folder_label(parts) for parts in films.values()]
            assert not films or "conflict" in expected, f"{error} for a tree with films {films}"
            return
        TALLY["folder layout: scanned"] += 1
        # Every film is listed (an empty .png too: its suffix is an image's), nothing else, and
        # each label is the one the documented folder names give: never from "0", "1", ...
        assert sorted(manifest["path"]) == sorted(films)
        for path, label, split in zip(manifest["path"], manifest["label"], manifest["split"]):
            expected = expected_folder_label(films[path])
            assert expected != "conflict"
            assert (None if label is pd.NA else int(label)) == expected, (films[path], label)
            named_splits = [SPLIT_NAMES[part.lower()] for part in films[path] if part.lower() in SPLIT_NAMES]
            assert (None if split is pd.NA else split) == (named_splits[-1] if named_splits else None)
        # The whole input path (manifest.csv, Kermany layout, folder scan) raises documented errors only.
        try:
            load_inputs([root])
        except CxrAnomalyError as error:
            TALLY[f"folder layout (load_inputs): {type(error).__name__}"] += 1


SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "test": "test"}
