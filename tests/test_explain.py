"""Residual maps and heatmap overlays at the film's original resolution."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.config import DataConfig
from cxr_anomaly.explain import (DEFAULT_RESIDUAL_SCALE, explain_film, overlay_heatmap, png_bytes, png_data_uri,
                                 residual_maps, shrink)
from cxr_anomaly.io import read_image, resize_grey
from cxr_anomaly.scoring import score_pixels


def test_residual_is_zero_for_a_perfect_reconstruction_and_absolute_otherwise() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    assert np.all(residual_maps(pixels, pixels, DataConfig()) == 0.0)
    darker = np.clip(pixels.astype(int) - 51, 0, 255).astype(np.uint8)
    residual = residual_maps(pixels, darker, DataConfig())
    assert residual.shape == (3, 64, 64) and residual.dtype == np.float32
    assert np.allclose(residual, np.abs(pixels.astype(np.float32) - darker) / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        residual_maps(pixels, darker[:2], DataConfig())


def test_overlay_leaves_the_film_grey_where_the_residual_is_zero_and_colours_the_difference() -> None:
    film = np.full((1024, 768), 120, dtype=np.uint8)
    residual = np.zeros((64, 64), dtype=np.float32)
    residual[:16, :16] = DEFAULT_RESIDUAL_SCALE  # top-left corner of the model's view
    overlay = overlay_heatmap(film, residual)
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
    with pytest.raises(ValueError, match="residual_scale=0"):
        overlay_heatmap(film, np.zeros((64, 64), dtype=np.float32), residual_scale=0)


def test_shrink_keeps_the_aspect_ratio_and_small_images() -> None:
    image = np.zeros((1000, 500), dtype=np.uint8)
    assert shrink(image, 200).shape == (200, 100)
    assert shrink(image, None).shape == (1000, 500)
    assert shrink(np.zeros((50, 40, 3), dtype=np.uint8), 200).shape == (50, 40, 3)


def test_real_full_resolution_film_gets_a_heatmap_at_its_own_resolution(tiny_nih_model, shared_data: Path) -> None:
    model = load_checkpoint(tiny_nih_model.checkpoint)
    film = read_image(shared_data / "nih_fullres" / "00000427_000.png").array  # (1024, 1024) float
    model_input = resize_grey(film, 64)  # (64, 64) uint8
    result = score_pixels(model.detector, model_input[None], model.config, keep_reconstructions=True)
    explanation = explain_film(film, model_input, result.reconstructions[0], model.config.data)
    assert explanation.original.shape == film.shape
    assert explanation.overlay.shape == (*film.shape, 3)
    assert explanation.residual.shape == (64, 64)
    # the mean residual is the reconstruction component of the score, in [0, 1] units
    assert explanation.residual.mean() * 2.0 == pytest.approx(result.reconstruction[0], rel=0.02)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(explanation.overlay))))
    assert np.array_equal(decoded, explanation.overlay)
    assert png_data_uri(explanation.reconstruction).startswith("data:image/png;base64,")
    thumbnail = explain_film(film, model_input, result.reconstructions[0], model.config.data, max_side=192)
    assert thumbnail.overlay.shape == (192, 192, 3)
