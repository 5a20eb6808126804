"""Image reading on real films, and each kind of hostile file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_anomaly.errors import DecompressionBombError, MissingFileError, UnreadableImageError
from cxr_anomaly.io import read_image, resize_grey, sniff_format


@pytest.fixture(scope="module")
def full_film(shared_data: Path) -> Path:
    return shared_data / "nih_fullres" / "00000427_000.png"


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` grey pixels but holds one row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
        + chunk(b"IEND", b"")
    )


def test_real_rgb_png_becomes_grey_in_unit_range(shared_data: Path) -> None:
    path = next((shared_data / "nih1000" / "train" / "0_normal").glob("*.png"))
    read = read_image(path)
    with Image.open(path) as image:
        assert image.mode in ("RGB", "RGBA")
        expected = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    assert read.array.shape == (64, 64) and read.array.dtype == np.float32
    np.testing.assert_allclose(read.array, expected, atol=1e-6)
    assert read.metadata["format"] == "png"


def test_format_is_sniffed_not_taken_from_the_suffix(shared_data: Path, tmp_path: Path) -> None:
    jpeg = next((shared_data / "kermany224" / "data" / "train" / "NORMAL").glob("*.jpeg"))
    disguised = tmp_path / "film.png"
    disguised.write_bytes(jpeg.read_bytes())
    assert read_image(disguised).metadata["format"] == "jpeg"
    assert sniff_format(b"\x89PNG\r\n\x1a\n") == "png" and sniff_format(b"GIF89a") is None


def test_full_size_film_resizes_with_antialiasing(full_film: Path) -> None:
    array = read_image(full_film).array  # (1024, 1024)
    small = resize_grey(array, 64).astype(np.float64) / 255.0  # (64, 64)
    block_means = array.reshape(64, 16, 64, 16).mean(axis=(1, 3))  # (1024, 1024) -> (64, 64)
    assert np.abs(small - block_means).mean() < 0.02
    assert np.abs(small - array[::16, ::16]).mean() > np.abs(small - block_means).mean()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError) as caught:
        read_image(tmp_path / "absent.png")
    assert caught.value.path == str(tmp_path / "absent.png")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="empty") as caught:
        read_image(path)
    assert caught.value.path == str(path)


def test_truncated_png(full_film: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.png"
    path.write_bytes(full_film.read_bytes()[:50_000])
    with pytest.raises(UnreadableImageError, match="cannot decode PNG") as caught:
        read_image(path)
    assert caught.value.path == str(path)


def test_corrupt_png(full_film: Path, tmp_path: Path) -> None:
    content = bytearray(full_film.read_bytes())
    content[200:5000] = bytes(4800)  # zero the start of the compressed pixel data
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(content))
    with pytest.raises(UnreadableImageError, match="cannot decode PNG"):
        read_image(path)


def test_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "report.png"
    path.write_text("patient,finding\n1,effusion\n")
    with pytest.raises(UnreadableImageError, match="not a PNG, JPEG") as caught:
        read_image(path)
    assert caught.value.path == str(path)


def test_decompression_bomb_declared_in_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(40_000, 40_000))  # 1.6e9 pixels in a few hundred bytes
    with pytest.raises(DecompressionBombError) as caught:
        read_image(path)
    assert caught.value.path == str(path)


def test_pixel_limit_applies_to_real_films(full_film: Path) -> None:
    with pytest.raises(DecompressionBombError, match="1048576 pixels exceeds the limit of 1000000"):
        read_image(full_film, max_pixels=1_000_000)


def test_pillows_bomb_warning_is_an_error_in_parallel_reads_and_leaves_the_filters_alone(
    full_film: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above Pillow's own limit (but under ours) Pillow only warns; the read refuses the film,
    from several threads at once, and the process's warning filters are as they were."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600_000)  # 1024² = 1,048,576: a warning, not an error
    filters_before = list(warnings.filters)

    def outcome(_: int) -> str:
        try:
            read_image(full_film)
        except DecompressionBombError as error:
            return error.path
        return "read"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(outcome, range(32)))
    assert outcomes == [str(full_film)] * 32
    assert list(warnings.filters) == filters_before


def test_unreadable_path_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "looks_like_a_film.png"
    folder.mkdir()
    (folder / "inner").write_text("x")
    with pytest.raises((UnreadableImageError, MissingFileError)) as caught:
        read_image(folder)
    assert caught.value.path == str(folder)


def test_exif_rotated_jpeg_is_read_upright(shared_data: Path, tmp_path: Path) -> None:
    # A photographed film: a real Kermany JPEG cropped to a portrait 160x224, stored lying on its
    # side with EXIF Orientation 6 ("rotate 90 degrees clockwise to display"), as phones write it.
    source = shared_data / "kermany224" / "data" / "test" / "NORMAL" / "IM-0005-0001.jpeg"
    with Image.open(source) as image:
        upright = image.convert("L").crop((32, 0, 192, 224))  # (width 160, height 224)
    reference, rotated = tmp_path / "upright.jpeg", tmp_path / "rotated.jpeg"
    upright.save(reference, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif.tobytes())
    with Image.open(rotated) as stored:
        assert stored.size == (224, 160)  # what a reader that ignores EXIF would score
    expected = read_image(reference).array
    read = read_image(rotated)
    assert read.array.shape == expected.shape == (224, 160)
    assert np.abs(read.array - expected).mean() < 2.0 / 255.0  # JPEG re-encoding only
    assert read.metadata["exif_orientation"] == 6
    assert (read.metadata["width"], read.metadata["height"]) == (160, 224)


def test_sixteen_bit_png_of_twelve_bit_data_is_stretched_to_its_own_range(tmp_path: Path) -> None:
    # 12-bit data in a 16-bit PNG spans 1/16 of the 16-bit range: against 65535 its 8-bit copy
    # would keep 17 grey levels, so it is read against its own range, and the metadata says so.
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))
    path = tmp_path / "twelve_in_sixteen.png"
    Image.fromarray(ramp).save(path)
    read = read_image(path)
    np.testing.assert_allclose(read.array, ramp / 4095.0, atol=1e-6)
    assert read.metadata["range_stretched_from"] == pytest.approx(4095 / 65535, abs=1e-4)
    assert len(np.unique(resize_grey(read.array, 64))) == 64


@pytest.mark.parametrize(
    ("low", "high", "dtype", "top"),
    [
        (1000, 60000, np.uint16, 65535.0),  # a 16-bit film over most of its range
        (0, 40, np.uint8, 255.0),  # a dark 8-bit film: 8 bits gain no grey levels from a stretch
    ],
)
def test_films_that_keep_their_grey_levels_are_not_stretched(
    tmp_path: Path, low: int, high: int, dtype: type, top: float
) -> None:
    # Exposure differences between ordinary films survive: only the narrow 16-bit case is stretched.
    ramp = np.tile(np.linspace(low, high, 64).astype(dtype), (64, 1))
    path = tmp_path / "film.png"
    Image.fromarray(ramp).save(path)
    read = read_image(path)
    np.testing.assert_allclose(read.array, ramp / top, atol=1e-6)
    assert "range_stretched_from" not in read.metadata
