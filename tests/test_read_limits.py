"""The readers check a film's header before decoding it (issue 32): sides, pixels and decoded bytes,
a deflated DICOM inflated with a bound, 16-bit PNGs converted straight to float32, and reading from
memory. Each bomb is read from a file, as the DICOM listener's worker reads what it received."""

from __future__ import annotations

import io
import sys
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_anomaly.dicom import read_film_headers
from cxr_anomaly.errors import DecompressionBombError, UnreadableImageError
from cxr_anomaly.io import probe_image_bytes, read_image, read_image_bytes
from cxr_anomaly.read_limits import (
    DeclaredImage,
    ReadLimits,
    bounded_inflate,
    check_declared,
)
from cxr_anomaly.report import dicom_link_fields
from cxr_anomaly.scope import upload_scope

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY_ROOT))  # benchmarks/ is a folder of the repository, not installed

from benchmarks.attack_replay import deflated_dicom, png16_of_zeros, rle_dicom_of_zeros

MIB = 1 << 20


def traced_peak(action: Callable[[], object]) -> int:
    """Peak bytes Python and numpy allocated while ``action`` ran (its exception is swallowed)."""
    tracemalloc.start()
    try:
        action()
    except DecompressionBombError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "name, build",
    [
        ("deflated_overflow", lambda: deflated_dicom(1024, 1024, 256 * MIB)),  # declares 1 MB, inflates to 256 MB
        ("deflated_declared", lambda: deflated_dicom(65535, 65535, MIB)),
        ("png16_long", lambda: png16_of_zeros(65535, 1024)),
        ("rle_long", lambda: rle_dicom_of_zeros(65535, 1024)),
    ],
)
def test_bombs_in_files_are_refused_before_decoding_for_little_memory(
    tmp_path: Path, name: str, build: Callable[[], bytes]
) -> None:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(build())
    with pytest.raises(DecompressionBombError) as caught:
        read_image(path)
    assert str(path) in str(caught.value)
    assert traced_peak(lambda: read_image(path)) < 16 * MIB


def test_a_deflated_film_reads_like_its_uncompressed_twin(
    shared_data: Path, tmp_path: Path, dicom_writer: Callable[..., Path]
) -> None:
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    grey = np.asarray(Image.open(shared_data / "nih_fullres" / "00000427_000.png").convert("L"))
    plain = dicom_writer(grey, tmp_path / "plain.dcm", study_uid="1.2.3", sop_uid="1.2.3.4", view="PA")
    dataset = pydicom.dcmread(plain)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = tmp_path / "deflated.dcm"
    dataset.save_as(deflated, enforce_file_format=True)
    assert deflated.stat().st_size < plain.stat().st_size  # really deflated
    read = read_image(deflated)
    assert read.metadata["transfer_syntax"] == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(read.array, read_image(plain).array)
    probed = probe_image_bytes(deflated.read_bytes())
    assert probed.format == "dicom" and probed.declared == DeclaredImage(1024, 1024, 1, 1, 1)
    assert read_film_headers([str(deflated)])[0].view == "PA"


def test_the_header_of_a_deflated_bomb_is_read_without_inflating_it(tmp_path: Path) -> None:
    path = tmp_path / "bomb.dcm"
    path.write_bytes(deflated_dicom(1024, 1024, 256 * MIB))
    assert read_film_headers([str(path)])[0].view is None
    assert traced_peak(lambda: read_film_headers([str(path)])) < 16 * MIB
    assert dicom_link_fields(path)["sop_instance_uid"] == "1.2.826.0.1.3680043.8.498.1"
    assert traced_peak(lambda: dicom_link_fields(path)) < 16 * MIB
    film = np.zeros((64, 64), np.uint8)
    assert traced_peak(lambda: upload_scope(path.read_bytes(), "dicom", film, fitted_on_adults=True)) < 16 * MIB


def test_limits_name_the_side_the_pixels_and_the_bytes() -> None:
    limits = ReadLimits(max_pixels=1000, max_side=50, max_decoded_bytes=1500)
    check_declared("f", DeclaredImage(50, 20), limits)
    with pytest.raises(DecompressionBombError, match="51x2: a side of more than 50 pixels"):
        check_declared("f", DeclaredImage(51, 2), limits)
    with pytest.raises(DecompressionBombError, match=r"40x40 = 1600 pixels exceeds the limit of 1000"):
        check_declared("f", DeclaredImage(40, 40), limits)
    with pytest.raises(DecompressionBombError, match="1600 bytes decoded exceeds the limit of 1500"):
        check_declared("f", DeclaredImage(40, 20, samples=1, bytes_per_sample=2), limits)
    with pytest.raises(DecompressionBombError, match="x 3 frames"):
        check_declared("f", DeclaredImage(20, 20, frames=3), limits)
    with pytest.raises(ValueError, match="max_side=0"):
        ReadLimits(max_side=0)
    assert ReadLimits.for_side(8192).max_pixels == 8192 * 8192


def test_bounded_inflate_stops_at_its_bound() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(b"\0" * (3 * MIB)) + compressor.flush()
    assert len(bounded_inflate("f", data, 3 * MIB).getvalue()) == 3 * MIB
    with pytest.raises(DecompressionBombError, match="more than 3145727 bytes"):
        bounded_inflate("f", data, 3 * MIB - 1)
    assert traced_peak(lambda: bounded_inflate("f", data, MIB)) < 5 * MIB  # the bound, two 1 MiB pieces, slack


def test_sixteen_bit_png_goes_straight_to_float32(shared_data: Path) -> None:
    grey = np.asarray(Image.open(shared_data / "nih_fullres" / "00000427_000.png").convert("L"))
    sixteen = np.tile(grey.astype(np.uint16) * 257, (2, 2))  # 2048x2048, the full 16-bit range
    buffer = io.BytesIO()
    Image.fromarray(sixteen).save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    read = read_image_bytes(data)
    assert read.array.dtype == np.float32 and read.metadata["mode"] == "I;16"
    reference = (sixteen.astype(np.float64) / 65535.0).astype(np.float32)
    np.testing.assert_allclose(read.array, reference, rtol=0, atol=6e-8)
    # the decoder's bytes (2 a pixel) and the float32 film (4): no float64 copy (8) or clip copy
    assert traced_peak(lambda: read_image_bytes(data)) < 7 * sixteen.size


def test_reading_from_memory_matches_the_file_and_names_the_label(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "nih1000" / "test" / "1_abnormal" / "00000211_011.png"
    np.testing.assert_array_equal(read_image_bytes(path.read_bytes()).array, read_image(path).array)
    with pytest.raises(UnreadableImageError) as caught:
        read_image_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, label="upload")
    assert str(caught.value).startswith("upload: cannot decode PNG") and "/" not in caught.value.reason
    with pytest.raises(UnreadableImageError, match="empty"):
        read_image_bytes(b"")
