"""Pixel baselines (PCA reconstruction error, kNN distance) on real NIH films."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_anomaly.baselines import KNNBaseline, PCABaseline, fit_and_score_baselines, flatten_pixels
from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.errors import NoNormalImagesError


@pytest.fixture(scope="module")
def nih_pixels(shared_data: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """120 real NIH1000 films (64x64 uint8) and their manifest rows."""
    manifest = load_inputs([shared_data / "nih1000" / "manifest.csv"]).iloc[::8].reset_index(drop=True)
    images = load_images(manifest, DataConfig(), workers=1)
    return images.pixels, images.manifest


def test_knn_distance_of_a_training_film_to_itself_is_zero(nih_pixels: tuple[np.ndarray, pd.DataFrame]) -> None:
    pixels, _ = nih_pixels
    knn = KNNBaseline(DataConfig(), neighbours=1).fit(pixels[:60])
    assert np.allclose(knn.score(pixels[:5]), 0.0, atol=1e-4)  # sklearn computes distances via dot products
    assert np.all(knn.score(pixels[60:70]) > 1.0)


def test_knn_matches_a_direct_distance_computation(nih_pixels: tuple[np.ndarray, pd.DataFrame]) -> None:
    pixels, _ = nih_pixels
    config = DataConfig()
    train, queries = pixels[:50], pixels[50:55]
    scores = KNNBaseline(config, neighbours=3).fit(train).score(queries)
    train_flat, query_flat = flatten_pixels(train, config), flatten_pixels(queries, config)
    distances = np.sqrt(((query_flat[:, None, :] - train_flat[None, :, :]) ** 2).sum(-1))  # (5, 50)
    expected = np.sort(distances, axis=1)[:, :3].mean(axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_pca_with_enough_components_reconstructs_its_training_films(
    nih_pixels: tuple[np.ndarray, pd.DataFrame],
) -> None:
    pixels, _ = nih_pixels
    pca = PCABaseline(DataConfig(), components=19).fit(pixels[:20])
    training_error = pca.score(pixels[:20])
    unseen_error = pca.score(pixels[20:40])
    assert training_error.max() < 1e-8
    assert unseen_error.min() > 1e-4


def test_baselines_use_the_runs_intensity_normalisation(nih_pixels: tuple[np.ndarray, pd.DataFrame]) -> None:
    pixels, _ = nih_pixels
    plain = fit_and_score_baselines(pixels[:60], {"test": pixels[60:]}, DataConfig())
    equalised = fit_and_score_baselines(pixels[:60], {"test": pixels[60:]}, DataConfig(intensity="equalize"))
    assert set(plain["test"].scores) == {"pca5", "knn5"}
    for name in ("pca5", "knn5"):
        assert plain["test"].scores[name].shape == (len(pixels) - 60,)
        assert np.all(np.isfinite(plain["test"].scores[name]))
        assert not np.allclose(plain["test"].scores[name], equalised["test"].scores[name])


def test_too_few_normals_and_unfitted_models_are_refused(nih_pixels: tuple[np.ndarray, pd.DataFrame]) -> None:
    pixels, _ = nih_pixels
    with pytest.raises(NoNormalImagesError, match="at least 6"):
        PCABaseline(DataConfig(), components=5).fit(pixels[:5])
    with pytest.raises(NoNormalImagesError, match="at least 5"):
        KNNBaseline(DataConfig(), neighbours=5).fit(pixels[:4])
    with pytest.raises(RuntimeError, match="before fit"):
        KNNBaseline(DataConfig()).score(pixels[:2])
    with pytest.raises(ValueError, match="components=0"):
        PCABaseline(DataConfig(), components=0)
