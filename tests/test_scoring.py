"""Eq. 6, its components, and the two normalisations."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.scoring import combine, fit_calibration, min_max_normalise, score_pixels
from cxr_anomaly.training import train_detector


def random_pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 64, 64), dtype=np.uint8)


@pytest.fixture(scope="module")
def trained() -> tuple[Config, object]:
    """A detector trained for one short epoch, so BatchNorm holds real running statistics."""
    config = with_overrides(Config(), "train", epochs=1, batch_size=8, seed=0)
    result = train_detector(config, random_pixels(16, seed=0))
    return config, result.detector


def test_combined_score_is_the_weighted_sum_of_components(trained: tuple[Config, object]) -> None:
    config, detector = trained
    result = score_pixels(detector, random_pixels(5, seed=1), config)
    expected = 20 * result.reconstruction + 4 * result.adversarial + 8 * result.latent
    np.testing.assert_allclose(result.raw, expected, rtol=1e-6)
    assert result.raw.shape == (5,)


def test_absent_components_are_nan_and_left_out() -> None:
    reconstruction = np.array([0.1, 0.2])
    missing = np.full(2, np.nan)
    total = combine(Config(), reconstruction, missing, missing)
    np.testing.assert_allclose(total, 20 * reconstruction)


def test_a_film_scored_alone_gets_the_same_calibrated_score_as_in_a_batch(trained: tuple[Config, object]) -> None:
    config, detector = trained
    pixels = random_pixels(12, seed=2)
    calibration = fit_calibration(score_pixels(detector, random_pixels(20, seed=3), config).raw, 0.95)
    batch = calibration.standardise(score_pixels(detector, pixels, config, batch_size=12).raw)
    alone = np.array([calibration.standardise(score_pixels(detector, pixels[i:i + 1], config).raw)[0]
                      for i in range(len(pixels))])
    np.testing.assert_allclose(alone, batch, rtol=1e-5, atol=1e-6)
    # The paper's min-max normalisation, by contrast, depends on the rest of the set.
    minmax = min_max_normalise(score_pixels(detector, pixels, config).raw)
    assert minmax.min() == 0.0 and minmax.max() == 1.0


def test_reconstructions_are_returned_as_uint8_images(trained: tuple[Config, object]) -> None:
    config, detector = trained
    result = score_pixels(detector, random_pixels(3, seed=4), config, keep_reconstructions=True)
    assert result.reconstructions is not None
    assert result.reconstructions.shape == (3, 64, 64) and result.reconstructions.dtype == np.uint8


def test_min_max_of_constant_scores_is_zero() -> None:
    np.testing.assert_array_equal(min_max_normalise(np.array([2.0, 2.0])), [0.0, 0.0])


def test_calibration_percentile_and_threshold() -> None:
    normal = np.arange(1, 101, dtype=float)
    calibration = fit_calibration(normal, 0.95)
    assert calibration.threshold == pytest.approx(np.quantile(normal, 0.95))
    assert calibration.percentile(np.array([50.5]))[0] == pytest.approx(50.0, abs=0.5)
    assert calibration.percentile(np.array([1000.0]))[0] == 100.0
    assert calibration.flag(np.array([99.0, 10.0])).tolist() == [True, False]
    assert calibration.standardise(np.array([calibration.median]))[0] == 0.0
