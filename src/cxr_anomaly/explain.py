"""Explanations a radiologist can glance at: where the detector found the film unusual.

Every detector family returns an anomaly map with its scores (see
:class:`~cxr_anomaly.models.base.AnomalyOutput`): the residual |x - x'| of an autoencoder, the
nearest-normal-patch distance of a feature model. The map is upsampled
bilinearly to the film's original resolution and blended over it: transparent where the map is
small, opaque "inferno" colours where it is large.

The colour scale is fixed per model rather than stretched per film: transparent at a typical
normal location's value and opaque at the 99.9th percentile of normal locations, both measured on
the normal validation films and stored with the calibration
(:meth:`~cxr_anomaly.calibration.Calibration.with_map_range`). A film that looks normal stays
nearly uncoloured instead of having its largest small value painted as bright as a real lesion.
"""

from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .image_base import display_codes

DEFAULT_RESIDUAL_SCALE = 0.5  # map value that gets the full colour when a model states none
MAX_OVERLAY_OPACITY = 0.65  # the film stays visible under the strongest colour


@dataclass
class Explanation:
    """What the detector saw for one film, and where it found it unusual.

    Attributes:
        original: grey uint8 film (H0, W0), at the original resolution or shrunk to ``max_side``.
        model_input: the (S, S) codes the detector read: uint8, or uint16 for a film of more than
            256 grey levels.
        anomaly_map: the detector's map, float32 (h, w).
        floor: the map value painted transparent (and everything below it).
        scale: the map value painted at full colour (and everything above it).
        overlay: RGB uint8 (H0, W0, 3): the heatmap blended over ``original``.
        reconstruction: the autoencoder's output x', uint8 (S, S); None for families without one.
    """

    original: np.ndarray
    model_input: np.ndarray
    anomaly_map: np.ndarray
    scale: float
    overlay: np.ndarray
    reconstruction: np.ndarray | None = None
    floor: float = 0.0


def to_uint8_grey(image: np.ndarray) -> np.ndarray:
    """A grey float image in [0, 1], or uint8 or uint16 codes, as uint8 for a picture."""
    if image.dtype in (np.uint8, np.uint16):
        return display_codes(image)
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
    anomaly_map: np.ndarray,
    *,
    scale: float = DEFAULT_RESIDUAL_SCALE,
    floor: float = 0.0,
    border_crop: float = 0.0,
) -> np.ndarray:
    """Blend a heatmap, upsampled to the film's size, over the film.

    Args:
        film: grey uint8 or uint16 codes (H0, W0) or float in [0, 1], at any resolution.
        anomaly_map: float (h, w), any resolution up to the film's.
        scale: map value that gets the full colour and opacity.
        floor: map value (and below) that stays transparent.
        border_crop: the fraction of each side the model cut away before it looked
            (``DataConfig.border_crop``): the map covers the rest, and the border stays uncoloured.

    Returns:
        RGB uint8 (H0, W0, 3).
    """
    if not scale > floor:
        raise ValueError(f"scale={scale}, floor={floor}; the scale must exceed the floor")
    grey = to_uint8_grey(film)
    height, width = grey.shape
    top, left = int(round(height * border_crop)), int(round(width * border_crop))
    inner = (max(1, width - 2 * left), max(1, height - 2 * top))
    upsampled = np.asarray(
        Image.fromarray(np.asarray(anomaly_map, dtype=np.float32), mode="F").resize(inner, Image.Resampling.BILINEAR),
        dtype=np.float32,
    )  # (H0 - 2 top, W0 - 2 left)
    strength = np.zeros((height, width), dtype=np.float32)
    strength[top : top + inner[1], left : left + inner[0]] = np.clip((upsampled - floor) / (scale - floor), 0.0, 1.0)
    colours = _inferno_table()[np.rint(strength * 255.0).astype(np.int64)]  # (H0, W0, 3)
    opacity = (strength * MAX_OVERLAY_OPACITY)[..., None]  # (H0, W0, 1)
    base = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)  # (H0, W0, 3)
    blended = base * (1.0 - opacity) + colours * opacity
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def explain_film(
    film: np.ndarray,
    model_input: np.ndarray,
    anomaly_map: np.ndarray,
    scale: float,
    *,
    floor: float = 0.0,
    border_crop: float = 0.0,
    reconstruction: np.ndarray | None = None,
    max_side: int | None = None,
) -> Explanation:
    """The :class:`Explanation` of one film.

    Args:
        film: the film at its original resolution, grey float in [0, 1] or uint8 (H0, W0).
        model_input: the (S, S) codes the detector scored (uint8, or uint16).
        anomaly_map: the detector's float (h, w) map of the film.
        scale: the map value painted at full colour (see :func:`heatmap_range`).
        floor: the map value painted transparent.
        border_crop: the fraction of each side the model did not look at (see :func:`overlay_heatmap`).
        reconstruction: the autoencoder's uint8 (S, S) reconstruction, if the family makes one.
        max_side: shrink the film first so its longer side is at most this (for thumbnails).
    """
    original = shrink(to_uint8_grey(film), max_side)
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    return Explanation(
        original=original,
        model_input=model_input,
        anomaly_map=anomaly_map,
        scale=float(scale),
        overlay=overlay_heatmap(original, anomaly_map, scale=scale, floor=floor, border_crop=border_crop),
        reconstruction=reconstruction,
        floor=float(floor),
    )


@dataclass(frozen=True)
class HeatmapRange:
    """The map values painted transparent (``floor``) and at full colour (``scale``)."""

    floor: float
    scale: float


def heatmap_range(calibration: object | None, default_scale: float) -> HeatmapRange:
    """The range stored with a calibration, or ``[0, default_scale]`` for one made without maps."""
    floor = getattr(calibration, "map_floor", None)
    ceiling = getattr(calibration, "map_ceiling", None)
    if floor is None or ceiling is None:
        return HeatmapRange(0.0, float(default_scale))
    return HeatmapRange(float(floor), float(ceiling))


def colour_bar(*, width: int = 256, height: int = 12) -> np.ndarray:
    """An RGB uint8 (height, width, 3) legend of the heatmap colours, weakest to strongest."""
    colours = _inferno_table()[np.linspace(0, 255, width).round().astype(np.int64)]  # (width, 3)
    return np.repeat(colours[None], height, axis=0).astype(np.uint8)


def legend_height(width: int) -> int:
    """Height in pixels of the legend band :func:`with_legend` adds below a film ``width`` pixels wide."""
    return max(32, round(width * 0.07))


def with_legend(overlay: np.ndarray, *, floor: float, scale: float, raw_score: float | None = None) -> np.ndarray:
    """The overlay with a legend band below it: the colour bar, the map values it spans and,
    when given, the film's raw score named as such (the detector's own scale, not a probability).

    Returns:
        RGB uint8 (H0 + :func:`legend_height`, W0, 3); the film above keeps its size.
    """
    from PIL import ImageDraw, ImageFont

    height, width = overlay.shape[:2]
    band = legend_height(width)
    bar_height = max(6, band // 3)
    canvas = np.full((height + band, width, 3), 255, dtype=np.uint8)
    canvas[:height] = overlay
    canvas[height + 2 : height + 2 + bar_height] = colour_bar(width=width, height=bar_height)
    text = f"heatmap: clear at {floor:.3g}, full colour at {scale:.3g}"
    if raw_score is not None:
        text += f"; raw score {raw_score:.4g}"
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    size = max(6, band - bar_height - 6)
    font = ImageFont.load_default(size=size)
    while size > 6 and draw.textlength(text, font=font) > width - 4:  # shrink the text to the film's width
        size -= 1
        font = ImageFont.load_default(size=size)
    draw.text((2, height + bar_height + 3), text, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a grey (H, W) or RGB (H, W, 3) uint8 image as PNG."""
    buffer = io.BytesIO()
    # compress_level 1: a full-size heatmap encodes far faster than with optimize, a little larger
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def png_data_uri(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URI of an image, for self-contained HTML."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
