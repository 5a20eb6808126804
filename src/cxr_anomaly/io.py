"""Readers that turn an image file into a float array plus metadata.

Following MONAI, a reader returns ``(array, metadata)`` (here as the named :class:`ImageRead`):
``array`` is a 2-D float32 grey image in [0, 1] where bright means dense (bone is white), and
``metadata`` holds what was learnt from the file that is safe to log (never patient identifiers).

PNG and JPEG go through Pillow; RGB and RGBA are converted to grey (alpha is dropped after
compositing on black, which is how an RGBA export of a grey film is meant to be seen), and an
EXIF Orientation tag (photographed or scanned films) is applied, so the film is scored upright.
A 16-bit image is read against the 16-bit range, unless its values span less than a quarter of
it (12-bit data in a 16-bit PNG): then against its own range (:func:`stretch_narrow_range`).
The format is sniffed from the file's bytes, never trusted from its extension.
:func:`reduce_film` is the one step from a decoded film to the codes the cache keeps: 8-bit, or
16-bit for a film of more than 256 grey levels (docs/usage.md, "Bit depth and encodings").
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .dicom import read_dicom_stream
from .dicom_bounds import declared_dicom
from .errors import DecompressionBombError, DicomError, MissingFileError, UnreadableImageError
from .image_base import (
    DEFAULT_MAX_PIXELS,
    NARROW_RANGE_FRACTION,
    SIXTEEN_BIT_TOP,
    ImageRead,
    RangeStretch,
    as_eight_bit_film,
    canonical_film,
    has_more_than_eight_bit_levels,
    sniff_format,
    stretch_narrow_range,
    stretch_to_own_range,
)
from .read_limits import DeclaredImage, ReadLimits, check_declared

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "NARROW_RANGE_FRACTION",
    "ImageRead",
    "ProbedImage",
    "RangeStretch",
    "ReadLimits",
    "declared_by_pillow",
    "pil_to_grey",
    "probe_image_bytes",
    "read_image",
    "read_image_bytes",
    "reduce_film",
    "resize_grey",
    "sniff_format",
    "stretch_narrow_range",
]

logger = logging.getLogger(__name__)

# warnings.catch_warnings() swaps the process-wide filter list; two threads inside it at once can
# restore each other's filters, so a bomb warning could pass as a mere warning.
_WARNING_FILTERS_LOCK = threading.Lock()
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"})


def read_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, limits: ReadLimits | None = None
) -> ImageRead:
    """Read a PNG, JPEG, BMP, TIFF or DICOM file as a grey float image in [0, 1].

    Args:
        path: the file to read.
        max_pixels: images declaring more pixels than this are refused before decoding.
        limits: the side, pixel and decoded-byte limits checked on the header before decoding;
            default :class:`ReadLimits` with ``max_pixels``.

    Raises:
        MissingFileError: the file does not exist.
        UnreadableImageError: the file is empty, truncated, corrupt or not an image.
        DecompressionBombError: the image declares more than the limits allow.
        DicomError: a DICOM file cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "file does not exist")
    try:
        with path.open("rb") as stream:
            return _read_stream(stream, path, limits or ReadLimits(max_pixels=max_pixels))
    except OSError as error:  # permissions, a folder named like a file, I/O errors
        raise UnreadableImageError(path, f"cannot read the file: {error.strerror or error}") from error


def read_image_bytes(data: bytes, *, label: str = "upload", limits: ReadLimits | None = None) -> ImageRead:
    """:func:`read_image` of a file held in memory (an upload, a received object), decoded
    without a temporary file; errors name ``label``, never a path."""
    return _read_stream(io.BytesIO(data), label, limits or ReadLimits())


@dataclass(frozen=True)
class ProbedImage:
    """What a file's first bytes and header say, before any pixel is decoded.

    Attributes:
        format: ``png``, ``jpeg``, ``bmp``, ``tiff`` or ``dicom``, sniffed from the bytes.
        declared: the size and sample depth its header declares.
    """

    format: str
    declared: DeclaredImage


def probe_image_bytes(data: bytes, *, label: str = "upload", limits: ReadLimits | None = None) -> ProbedImage:
    """Sniff and read the header of a file held in memory, checking it against ``limits``.

    Raises:
        UnreadableImageError: the bytes are empty, not an image, or the header cannot be read.
        DecompressionBombError: the header declares more than ``limits`` allow.
        DicomError: a DICOM header cannot be parsed.
    """
    if not data:
        raise UnreadableImageError(label, "file is empty")
    kind = sniff_format(data[:132])
    if kind is None:
        raise UnreadableImageError(label, f"not a PNG, JPEG, BMP, TIFF or DICOM file (starts with {data[:8]!r})")
    try:
        if kind == "dicom":
            declared = declared_dicom(label, io.BytesIO(data))
        else:
            with _open_refusing_bombs(io.BytesIO(data)) as image:
                declared = declared_by_pillow(image)
    except (DicomError, DecompressionBombError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DecompressionBombError(label, str(error)) from error
    except Exception as error:  # noqa: BLE001 - Pillow and pydicom raise many types for damaged headers
        raise UnreadableImageError(label, f"cannot read the {kind.upper()} header: {type(error).__name__}") from None
    check_declared(label, declared, limits or ReadLimits())
    return ProbedImage(kind, declared)


def _read_stream(stream: BinaryIO, label: str | Path, limits: ReadLimits) -> ImageRead:
    """Sniff a seekable stream at its start and read it with the reader of its format."""
    head = stream.read(132)
    stream.seek(0)
    if not head:
        raise UnreadableImageError(label, "file is empty")
    kind = sniff_format(head)
    if kind == "dicom":
        return read_dicom_stream(stream, label, limits=limits)
    if kind is None:
        raise UnreadableImageError(label, f"not a PNG, JPEG, BMP, TIFF or DICOM file (starts with {head[:8]!r})")
    return _read_with_pillow(stream, label, kind, limits)


def _open_refusing_bombs(stream: BinaryIO) -> Image.Image:
    """``Image.open`` with Pillow's decompression-bomb warning raised as an error.

    Pillow checks the declared size when it opens a file (it warns above
    ``Image.MAX_IMAGE_PIXELS``); only the header is read there, so the lock that makes the
    warning filter thread-safe is held for a fraction of a millisecond, and decoding threads
    still decode side by side.
    """
    with _WARNING_FILTERS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(stream)


def declared_by_pillow(image: Image.Image) -> DeclaredImage:
    """The size and sample depth an opened (not yet loaded) Pillow image declares in its header."""
    width, height = image.size
    mode = image.mode
    bytes_per_sample = 2 if ";16" in mode else 4 if mode in ("I", "F", "I;32") else 1
    return DeclaredImage(width=width, height=height, samples=len(image.getbands()), bytes_per_sample=bytes_per_sample)


def _read_with_pillow(stream: BinaryIO, label: str | Path, kind: str, limits: ReadLimits) -> ImageRead:
    try:
        with _open_refusing_bombs(stream) as image:
            check_declared(label, declared_by_pillow(image), limits)  # before a pixel is decoded
            mode = image.mode
            image.load()
            orientation = _exif_orientation(image)
            # A photographed or scanned film carries its rotation in EXIF; the pixels are
            # stored unrotated, so without this a rotated film would be scored rotated.
            upright = ImageOps.exif_transpose(image) if orientation not in (None, 1) else image
            array = pil_to_grey(upright)
            width, height = upright.size
    except DecompressionBombError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DecompressionBombError(label, str(error)) from error
    except UnidentifiedImageError as error:  # its text quotes the stream's repr, or a path
        raise UnreadableImageError(label, f"cannot decode {kind.upper()}: its header is not valid") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UnreadableImageError(label, f"cannot decode {kind.upper()}: {error}") from error
    if array.size == 0:
        raise UnreadableImageError(label, "image has no pixels")
    stretch = stretch_narrow_range(array, levels=65536 if mode.startswith("I;16") else 256)
    array = stretch.array
    metadata: dict[str, Any] = {"format": kind, "mode": mode, "width": width, "height": height}
    if orientation not in (None, 1):
        metadata["exif_orientation"] = orientation
    if stretch.used_fraction is not None:
        metadata["range_stretched_from"] = round(stretch.used_fraction, 4)
        logger.info(
            "%s: a 16-bit image whose values span %.1f%% of the 16-bit range; stretched to its own minimum and maximum",
            label,
            100 * stretch.used_fraction,
        )
    return ImageRead(array, metadata)


def _exif_orientation(image: Image.Image) -> int | None:
    """The EXIF Orientation tag (1-8; 1 is upright), or None when absent or unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation)
    except (OSError, ValueError, SyntaxError, EOFError, KeyError, TypeError):
        return None  # a damaged EXIF block is no reason to refuse the pixels
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def pil_to_grey(image: Image.Image) -> np.ndarray:
    """Convert a Pillow image of any common mode to a float32 grey array in [0, 1]."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3]
        grey = rgba[..., 0] * 0.299 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
        return (grey * alpha).astype(np.float32)
    if mode in ("I;16", "I;16B", "I;16L"):
        # Straight to float32, divided in place: no float64 copy and no clip copy (a 16-bit value
        # over 65535 cannot exceed 1).
        grey = np.asarray(image).astype(np.float32)
        grey /= np.float32(65535.0)
        return grey
    if mode == "I":
        array = np.asarray(image, dtype=np.float64)
        return np.clip(array / max(float(array.max()), 1.0), 0.0, 1.0).astype(np.float32)
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        return ((array - low) / (high - low) if high > low else np.zeros_like(array)).astype(np.float32)
    if mode == "1":
        return np.asarray(image, dtype=np.float32)
    if mode != "L":
        image = image.convert("L")  # ITU-R 601-2 luma for RGB, CMYK, YCbCr, P
    return np.asarray(image, dtype=np.float32) / 255.0


def resize_grey(array: np.ndarray, size: int, *, bits: int = 8) -> np.ndarray:
    """Resize a grey [0, 1] float image to ``size`` x ``size`` codes, with antialiasing.

    Pillow's bicubic filter widens its support by the reduction factor when shrinking, so a
    1024² film reduced to 64² is low-pass filtered rather than aliased. ``bits`` 8 gives uint8
    codes ``rint(255 x)``; 16 gives uint16 codes ``rint(65535 x)``.
    """
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {array.shape}")
    if bits not in (8, 16):
        raise ValueError(f"bits={bits}; expected 8 or 16")
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    resized = np.asarray(image, dtype=np.float32)
    if bits == 16:
        return np.clip(np.rint(resized * float(SIXTEEN_BIT_TOP)), 0, SIXTEEN_BIT_TOP).astype(np.uint16)
    return np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)


_WIDE_PILLOW_MODES = frozenset({"I;16", "I;16B", "I;16L", "I", "F"})


def reduce_film(image: ImageRead, size: int) -> np.ndarray:
    """A decoded film as the model's ``size`` x ``size`` codes: uint8, or uint16 for a film of more
    than 256 grey levels.

    Films read from more than 8 bits (DICOM, 16-bit PNG or TIFF) are first made independent of how
    they were encoded: one that holds an 8-bit film's levels gets that film's codes, as its 8-bit PNG
    does (:func:`~cxr_anomaly.image_base.as_eight_bit_film`); any other, unless a window or VOI LUT
    says how to show it, is mapped onto [0, 1] by its own minimum and maximum
    (:func:`~cxr_anomaly.image_base.stretch_to_own_range`), so the range its container declares
    does not decide which of its grey levels share a code. Every film is then resized by
    :func:`resize_grey`: to 16-bit codes when it holds more than 256 grey levels (a real 10- to
    16-bit film keeps its depth until it is equalised, in :mod:`cxr_anomaly.data.dataset`), to
    8-bit codes otherwise; 8-bit films give the codes they always gave.
    """
    metadata = image.metadata
    dicom = metadata.get("format") == "dicom"
    windowed = dicom and metadata.get("voi_lut", "none") != "none"
    if dicom:
        wide = int(metadata.get("bits_stored") or 16) > 8 or metadata.get("modality_lut", "none") != "none" or windowed
    else:
        wide = metadata.get("mode") in _WIDE_PILLOW_MODES
    # MONOCHROME1's inversion in float32 leaves an 8-bit film's values a rounding away from its PNG's
    inverted = dicom and (
        metadata.get("photometric_interpretation", "").strip().upper() == "MONOCHROME1"
        or metadata.get("presentation_lut_shape") == "INVERSE"
    )
    eight_bit = as_eight_bit_film(image.array) if wide or inverted else None
    if eight_bit is not None:
        logger.debug("a film of %d evenly spaced grey levels: reduced one 8-bit code per level", eight_bit.levels)
        return resize_grey(eight_bit.array, size)
    if not wide:
        return resize_grey(image.array, size)
    source = image.array if windowed else stretch_to_own_range(image.array).array
    if has_more_than_eight_bit_levels(image.array):
        # uint8 again in the rare case that resizing leaves only multiples of 257: one form per film
        return canonical_film(resize_grey(source, size, bits=16))
    return resize_grey(source, size)
