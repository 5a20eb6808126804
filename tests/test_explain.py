"""Anomaly maps (the tang2019 residual) and heatmap overlays at the film's original resolution."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.config import with_overrides
from cxr_anomaly.explain import (
    DEFAULT_RESIDUAL_SCALE,
    colour_bar,
    explain_film,
    overlay_heatmap,
    png_bytes,
    png_data_uri,
    shrink,
)
from cxr_anomaly.io import read_image, resize_grey
from cxr_anomaly.models.tang2019 import Tang2019Detector
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.torch_model import ScoreComponents
from cxr_anomaly.scoring import score_films


def reconstructing_detector(darken_by: int) -> Tang2019Detector:
    """A tang2019 detector whose networks "reconstruct" each film ``darken_by`` grey levels darker."""
    detector = Tang2019Detector(with_overrides(tang2019_config(), "model", base_channels=8))

    def score_components(images: torch.Tensor) -> ScoreComponents:  # images (N, 1, 64, 64) in [-1, 1]
        reconstruction = (images - 2.0 * darken_by / 255.0).clamp(-1.0, 1.0)
        return ScoreComponents((images - reconstruction).abs().flatten(1).mean(dim=1), None, None, reconstruction)

    detector.networks.score_components = score_components  # type: ignore[method-assign]
    return detector


def test_residual_is_zero_for_a_perfect_reconstruction_and_absolute_otherwise() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    perfect = score_films(reconstructing_detector(0), pixels, keep_maps=True)
    assert perfect.anomaly_maps is not None and np.all(perfect.anomaly_maps == 0.0)
    np.testing.assert_array_equal(perfect.reconstructions, pixels)
    darker = np.clip(pixels.astype(int) - 51, 0, 255).astype(np.uint8)
    result = score_films(reconstructing_detector(51), pixels, keep_maps=True)
    residual = result.anomaly_maps
    assert residual is not None and residual.shape == (3, 64, 64) and residual.dtype == np.float32
    # |x - x'| / 2 in model units ([-1, 1]) is |x - x'| in units of the [0, 1] grey range.
    assert np.allclose(residual, np.abs(pixels.astype(np.float32) - darker) / 255.0, atol=1e-6)
    np.testing.assert_array_equal(result.reconstructions, darker)
    # the mean of the map is half the reconstruction component (which is in model units)
    np.testing.assert_allclose(residual.mean(axis=(1, 2)) * 2.0, result.components["reconstruction"], rtol=1e-5)
    assert reconstructing_detector(0).anomaly_map_scale == DEFAULT_RESIDUAL_SCALE


def test_overlay_leaves_the_film_grey_where_the_residual_is_zero_and_colours_the_difference() -> None:
    film = np.full((1024, 768), 120, dtype=np.uint8)
    residual = np.zeros((64, 64), dtype=np.float32)
    residual[:16, :16] = DEFAULT_RESIDUAL_SCALE  # top-left corner of the model's view
    overlay = overlay_heatmap(film, residual, scale=DEFAULT_RESIDUAL_SCALE)
    assert overlay.shape == (1024, 768, 3) and overlay.dtype == np.uint8
    untouched = overlay[600:, 400:]
    assert np.all(untouched == 120)
    corner = overlay[:200, :100].astype(int)
    assert np.abs(corner[..., 0] - corner[..., 2]).mean() > 20  # coloured, not grey


def test_colour_scale_is_fixed_so_a_small_residual_stays_faint() -> None:
    film = np.full((64, 64), 100, dtype=np.uint8)
    faint = overlay_heatmap(film, np.full((64, 64), 0.02, dtype=np.float32)).astype(int)
    strong = overlay_heatmap(film, np.full((64, 64), 0.5, dtype=np.float32)).astype(int)
    assert np.abs(faint - 100).max() < 12
    assert np.abs(strong - 100).max() > 60
    with pytest.raises(ValueError, match="scale=0"):
        overlay_heatmap(film, np.zeros((64, 64), dtype=np.float32), scale=0)
    # the scale is the model's: colour depends on map / scale only, so a model whose maps run
    # smaller paints the same small value stronger
    relative = overlay_heatmap(film, np.full((64, 64), 0.02, dtype=np.float32), scale=0.04)
    assert np.array_equal(relative, overlay_heatmap(film, np.full((64, 64), 0.25, dtype=np.float32), scale=0.5))
    assert np.abs(relative.astype(int) - 100).max() > np.abs(faint - 100).max()


def test_colour_bar_runs_from_the_colour_of_zero_to_the_colour_of_the_scale() -> None:
    bar = colour_bar(width=64, height=5)
    assert bar.shape == (5, 64, 3) and bar.dtype == np.uint8
    film = np.zeros((1, 1), dtype=np.uint8)
    blank, full = (
        overlay_heatmap(film, np.full((1, 1), value, dtype=np.float32), scale=0.5)[0, 0] for value in (0.0, 0.5)
    )
    assert np.array_equal(blank, [0, 0, 0])
    assert bar[0, 0].sum() < 30 and bar[0, -1].sum() > 3 * 200  # inferno: black to pale yellow
    assert full.sum() > blank.sum()


def test_shrink_keeps_the_aspect_ratio_and_small_images() -> None:
    image = np.zeros((1000, 500), dtype=np.uint8)
    assert shrink(image, 200).shape == (200, 100)
    assert shrink(image, None).shape == (1000, 500)
    assert shrink(np.zeros((50, 40, 3), dtype=np.uint8), 200).shape == (50, 40, 3)


def test_real_full_resolution_film_gets_a_heatmap_at_its_own_resolution(tiny_nih_model, shared_data: Path) -> None:
    model = load_checkpoint(tiny_nih_model.checkpoint)
    film = read_image(shared_data / "nih_fullres" / "00000427_000.png").array  # (1024, 1024) float
    model_input = resize_grey(film, 64)  # (64, 64) uint8
    result = score_films(model.detector, model_input[None], keep_maps=True)
    assert result.anomaly_maps is not None and result.reconstructions is not None
    scale = model.detector.anomaly_map_scale
    explanation = explain_film(
        film, model_input, result.anomaly_maps[0], scale, reconstruction=result.reconstructions[0]
    )
    assert explanation.original.shape == film.shape
    assert explanation.overlay.shape == (*film.shape, 3)
    assert explanation.anomaly_map.shape == (64, 64) and explanation.scale == scale
    # the mean residual is the reconstruction component of the score, in [0, 1] units
    assert explanation.anomaly_map.mean() * 2.0 == pytest.approx(result.components["reconstruction"][0], rel=0.02)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(explanation.overlay))))
    assert np.array_equal(decoded, explanation.overlay)
    assert explanation.reconstruction is not None
    assert png_data_uri(explanation.reconstruction).startswith("data:image/png;base64,")
    thumbnail = explain_film(film, model_input, result.anomaly_maps[0], scale, max_side=192)
    assert thumbnail.overlay.shape == (192, 192, 3) and thumbnail.reconstruction is None


def test_heatmap_range_floor_is_transparent_and_border_crop_stays_uncoloured() -> None:
    from cxr_anomaly.calibration import fit_calibration
    from cxr_anomaly.explain import heatmap_range, overlay_heatmap

    film = np.full((100, 100), 128, dtype=np.uint8)
    high = np.full((10, 10), 5.0, dtype=np.float32)
    # at or below the floor nothing is painted, whatever the map's values
    assert np.array_equal(overlay_heatmap(film, high, scale=9.0, floor=5.0)[..., 0], film)
    painted = overlay_heatmap(film, high, scale=5.0, floor=1.0, border_crop=0.2)
    assert np.array_equal(painted[:20, :, 0], film[:20])  # the model never saw the border
    assert np.array_equal(painted[:, 80:, 0], film[:, 80:])
    assert not np.array_equal(painted[30:70, 30:70, 0], film[30:70, 30:70])
    normal_maps = np.random.default_rng(0).normal(3.0, 1.0, size=(20, 14, 14))
    calibration = fit_calibration(np.random.default_rng(1).normal(size=50), 0.95).with_map_range(normal_maps)
    heat = heatmap_range(calibration, default_scale=99.0)
    assert abs(heat.floor - np.median(normal_maps)) < 1e-9 and heat.scale == np.quantile(normal_maps, 0.999)
    assert heatmap_range(None, default_scale=0.5).floor == 0.0 and heatmap_range(None, 0.5).scale == 0.5
