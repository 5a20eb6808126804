"""The per-film preprocessing of :class:`~cxr_anomaly.config.DataConfig` as tensor operations.

:func:`~cxr_anomaly.data.dataset.preprocess_films` crops, limits the detail and equalises each
film with Pillow and NumPy on the CPU. On a GPU machine that step dominated the features
detector's scoring time (see docs/results.md#speed-on-a-gpu), so :func:`preprocess_on` runs it
where the model runs, as batched matrix products, and gives the same pixels bit for bit:

- Pillow resizes a uint8 film in two separable passes, horizontal then vertical. Each pass
  multiplies by a matrix of fixed-point coefficients (:data:`PRECISION_BITS` fraction bits,
  computed in double precision and rounded) and rounds the result to uint8.
  :func:`resampling_matrix` computes those integer coefficients as Pillow's ``Resample.c``
  does, and :func:`resize` applies them in float64. Every product and partial sum there is an
  integer below 2^53, so float64 holds it exactly in any order of summation: the same uint8
  film on any device.
- Histogram equalisation is the float32 arithmetic of
  :func:`~cxr_anomaly.data.dataset.apply_intensity`, operation for operation.
- ``per_image`` standardisation sums in another order than NumPy, so it agrees to float32
  rounding (about 1e-6), not bit for bit.

On a CPU Pillow is faster (``docs/notebook/research/preprocess_paths.py``), so
:func:`preprocess_on` keeps :func:`~cxr_anomaly.data.dataset.preprocess_films` there.
torch is imported at module level here: this module is only loaded by the models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from ..config import DataConfig
from ..inference import to_device
from .dataset import preprocess_films

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


@lru_cache(maxsize=64)
def _device_matrix(in_size: int, out_size: int, resample: Resample, start: int, end: int, device: str) -> torch.Tensor:
    return torch.from_numpy(resampling_matrix(in_size, out_size, resample, start, end)).to(device)


@lru_cache(maxsize=8)
def _device_unit_values(device: str) -> torch.Tensor:
    return torch.from_numpy(np.arange(256, dtype=np.float32) / 255.0).to(device)  # as apply_intensity divides


def _round_pass(sums: torch.Tensor) -> torch.Tensor:
    """Fixed-point sums -> uint8 values (as float64): Pillow's ``clip8`` after its rounding offset."""
    return torch.floor((sums + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)).clamp_(0.0, 255.0)


def resize(
    films: torch.Tensor, out_size: int, resample: Resample, start: int = 0, end: int | None = None
) -> torch.Tensor:
    """Resize square uint8-valued films (N, S, S), float64, as Pillow would; (N, out, out) float64.

    ``start:end`` is the square box of source pixels on both axes (Pillow's ``box``).
    """
    size = films.shape[-1]
    end = size if end is None else end
    matrix = _device_matrix(size, out_size, resample, start, end, str(films.device))  # (out, S)
    rows = _round_pass(films @ matrix.T)  # horizontal pass first, as Pillow: (N, S, out)
    return _round_pass(matrix @ rows)  # then vertical: (N, out, out)


def crop_borders(films: torch.Tensor, fraction: float) -> torch.Tensor:
    """:func:`~cxr_anomaly.data.dataset.crop_borders` on float64 uint8-valued films (N, S, S)."""
    size = films.shape[-1]
    margin = int(round(size * fraction))
    if fraction == 0.0 or margin == 0 or len(films) == 0:
        return films
    return resize(films, size, "bilinear", margin, size - margin)


def limit_detail(films: torch.Tensor, detail_size: int) -> torch.Tensor:
    """:func:`~cxr_anomaly.data.dataset.limit_detail` on float64 uint8-valued films (N, S, S)."""
    size = films.shape[-1]
    if detail_size == 0 or len(films) == 0 or detail_size >= size:
        return films
    return resize(resize(films, detail_size, "lanczos"), size, "bilinear")


def apply_intensity(films: torch.Tensor, mode: str) -> torch.Tensor:
    """:func:`~cxr_anomaly.data.dataset.apply_intensity` on uint8 films (N, H, W): float32 in [0, 1]."""
    # through NumPy's table of the 256 quotients: CUDA divides by a scalar as a product with its
    # reciprocal, one ulp off for some values
    images = _device_unit_values(str(films.device))[films.long()]
    if mode == "none":
        return images
    if mode == "per_image":
        mean = images.mean(dim=(1, 2), keepdim=True)
        std = images.std(dim=(1, 2), keepdim=True, correction=0) + 1e-6
        return ((images - mean) / std / 6.0 + 0.5).clamp_(0.0, 1.0)
    if mode == "equalize":
        count = len(films)
        values = films.reshape(count, films.shape[1] * films.shape[2]).long()  # (N, H*W); -1 fails on N = 0
        offsets = 256 * torch.arange(count, device=films.device)[:, None]  # one histogram per film
        histograms = torch.bincount((values + offsets).reshape(-1), minlength=256 * count).reshape(count, 256)
        cdf = histograms.cumsum(dim=1).float()  # exact: counts stay below 2^24
        lowest = cdf.gather(1, values.min(dim=1, keepdim=True).values)  # (N, 1)
        cdf = (cdf - lowest) / (cdf[:, -1:] - lowest).clamp_min(1.0)
        return cdf.gather(1, values).clamp_(0.0, 1.0).reshape(films.shape)
    raise ValueError(f"intensity mode {mode!r}; expected 'none', 'per_image' or 'equalize'")


def preprocess_tensor(pixels: torch.Tensor, data_config: DataConfig) -> torch.Tensor:
    """:func:`~cxr_anomaly.data.dataset.preprocess_films` on a uint8 tensor (N, S, S) on any device.

    Returns float32 (N, S, S) in [0, 1] on the same device: the same values as the Pillow path
    (``per_image``: to float32 rounding).
    """
    films = pixels.double()
    films = crop_borders(films, data_config.border_crop)
    films = limit_detail(films, data_config.detail_size)
    return apply_intensity(films.to(torch.uint8), data_config.intensity)


def preprocess_on(
    pixels: np.ndarray, data_config: DataConfig, device: torch.device | str = "cpu", *, threads: int = 1
) -> torch.Tensor:
    """uint8 films (N, S, S) -> float32 (N, S, S) in [0, 1] on ``device``, preprocessed there.

    On a CPU by :func:`~cxr_anomaly.data.dataset.preprocess_films` in ``threads`` threads (the
    faster path there); elsewhere the uint8 films are copied to the device (a quarter of the
    bytes of the floats) and preprocessed by :func:`preprocess_tensor`.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.from_numpy(preprocess_films(pixels, data_config, threads=threads))
    return preprocess_tensor(to_device(torch.from_numpy(np.ascontiguousarray(pixels)), device), data_config)
