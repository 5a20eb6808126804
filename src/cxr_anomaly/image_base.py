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
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
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
    return (
        following + 2 <= len(head) and int.from_bytes(head[following : following + 2], "little") in _FIRST_DICOM_GROUPS
    )


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


# A film of at most this many evenly spaced grey levels, spanning at least MIN_GRID_SPAN of its level
# steps, is an 8-bit film in a wider container (upshifted, rescaled or stretched into 12 or 16 bits).
EIGHT_BIT_LEVELS = 256
MIN_GRID_SPAN = 63
# a level may sit this far (in level steps) off its grid position: 16-bit rounding of a stretch
GRID_TOLERANCE = 0.25
MAX_GRID_SPAN = 65_535  # a 16-bit film's levels
_GRID_SAMPLE = 65_536


@dataclass(frozen=True)
class EightBitFilm:
    """A film of an 8-bit film's grey levels, put back on the 8-bit grid by :func:`as_eight_bit_film`.

    Attributes:
        array: float32 (H, W): each pixel's 8-bit code / 255, as an 8-bit PNG reads.
        levels: how many distinct values the film holds.
        step: the spacing of those values in the film as it came (in [0, 1] units).
        first_code: the 8-bit code given to the film's lowest value.
    """

    array: np.ndarray
    levels: int
    step: float
    first_code: int


def as_eight_bit_film(array: np.ndarray) -> EightBitFilm | None:
    """A grey [0, 1] film that holds an 8-bit film's levels, as that 8-bit film; None for any other film.

    A film qualifies when it holds at most :data:`EIGHT_BIT_LEVELS` distinct values that lie on an
    evenly spaced grid (within :data:`GRID_TOLERANCE` of a step) spanning at least
    :data:`MIN_GRID_SPAN` steps: an 8-bit film stored as 12-bit (x16), as 16-bit (x257, or stretched
    to the full range), inverted, through a Modality LUT, a window or a VOI LUT. Its levels become
    consecutive 8-bit codes, as in its 8-bit PNG (up to a constant offset where its own zero was
    lost, as in a stretch to the full range); left as they came, resizing and the fixed 8-bit grid
    would merge or split levels, and move the histogram-equalised film. Films with more levels
    (real 10- to 16-bit films) and films of a few levels (masks, test patterns) give None.
    """
    flat = array.reshape(-1)
    # decided on a sample first: a real >8-bit film has thousands of levels there
    if flat.size == 0 or np.unique(flat[:: max(1, flat.size // _GRID_SAMPLE)]).size > EIGHT_BIT_LEVELS:
        return None
    grid = _level_grid(flat, EIGHT_BIT_LEVELS - 1)
    if grid is None or grid.span < MIN_GRID_SPAN:
        return None
    codes = grid.codes
    levels = int(np.count_nonzero(np.bincount(codes.astype(np.uint8), minlength=grid.span + 1)))
    if levels <= MIN_GRID_SPAN:
        return None
    first_code = min(max(int(np.rint(grid.origin / grid.step)), 0), EIGHT_BIT_LEVELS - 1 - grid.span)
    # code / 255 in float32, as Pillow's 8-bit pixels become floats in cxr_anomaly.io.pil_to_grey
    codes += np.float32(first_code)
    codes /= np.float32(255.0)
    return EightBitFilm(codes.reshape(array.shape), levels, grid.step, first_code)


@dataclass(frozen=True)
class _LevelGrid:
    """Where each pixel of a film of evenly spaced levels sits: ``value = origin + step * code``.

    Attributes:
        origin: the film's lowest value.
        step: the spacing of its levels.
        codes: float32 (pixels,), each pixel's whole number of steps above ``origin``.
        span: the largest code.
    """

    origin: float
    step: float
    codes: np.ndarray
    span: int


def _grid_step(offsets: np.ndarray) -> float | None:
    """The spacing of sorted level offsets from the lowest level (0 first), by least squares.

    Fitted on the low levels first and on four times as many levels each round, so that rounding in
    the first estimate cannot put a high level on the wrong step.
    """
    gaps = np.diff(offsets)
    if gaps.size == 0 or gaps.min() <= 0.0:
        return None
    step = float(gaps[gaps < 1.5 * gaps.min()].mean())  # gaps of one level: their mean averages out rounding
    limit = 64.0
    while True:
        used = offsets[offsets <= limit * step]
        indices = np.rint(used / step)
        weight = float(indices @ indices)
        if weight > 0.0:  # 0 when no level but the lowest lies this close: widen, never divide by it
            step = float(used @ indices) / weight
        if limit * step >= offsets[-1]:
            return step
        limit *= 4.0


def _level_grid(flat: np.ndarray, max_span: int) -> _LevelGrid | None:
    """The grid of a flat film whose values are evenly spaced levels (within :data:`GRID_TOLERANCE`
    of a step) spanning at most ``max_span`` steps; None for any other film.

    The spacing is found on a sample of the levels and then checked on every pixel: no sort of the
    whole film.
    """
    sample = np.unique(flat[:: max(1, flat.size // _GRID_SAMPLE)])
    if sample.size < 2:
        return None
    origin = float(flat.min())
    step = _grid_step(sample.astype(np.float64) - origin)
    if step is None or (float(flat.max()) - origin) / step > max_span + 0.5:
        return None
    # float32 is ample: positions below 2**16 are within 0.01 of a step of their float64 value
    positions = flat.astype(np.float32)  # a copy, worked on in place
    positions -= np.float32(origin)
    positions /= np.float32(step)
    codes = np.rint(positions)
    positions -= codes
    if float(np.abs(positions).max()) > GRID_TOLERANCE:
        return None
    return _LevelGrid(origin, step, codes, int(codes.max()))


def stretch_to_own_range(array: np.ndarray) -> RangeStretch:
    """A grey [0, 1] film mapped linearly onto [0, 1] by its own minimum and maximum.

    For a film of more than 8 bits without a window, before it is reduced to 8-bit codes: the codes
    then depend on the film alone, not on the range its container declares (12 bits, 16 bits, a
    rescale to the full range, a Modality LUT's range, MONOCHROME1), so every such encoding of one
    film gives the same codes. A film of evenly spaced levels (up to :data:`MAX_GRID_SPAN` steps) is
    mapped level by level, which also undoes the rounding of a stretch to 16 bits. ``used_fraction``
    is None when the film already spans [0, 1] or is flat.
    """
    if array.size == 0:
        return RangeStretch(array, None)
    low, high = float(array.min()), float(array.max())
    span = high - low
    if span <= 0.0:
        return RangeStretch(array, None)
    grid = _level_grid(array.reshape(-1), MAX_GRID_SPAN)
    if grid is not None and grid.span > 0:
        # evenly spaced levels (stored integers through a linear rescale): code / span, exactly the
        # same numbers whatever container range or rounding to 16 bits the levels went through
        codes = grid.codes
        codes /= np.float32(grid.span)
        return RangeStretch(codes.reshape(array.shape), span if span < 1.0 else None)
    if low == 0.0 and high == 1.0:
        return RangeStretch(array, None)
    stretched = (array.astype(np.float32) - np.float32(low)) / np.float32(span)
    return RangeStretch(np.clip(stretched, 0.0, 1.0, out=stretched), span)


# A film of more than 8 bits that holds more than 256 grey levels keeps 16 bits through resizing and
# the cache: 16-bit code = rint(65535 x) of its [0, 1] value. An 8-bit code v is the 16-bit value 257 v.
SIXTEEN_BIT_TOP = 65_535
EIGHT_TO_SIXTEEN = 257
FILM_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def has_more_than_eight_bit_levels(array: np.ndarray) -> bool:
    """Whether a grey film holds more than :data:`EIGHT_BIT_LEVELS` distinct values.

    Decided on a sample first (a real 10- to 16-bit film has thousands of levels there); only a film
    of few levels in the sample is counted in full.
    """
    flat = array.reshape(-1)
    if flat.size <= EIGHT_BIT_LEVELS:
        return False
    if np.unique(flat[:: max(1, flat.size // _GRID_SAMPLE)]).size > EIGHT_BIT_LEVELS:
        return True
    return np.unique(flat).size > EIGHT_BIT_LEVELS


def _check_film_dtype(films: np.ndarray) -> None:
    if films.dtype not in FILM_DTYPES:
        raise TypeError(f"films of dtype {films.dtype}; expected uint8 (8-bit codes) or uint16 (16-bit codes)")


def eight_bit_rows(films: np.ndarray) -> np.ndarray:
    """Which films of a stack (N, S, S) are 8-bit films: bool (N,).

    Every film of a uint8 stack is; a film of a uint16 stack is when every value is a multiple of
    :data:`EIGHT_TO_SIXTEEN` (an 8-bit film promoted by :func:`stack_films`).
    """
    _check_film_dtype(films)
    if films.dtype == np.uint8:
        return np.ones(len(films), dtype=bool)
    return ~np.any(films.reshape(len(films), -1) % EIGHT_TO_SIXTEEN, axis=1)


def canonical_film(film: np.ndarray) -> np.ndarray:
    """One film's codes in their one form: uint8 for an 8-bit film (also one stored as 16-bit
    multiples of 257), uint16 only for a film of more levels."""
    _check_film_dtype(film)
    if film.dtype == np.uint8 or np.any(film % EIGHT_TO_SIXTEEN):
        return film
    return (film // EIGHT_TO_SIXTEEN).astype(np.uint8)


def stack_films(films: list[np.ndarray]) -> np.ndarray:
    """Stack films of equal shape into (N, S, S): uint8 when every film is 8-bit, else uint16 with
    each 8-bit code v stored as 257 v (a plain ``np.stack`` would keep v and darken those films)."""
    for film in films:
        _check_film_dtype(film)
    if all(film.dtype == np.uint8 for film in films):
        return np.stack(films)
    return np.stack(
        [film.astype(np.uint16) * np.uint16(EIGHT_TO_SIXTEEN) if film.dtype == np.uint8 else film for film in films]
    )


def display_codes(film: np.ndarray) -> np.ndarray:
    """A film's codes as uint8 for a picture: 16-bit codes rounded to 8 bits (display only; the
    detector reads the 16-bit codes)."""
    _check_film_dtype(film)
    if film.dtype == np.uint8:
        return film
    return np.rint(film.astype(np.float32) / np.float32(EIGHT_TO_SIXTEEN)).astype(np.uint8)
