"""Turn a manifest into model-ready pixels.

Images are decoded, converted to grey, resized with antialiasing to ``image_size`` and stored
as uint8 codes (uint16 for films of more than 256 grey levels, :mod:`cxr_anomaly.data.wide`);
:func:`to_model_tensor` maps them to [-1, 1] floats, applying the per-film intensity
normalisation of :class:`~cxr_anomaly.config.DataConfig`. Bad files either stop the run with an
error naming the file (``on_bad_file="error"``) or are skipped and reported
(``on_bad_file="skip"``); they are never dropped silently.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import InputFileError
from ..image_base import EIGHT_TO_SIXTEEN, SIXTEEN_BIT_TOP, eight_bit_rows, stack_films
from .cache import decode_many
from .wide import crop_borders_wide, limit_detail_wide

if TYPE_CHECKING:  # torch is imported lazily: decoding workers must start without it
    import torch

logger = logging.getLogger(__name__)

OnBadFile = Literal["error", "skip"]
PARALLEL_FROM_FILMS = 16  # smaller batches are preprocessed in the calling thread


@dataclass(frozen=True)
class SkippedFile:
    """A file left out under ``on_bad_file="skip"``, with the reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class LoadedImages:
    """Pixels for the rows of a manifest that could be read.

    Attributes:
        pixels: (N, image_size, image_size) codes: uint8, or uint16 when a film has more than 256
            grey levels (every 8-bit film v then held as 257 v, :func:`~cxr_anomaly.image_base.stack_films`).
        manifest: the N manifest rows that ``pixels`` belong to, in the same order.
        skipped: files that could not be read (only under ``on_bad_file="skip"``).
    """

    pixels: np.ndarray
    manifest: pd.DataFrame
    skipped: list[SkippedFile] = field(default_factory=list)


def load_images(
    manifest: pd.DataFrame,
    data_config: DataConfig,
    *,
    on_bad_file: OnBadFile = "error",
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> LoadedImages:
    """Load the pixels of every manifest row.

    Args:
        manifest: a table with a ``path`` column (see :mod:`cxr_anomaly.data.manifest`).
        data_config: image size and decoding limits.
        on_bad_file: ``"error"`` raises on the first unreadable file; ``"skip"`` leaves it out
            and lists it in ``LoadedImages.skipped`` (and logs a warning for each).
        cache_dir: folder of the preprocessing cache; None decodes without caching.
        workers: decoding threads (None: one per core).
        progress: show a progress bar.

    Raises:
        InputFileError: a file cannot be read and ``on_bad_file`` is ``"error"``.
    """
    if on_bad_file not in ("error", "skip"):
        raise ValueError(f"on_bad_file={on_bad_file!r}; expected 'error' or 'skip'")
    paths = manifest["path"].astype(str).tolist()
    decoded = decode_many(paths, data_config, cache_dir=cache_dir, workers=workers, progress=progress)
    keep: list[int] = []
    skipped: list[SkippedFile] = []
    for index, (path, result) in enumerate(zip(paths, decoded)):
        if isinstance(result, InputFileError):
            if on_bad_file == "error":
                raise result
            logger.warning("skipping %s: %s", path, result.reason)
            skipped.append(SkippedFile(path, result.reason))
        else:
            keep.append(index)
    size = data_config.image_size
    pixels = stack_films([decoded[i] for i in keep]) if keep else np.zeros((0, size, size), dtype=np.uint8)
    return LoadedImages(pixels, manifest.iloc[keep].reset_index(drop=True), skipped)


def apply_intensity(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Per-film intensity normalisation of films (N, H, W), returning float32 in [0, 1].

    uint8 films are 8-bit codes (``code / 255``), uint16 films 16-bit codes (``code / 65535``;
    an 8-bit film held as 257 v gives exactly its uint8 values). ``none`` keeps the pixels;
    ``per_image`` stretches each film to zero mean and unit variance, then maps ±3 std to [0, 1];
    ``equalize`` applies histogram equalisation per film, on the 256- or 65536-bin histogram.
    Both remove the exposure differences that separate portable AP films from PA ones.
    """
    if pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"films of dtype {pixels.dtype}; expected uint8 or uint16 codes")
    top = 255 if pixels.dtype == np.uint8 else SIXTEEN_BIT_TOP
    images = pixels.astype(np.float32) / float(top)
    if mode == "none":
        return images
    if mode == "per_image":
        mean = images.mean(axis=(1, 2), keepdims=True)
        std = images.std(axis=(1, 2), keepdims=True) + 1e-6
        return np.clip((images - mean) / std / 6.0 + 0.5, 0.0, 1.0)
    if mode == "equalize":
        flat = pixels.reshape(len(pixels), pixels.shape[1] * pixels.shape[2])  # not -1: fails when N = 0
        out = np.empty(flat.shape, dtype=np.float32)
        for row, values in enumerate(flat):
            histogram = np.bincount(values, minlength=top + 1)
            cdf = np.cumsum(histogram).astype(np.float32)
            cdf = (cdf - cdf[values.min()]) / max(cdf[-1] - cdf[values.min()], 1.0)
            out[row] = np.clip(cdf[values], 0.0, 1.0)
        return out.reshape(pixels.shape)
    raise ValueError(f"intensity mode {mode!r}; expected 'none', 'per_image' or 'equalize'")


def _check_eight_bit(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8:
        raise TypeError(f"films of dtype {pixels.dtype}; Pillow's 8-bit resize takes uint8 (16-bit: data.wide)")


def crop_borders(pixels: np.ndarray, fraction: float) -> np.ndarray:
    """Cut ``fraction`` of each side from uint8 films (N, S, S) and resize back to (N, S, S).

    Exporters differ most at the edges (burnt-in labels, collimation, black frames); the lungs
    sit in the middle of a chest film.
    """
    _check_eight_bit(pixels)
    if fraction == 0.0 or len(pixels) == 0:
        return pixels
    from PIL import Image

    size = pixels.shape[-1]
    margin = int(round(size * fraction))
    if margin == 0:
        return pixels
    box = (margin, margin, size - margin, size - margin)
    return np.stack(
        [np.asarray(Image.fromarray(film).resize((size, size), Image.Resampling.BILINEAR, box=box)) for film in pixels]
    )


def limit_detail(pixels: np.ndarray, detail_size: int) -> np.ndarray:
    """Shrink uint8 films (N, S, S) to ``detail_size`` and back, so every source has that detail.

    A 64 px export upsampled to 224 px is blurrier than a 224 px export; without this a detector
    of fine texture flags how a film was resized, not what it shows.
    """
    _check_eight_bit(pixels)
    if detail_size == 0 or len(pixels) == 0 or detail_size >= pixels.shape[-1]:
        return pixels
    from PIL import Image

    size = pixels.shape[-1]
    return np.stack(
        [
            np.asarray(
                Image.fromarray(film)
                .resize((detail_size, detail_size), Image.Resampling.LANCZOS)
                .resize((size, size), Image.Resampling.BILINEAR)
            )
            for film in pixels
        ]
    )


def preprocess_films(pixels: np.ndarray, data_config: DataConfig, *, threads: int = 1) -> np.ndarray:
    """The per-film preprocessing of ``data_config``: border crop, detail limit, intensity.

    (N, S, S) codes -> float32 (N, S, S) in [0, 1]; the same at fitting and scoring time. uint8
    films are cropped and resized by Pillow, as they always were. In a uint16 stack the 8-bit films
    (257 v) take that same path; the films of more than 256 grey levels are cropped and resized at
    16 bits (:mod:`cxr_anomaly.data.wide`) and equalised on their 16-bit histogram, so the float
    result is their first reduction.

    With ``threads`` > 1 a batch of at least :data:`PARALLEL_FROM_FILMS` films is split over that
    many threads. Pillow's resizing and NumPy's array work release the GIL, so the parts run side
    by side. Every film comes out the same as in one thread. On a GPU the detector preprocesses on
    the device instead (:mod:`cxr_anomaly.data.resample`; see docs/results.md#speed-on-a-gpu).
    """
    if threads <= 1 or len(pixels) < PARALLEL_FROM_FILMS:
        return _preprocess_in_this_thread(pixels, data_config)
    chunks = [chunk for chunk in np.array_split(pixels, threads) if len(chunk)]  # views, in order
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        parts = list(pool.map(lambda chunk: _preprocess_in_this_thread(chunk, data_config), chunks))
    return np.concatenate(parts)


def _preprocess_in_this_thread(pixels: np.ndarray, data_config: DataConfig) -> np.ndarray:
    if pixels.dtype == np.uint16:
        return _preprocess_sixteen_bit(pixels, data_config)
    if pixels.dtype != np.uint8:
        raise TypeError(f"films of dtype {pixels.dtype}; expected uint8 or uint16 codes")
    pixels = crop_borders(pixels, data_config.border_crop)
    pixels = limit_detail(pixels, data_config.detail_size)
    return apply_intensity(pixels, data_config.intensity)


def _preprocess_sixteen_bit(pixels: np.ndarray, data_config: DataConfig) -> np.ndarray:
    """A uint16 stack: its 8-bit films by the 8-bit path, the others at 16 bits."""
    eight_bit = eight_bit_rows(pixels)
    out = np.empty(pixels.shape, dtype=np.float32)
    if eight_bit.any():
        codes = (pixels[eight_bit] // EIGHT_TO_SIXTEEN).astype(np.uint8)
        out[eight_bit] = _preprocess_in_this_thread(codes, data_config)
    if not eight_bit.all():
        wide = crop_borders_wide(pixels[~eight_bit], data_config.border_crop)
        wide = limit_detail_wide(wide, data_config.detail_size)
        out[~eight_bit] = apply_intensity(wide, data_config.intensity)
    return out


def to_model_tensor(pixels: np.ndarray, data_config: DataConfig) -> torch.Tensor:
    """Map uint8 or uint16 films (N, H, W) to a float tensor (N, 1, H, W) in [-1, 1]."""
    import torch

    images = preprocess_films(pixels, data_config)
    return torch.from_numpy(images * 2.0 - 1.0).unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
