"""Explanations a radiologist can glance at: the reconstruction and a residual heatmap.

The detector reconstructs a 64x64 version of the film; where the film differs from what the
model expects of a normal film, the residual |x - x'| is large. The residual is computed in the
model's own input space (after the per-film intensity normalisation of the config), upsampled
bilinearly to the film's original resolution and blended over it: transparent where the
residual is small, opaque "inferno" colours where it is large.

The colour scale is fixed (``residual_scale``, in units of the [0, 1] intensity range) rather
than stretched per film: a film that the model reconstructs well stays nearly uncoloured instead
of having its largest small residual painted as bright as a real lesion.
"""

from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .config import DataConfig
from .data.dataset import apply_intensity

DEFAULT_RESIDUAL_SCALE = 0.5  # residual that gets the full colour (half the grey range)
MAX_OVERLAY_OPACITY = 0.65  # the film stays visible under the strongest colour


@dataclass
class Explanation:
    """What the detector saw and reconstructed for one film, and where they differ.

    Attributes:
        original: grey uint8 film (H0, W0), at the original resolution or shrunk to ``max_side``.
        model_input: grey uint8 (S, S) image as the detector saw it (before intensity normalisation).
        reconstruction: the detector's output x', uint8 (S, S) in the model's intensity space.
        residual: |x - x'| in [0, 1], float32 (S, S).
        overlay: RGB uint8 (H0, W0, 3): the residual heatmap blended over ``original``.
    """

    original: np.ndarray
    model_input: np.ndarray
    reconstruction: np.ndarray
    residual: np.ndarray
    overlay: np.ndarray


def residual_maps(pixels: np.ndarray, reconstructions: np.ndarray, data_config: DataConfig) -> np.ndarray:
    """|x - x'| per pixel, float32 (N, S, S) in [0, 1].

    Args:
        pixels: the films as loaded, uint8 (N, S, S).
        reconstructions: the detector's outputs as uint8 (N, S, S) (see
            :func:`cxr_anomaly.scoring.score_pixels` with ``keep_reconstructions``).
        data_config: gives the intensity normalisation the detector's input went through.
    """
    if pixels.shape != reconstructions.shape:
        raise ValueError(f"pixels {pixels.shape} and reconstructions {reconstructions.shape} differ in shape")
    model_input = apply_intensity(pixels, data_config.intensity)  # (N, S, S) float32 in [0, 1]
    return np.abs(model_input - reconstructions.astype(np.float32) / 255.0).astype(np.float32)


def to_uint8_grey(image: np.ndarray) -> np.ndarray:
    """A grey float image in [0, 1] (or uint8 already) as uint8."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale a grey or RGB uint8 image so that its longer side is at most ``max_side``."""
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    height, width = image.shape[:2]
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


@functools.lru_cache(maxsize=1)
def _inferno_table() -> np.ndarray:
    """The 256-entry RGB table of matplotlib's perceptually uniform 'inferno' colormap."""
    import matplotlib

    colormap = matplotlib.colormaps["inferno"]
    return (colormap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.float32)  # (256, 3)


def overlay_heatmap(
    film: np.ndarray,
    residual: np.ndarray,
    *,
    residual_scale: float = DEFAULT_RESIDUAL_SCALE,
) -> np.ndarray:
    """Blend a residual heatmap, upsampled to the film's size, over the film.

    Args:
        film: grey uint8 (H0, W0) or float in [0, 1], at any resolution.
        residual: |x - x'| float (S, S) in [0, 1] from :func:`residual_maps`.
        residual_scale: residual value that gets the full colour and opacity.

    Returns:
        RGB uint8 (H0, W0, 3).
    """
    if residual_scale <= 0:
        raise ValueError(f"residual_scale={residual_scale}; expected a positive number")
    grey = to_uint8_grey(film)
    height, width = grey.shape
    upsampled = Image.fromarray(np.asarray(residual, dtype=np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR)
    strength = np.clip(np.asarray(upsampled, dtype=np.float32) / residual_scale, 0.0, 1.0)  # (H0, W0)
    colours = _inferno_table()[np.rint(strength * 255.0).astype(np.int64)]  # (H0, W0, 3)
    opacity = (strength * MAX_OVERLAY_OPACITY)[..., None]  # (H0, W0, 1)
    base = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)  # (H0, W0, 3)
    blended = base * (1.0 - opacity) + colours * opacity
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def explain_film(
    film: np.ndarray,
    model_input: np.ndarray,
    reconstruction: np.ndarray,
    data_config: DataConfig,
    *,
    max_side: int | None = None,
    residual_scale: float = DEFAULT_RESIDUAL_SCALE,
) -> Explanation:
    """The :class:`Explanation` of one film.

    Args:
        film: the film at its original resolution, grey float in [0, 1] or uint8 (H0, W0).
        model_input: the uint8 (S, S) image the detector scored.
        reconstruction: the detector's uint8 (S, S) reconstruction of it.
        data_config: the detector's data settings (intensity normalisation).
        max_side: shrink the film first so its longer side is at most this (for thumbnails).
        residual_scale: see :func:`overlay_heatmap`.
    """
    residual = residual_maps(model_input[None], reconstruction[None], data_config)[0]  # (S, S)
    original = shrink(to_uint8_grey(film), max_side)
    return Explanation(
        original=original,
        model_input=model_input,
        reconstruction=reconstruction,
        residual=residual,
        overlay=overlay_heatmap(original, residual, residual_scale=residual_scale),
    )


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a grey (H, W) or RGB (H, W, 3) uint8 image as PNG."""
    buffer = io.BytesIO()
    # compress_level 1: a 1024² heatmap encodes ~10x faster than with optimize, ~20% larger
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of an image, for self-contained HTML."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
