"""Films of more than 256 grey levels, kept as 16-bit codes until they are equalised.

:func:`~cxr_anomaly.io.reduce_film` gives a film of more than 256 grey levels (a real 10- to 16-bit
CR/DX film) as uint16 codes, and the cache and :func:`~cxr_anomaly.data.dataset.load_images` keep
them (:func:`~cxr_anomaly.image_base.stack_films`). Histogram equalisation then runs on the
film's 16-bit histogram, so grey levels that an 8-bit reduction would merge stay apart; the float
model input is the only reduction.

The border crop and the detail limit that come before equalisation resize such films with
Pillow's own fixed-point coefficients (:func:`resampling_matrix`, :data:`PRECISION_BITS` fraction
bits, as ``Resample.c`` computes them for 8-bit images), applied to the 16-bit values in float64
and rounded to 16 bits after each pass (:func:`resize_wide`). Every product and partial sum is an
integer below 2^53, so float64 holds it exactly in any order of summation: NumPy here and torch
on any device (:mod:`cxr_anomaly.data.resample`) give the same 16-bit films bit for bit. Pillow
itself has no such resize of 16-bit images. 8-bit films never come here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import numpy as np

from ..image_base import SIXTEEN_BIT_TOP

Resample = Literal["bilinear", "lanczos"]
PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point fraction bits for 8-bit images (Resample.c)


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


# filter and its support in source pixels at scale 1, as Pillow defines them
_FILTERS: dict[str, tuple[Callable[[float], float], float]] = {"bilinear": (_bilinear, 1.0), "lanczos": (_lanczos, 3.0)}


@lru_cache(maxsize=32)
def resampling_matrix(
    in_size: int, out_size: int, resample: Resample, start: int = 0, end: int | None = None
) -> np.ndarray:
    """Pillow's integer resampling coefficients (out_size, in_size) for one axis, as float64.

    Resizes source pixels ``start:end`` (default: all) of an axis of ``in_size`` to
    ``out_size``; each row holds :data:`PRECISION_BITS` fixed-point weights, which
    :func:`resize` applies. Follows ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of
    Pillow's ``Resample.c``.

    Raises:
        ValueError: ``resample`` is not a known filter, or the span is empty.
    """
    if resample not in _FILTERS:
        raise ValueError(f"resample={resample!r}; expected one of {sorted(_FILTERS)}")
    end = in_size if end is None else end
    if not 0 <= start < end <= in_size or out_size < 1:
        raise ValueError(f"span {start}:{end} of {in_size} pixels to {out_size}; expected 0 <= start < end <= size")
    weight, support = _FILTERS[resample]
    scale = (end - start) / out_size
    filter_scale = max(scale, 1.0)  # shrinking widens the filter: antialiasing
    support *= filter_scale
    inverse_scale = 1.0 / filter_scale  # Pillow multiplies by the reciprocal: the same last bits
    matrix = np.zeros((out_size, in_size), np.float64)
    for row in range(out_size):
        centre = start + (row + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        stop = min(int(centre + support + 0.5), in_size)
        taps = [weight((column - centre + 0.5) * inverse_scale) for column in range(first, stop)]
        total = 0.0
        for tap in taps:  # summed in order, as Pillow does (NumPy's sum reorders)
            total += tap
        weights = np.array(taps)
        if total != 0.0:
            weights = weights / total
        # to fixed point, rounding half away from zero as Pillow's casts do
        matrix[row, first:stop] = np.trunc(weights * (1 << PRECISION_BITS) + np.where(weights < 0, -0.5, 0.5))
    return matrix


def round_pass(sums: np.ndarray, top: int = SIXTEEN_BIT_TOP) -> np.ndarray:
    """Fixed-point sums -> whole values in [0, ``top``] (float64), with Pillow's rounding offset."""
    return np.clip(np.floor((sums + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)), 0.0, float(top))


def resize_wide(
    films: np.ndarray, out_size: int, resample: Resample, start: int = 0, end: int | None = None
) -> np.ndarray:
    """Resize square 16-bit films (N, S, S) to (N, out, out), as uint16.

    ``start:end`` is the square box of source pixels on both axes (Pillow's ``box``); the
    horizontal pass comes first, as in Pillow.
    """
    size = films.shape[-1]
    matrix = resampling_matrix(size, out_size, resample, start, size if end is None else end)  # (out, S)
    rows = round_pass(films.astype(np.float64) @ matrix.T)  # (N, S, out)
    return round_pass(matrix @ rows).astype(np.uint16)  # (N, out, out)


def crop_borders_wide(films: np.ndarray, fraction: float) -> np.ndarray:
    """:func:`~cxr_anomaly.data.dataset.crop_borders` of 16-bit films (N, S, S)."""
    size = films.shape[-1]
    margin = int(round(size * fraction))
    if fraction == 0.0 or margin == 0 or len(films) == 0:
        return films
    return resize_wide(films, size, "bilinear", margin, size - margin)


def limit_detail_wide(films: np.ndarray, detail_size: int) -> np.ndarray:
    """:func:`~cxr_anomaly.data.dataset.limit_detail` of 16-bit films (N, S, S)."""
    size = films.shape[-1]
    if detail_size == 0 or len(films) == 0 or detail_size >= size:
        return films
    return resize_wide(resize_wide(films, detail_size, "lanczos"), size, "bilinear")
