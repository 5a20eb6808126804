"""What the image readers share: the decoded image, format sniffing, the pixel limit.

:mod:`cxr_anomaly.io` (PNG, JPEG, BMP, TIFF, and the dispatch by format) and
:mod:`cxr_anomaly.dicom` both build on this module, so neither imports the other's internals.
Nothing here needs Pillow or pydicom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
# A film with more than 8 bits whose values span less than this fraction of the range its format
# declares is stretched to its own minimum and maximum: stored as 8 bits (the cache), it would
# otherwise keep fewer than 64 grey levels (12-bit data declared as 16 bits keeps 17).
NARROW_RANGE_FRACTION = 0.25


@dataclass(frozen=True)
class ImageRead:
    """A decoded image.

    Attributes:
        array: float32 array of shape (height, width) in [0, 1]; higher is denser (whiter).
        metadata: format, original size and mode, and for DICOM the non-identifying tags used.
    """

    array: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


def sniff_format(head: bytes) -> str | None:
    """Return ``"png"``, ``"jpeg"``, ``"dicom"``, ``"bmp"``, ``"tiff"`` or None from leading bytes.

    ``head`` should hold the first 132 bytes. DICOM is recognised by the ``DICM`` prefix after
    the 128-byte preamble, or, for files written without preamble and prefix, by a first data
    element of group 0002 (file meta) or 0008 (identification) in little endian byte order.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if _starts_with_dicom_element(head):
        return "dicom"
    return None


def is_dicom_file(path: str | Path) -> bool:
    """True when the file's first bytes say DICOM (the extension is not trusted); False for a
    file that cannot be opened, whose error the reader reports."""
    try:
        with Path(path).open("rb") as handle:
            return sniff_format(handle.read(132)) == "dicom"
    except OSError:
        return False


# Value representations of DICOM PS3.5 table 6.2-1, as they appear in explicit VR encodings.
_DICOM_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
                       b"TM UC UI UL UN UR US UT UV".split())
_FIRST_DICOM_GROUPS = (0x0002, 0x0008)


def _starts_with_dicom_element(head: bytes) -> bool:
    """Whether ``head`` starts with a DICOM data element of group 0002 or 0008 (no preamble).

    Explicit VR: tag, then a known two-letter VR. Implicit VR: tag, then a 4-byte length, and
    the next element (when it lies within ``head``) is of the same groups; both checks keep
    ordinary files that happen to start with 08 00 or 02 00 out.
    """
    if len(head) < 8 or int.from_bytes(head[0:2], "little") not in _FIRST_DICOM_GROUPS:
        return False
    if head[4:6] in _DICOM_VRS:
        return True
    following = 8 + int.from_bytes(head[4:8], "little")
    return following + 2 <= len(head) and int.from_bytes(head[following:following + 2], "little") \
        in _FIRST_DICOM_GROUPS


@dataclass(frozen=True)
class RangeStretch:
    """A grey image after :func:`stretch_narrow_range`.

    Attributes:
        array: the image in [0, 1], stretched or as it came.
        used_fraction: the fraction of [0, 1] the input spanned when it was stretched; None when
            it was left as it came.
    """

    array: np.ndarray
    used_fraction: float | None


def stretch_narrow_range(array: np.ndarray, levels: int) -> RangeStretch:
    """Stretch a grey [0, 1] image of ``levels`` possible values to its own range when it is narrow.

    Only images of more than 256 levels whose values span less than
    :data:`NARROW_RANGE_FRACTION` of [0, 1] are stretched (12-bit data in a 16-bit PNG, or a
    DICOM without a window whose ``BitsStored`` overstates the data): the 8-bit copy every film
    is stored as would keep too few grey levels of them. Everything else is left alone, so
    exposure differences between ordinary films survive.
    """
    if levels <= 256 or array.size == 0:
        return RangeStretch(array, None)
    low, high = float(array.min()), float(array.max())
    span = high - low
    if span <= 0.0 or span >= NARROW_RANGE_FRACTION:
        return RangeStretch(array, None)
    return RangeStretch((array - low) / span, span)

