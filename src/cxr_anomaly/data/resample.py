"""The per-film preprocessing of :class:`~cxr_anomaly.config.DataConfig` as tensor operations.

:func:`~cxr_anomaly.data.dataset.preprocess_films` crops, limits the detail and equalises each
film with Pillow and NumPy on the CPU. On a GPU machine that step dominated the features
detector's scoring time (see docs/results.md#speed-on-a-gpu), so :func:`preprocess_on` runs it
where the model runs, as batched matrix products, and gives the same pixels bit for bit:

- Pillow resizes a uint8 film in two separable passes, horizontal then vertical. Each pass
  multiplies by a matrix of fixed-point coefficients (:data:`PRECISION_BITS` fraction bits,
  computed in double precision and rounded) and rounds the result to uint8.
  :func:`resampling_matrix` (in :mod:`cxr_anomaly.data.wide`) computes those integer
  coefficients as Pillow's ``Resample.c`` does, and :func:`resize` applies them in float64.
  Every product and partial sum there is an integer below 2^53, so float64 holds it exactly in
  any order of summation: the same uint8 film on any device.
- Histogram equalisation is the float32 arithmetic of
  :func:`~cxr_anomaly.data.dataset.apply_intensity`, operation for operation.
- ``per_image`` standardisation sums in another order than NumPy, so it agrees to float32
  rounding (about 1e-6), not bit for bit.
- Films of more than 256 grey levels (uint16 codes, :mod:`cxr_anomaly.data.wide`) go through
  :func:`preprocess_wide_tensor`: the same matrices rounded to 16 bits after each pass, and
  equalisation on the 65536-bin histogram, as the NumPy path computes them.

On a CPU Pillow is faster (``docs/notebook/research/preprocess_paths.py``), so
:func:`preprocess_on` keeps :func:`~cxr_anomaly.data.dataset.preprocess_films` there.
torch is imported at module level here: this module is only loaded by the models.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..config import DataConfig
from ..image_base import EIGHT_TO_SIXTEEN, SIXTEEN_BIT_TOP, eight_bit_rows
from ..inference import to_device
from .dataset import preprocess_films
from .wide import PRECISION_BITS, Resample, resampling_matrix

__all__ = [
    "PRECISION_BITS",
    "Resample",
    "apply_intensity",
    "crop_borders",
    "limit_detail",
    "preprocess_on",
    "preprocess_tensor",
    "preprocess_wide_tensor",
    "resampling_matrix",
    "resize",
]

EIGHT_BIT_TOP = 255


@lru_cache(maxsize=64)
def _device_matrix(in_size: int, out_size: int, resample: Resample, start: int, end: int, device: str) -> torch.Tensor:
    return torch.from_numpy(resampling_matrix(in_size, out_size, resample, start, end)).to(device)


@lru_cache(maxsize=8)
def _device_unit_values(device: str, top: int = EIGHT_BIT_TOP) -> torch.Tensor:
    # as apply_intensity divides: code / 255.0 (8-bit) or / 65535.0 (16-bit) in float32
    return torch.from_numpy(np.arange(top + 1, dtype=np.float32) / float(top)).to(device)


def _round_pass(sums: torch.Tensor, top: int = EIGHT_BIT_TOP) -> torch.Tensor:
    """Fixed-point sums -> whole values in [0, ``top``] (float64): Pillow's ``clip8`` after its
    rounding offset for 8-bit films, :func:`~cxr_anomaly.data.wide.round_pass` for 16-bit ones."""
    return torch.floor((sums + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)).clamp_(0.0, float(top))


def resize(
    films: torch.Tensor,
    out_size: int,
    resample: Resample,
    start: int = 0,
    end: int | None = None,
    *,
    top: int = EIGHT_BIT_TOP,
) -> torch.Tensor:
    """Resize square films (N, S, S) of whole values in [0, ``top``], float64, as Pillow would
    (``top`` 255) or as :func:`~cxr_anomaly.data.wide.resize_wide` does (``top`` 65535);
    (N, out, out) float64.

    ``start:end`` is the square box of source pixels on both axes (Pillow's ``box``).
    """
    size = films.shape[-1]
    end = size if end is None else end
    matrix = _device_matrix(size, out_size, resample, start, end, str(films.device))  # (out, S)
    rows = _round_pass(films @ matrix.T, top)  # horizontal pass first, as Pillow: (N, S, out)
    return _round_pass(matrix @ rows, top)  # then vertical: (N, out, out)


def crop_borders(films: torch.Tensor, fraction: float, *, top: int = EIGHT_BIT_TOP) -> torch.Tensor:
    """:func:`~cxr_anomaly.data.dataset.crop_borders` on float64 films (N, S, S) of values up to ``top``."""
    size = films.shape[-1]
    margin = int(round(size * fraction))
    if fraction == 0.0 or margin == 0 or len(films) == 0:
        return films
    return resize(films, size, "bilinear", margin, size - margin, top=top)


def limit_detail(films: torch.Tensor, detail_size: int, *, top: int = EIGHT_BIT_TOP) -> torch.Tensor:
    """:func:`~cxr_anomaly.data.dataset.limit_detail` on float64 films (N, S, S) of values up to ``top``."""
    size = films.shape[-1]
    if detail_size == 0 or len(films) == 0 or detail_size >= size:
        return films
    return resize(resize(films, detail_size, "lanczos", top=top), size, "bilinear", top=top)


def apply_intensity(films: torch.Tensor, mode: str, *, top: int = EIGHT_BIT_TOP) -> torch.Tensor:
    """:func:`~cxr_anomaly.data.dataset.apply_intensity` on integer films (N, H, W) of codes up to
    ``top`` (255: 8-bit, 65535: 16-bit): float32 in [0, 1]."""
    # through NumPy's table of the quotients: CUDA divides by a scalar as a product with its
    # reciprocal, one ulp off for some values
    values = films.long()
    images = _device_unit_values(str(films.device), top)[values]
    if mode == "none":
        return images
    if mode == "per_image":
        mean = images.mean(dim=(1, 2), keepdim=True)
        std = images.std(dim=(1, 2), keepdim=True, correction=0) + 1e-6
        return ((images - mean) / std / 6.0 + 0.5).clamp_(0.0, 1.0)
    if mode == "equalize":
        count, levels = len(films), top + 1
        values = values.reshape(count, films.shape[1] * films.shape[2])  # (N, H*W); -1 fails on N = 0
        offsets = levels * torch.arange(count, device=films.device)[:, None]  # one histogram per film
        histograms = torch.bincount((values + offsets).reshape(-1), minlength=levels * count)
        cdf = histograms.reshape(count, levels).cumsum(dim=1).float()  # exact: counts stay below 2^24
        lowest = cdf.gather(1, values.min(dim=1, keepdim=True).values)  # (N, 1)
        cdf = (cdf - lowest) / (cdf[:, -1:] - lowest).clamp_min(1.0)
        return cdf.gather(1, values).clamp_(0.0, 1.0).reshape(films.shape)
    raise ValueError(f"intensity mode {mode!r}; expected 'none', 'per_image' or 'equalize'")


def preprocess_tensor(pixels: torch.Tensor, data_config: DataConfig) -> torch.Tensor:
    """:func:`~cxr_anomaly.data.dataset.preprocess_films` on a uint8 tensor (N, S, S) of 8-bit
    films on any device.

    Returns float32 (N, S, S) in [0, 1] on the same device: the same values as the Pillow path
    (``per_image``: to float32 rounding).

    Raises:
        TypeError: ``pixels`` is not uint8 (16-bit films go through :func:`preprocess_wide_tensor`).
    """
    if pixels.dtype != torch.uint8:
        raise TypeError(f"pixels of dtype {pixels.dtype}; expected torch.uint8 (preprocess_wide_tensor takes 16-bit)")
    films = pixels.double()
    films = crop_borders(films, data_config.border_crop)
    films = limit_detail(films, data_config.detail_size)
    return apply_intensity(films.to(torch.uint8), data_config.intensity)


def preprocess_wide_tensor(pixels: torch.Tensor, data_config: DataConfig) -> torch.Tensor:
    """:func:`~cxr_anomaly.data.dataset.preprocess_films` of films of more than 256 grey levels:
    16-bit codes (N, S, S) in an integer tensor (int32: torch has little uint16 arithmetic) on any
    device. Float32 (N, S, S) in [0, 1], the values of the NumPy path (``per_image``: to float32
    rounding); equalised on the 16-bit histogram."""
    films = pixels.double()
    films = crop_borders(films, data_config.border_crop, top=SIXTEEN_BIT_TOP)
    films = limit_detail(films, data_config.detail_size, top=SIXTEEN_BIT_TOP)
    return apply_intensity(films.to(torch.int32), data_config.intensity, top=SIXTEEN_BIT_TOP)


def preprocess_on(
    pixels: np.ndarray, data_config: DataConfig, device: torch.device | str = "cpu", *, threads: int = 1
) -> torch.Tensor:
    """Films (N, S, S), uint8 or uint16 (:func:`~cxr_anomaly.image_base.stack_films`) -> float32
    (N, S, S) in [0, 1] on ``device``, preprocessed there.

    On a CPU by :func:`~cxr_anomaly.data.dataset.preprocess_films` in ``threads`` threads (the
    faster path there); elsewhere the 8-bit films are copied to the device as uint8 (a quarter of
    the bytes of the floats) and preprocessed by :func:`preprocess_tensor`, the others by
    :func:`preprocess_wide_tensor`.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return torch.from_numpy(preprocess_films(pixels, data_config, threads=threads))
    if pixels.dtype == np.uint8:
        return preprocess_tensor(to_device(torch.from_numpy(np.ascontiguousarray(pixels)), device), data_config)
    eight_bit = eight_bit_rows(pixels)
    out = torch.empty(pixels.shape, dtype=torch.float32, device=device)
    if eight_bit.any():
        codes = (pixels[eight_bit] // EIGHT_TO_SIXTEEN).astype(np.uint8)
        out[torch.from_numpy(eight_bit).to(device)] = preprocess_tensor(
            to_device(torch.from_numpy(codes), device), data_config
        )
    if not eight_bit.all():
        wide = pixels[~eight_bit].astype(np.int32)
        out[torch.from_numpy(~eight_bit).to(device)] = preprocess_wide_tensor(
            to_device(torch.from_numpy(wide), device), data_config
        )
    return out
