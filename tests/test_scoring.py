"""Eq. 6, its components, and the two normalisations (scored through the common detector interface)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.models.base import DEFAULT_SCORING_BATCH_SIZE
from cxr_anomaly.models.tang2019 import Tang2019Detector, weighted_score
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.training import train_detector
from cxr_anomaly.scoring import ScoreResult, fit_calibration, min_max_normalise, score_films


def random_pixels(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 64, 64), dtype=np.uint8)


def score_pixels(networks: object, pixels: np.ndarray, config: Config, **options: object) -> ScoreResult:
    """Score with the trained networks behind the common interface, under ``config``'s score."""
    return score_films(Tang2019Detector(config, networks), pixels, **options)


@pytest.fixture(scope="module")
def trained() -> tuple[Config, object]:
    """A detector trained for one short epoch, so BatchNorm holds real running statistics."""
    config = with_overrides(tang2019_config(), "train", epochs=1, batch_size=8, seed=0)
    result = train_detector(config, random_pixels(16, seed=0))
    return config, result.detector


def test_the_paper_models_scoring_batch_is_the_base_default(trained: tuple[Config, object]) -> None:
    """Batch 16 was measured faster for the features family on a CPU only; the paper's 64 px model keeps 64."""
    config, networks = trained
    detector = Tang2019Detector(config, networks)
    assert detector.scoring_batch_size(torch.device("cpu")) == DEFAULT_SCORING_BATCH_SIZE == 64


def test_combined_score_is_the_weighted_sum_of_components(trained: tuple[Config, object]) -> None:
    config, detector = trained
    result = score_pixels(detector, random_pixels(5, seed=1), config)
    parts = result.components
    assert set(parts) == {"reconstruction", "adversarial", "latent", "code_distance"}
    expected = 20 * parts["reconstruction"] + 4 * parts["adversarial"] + 8 * parts["latent"]
    np.testing.assert_allclose(result.raw, expected, rtol=1e-6)
    assert result.raw.shape == (5,)


def test_absent_components_are_nan_and_left_out() -> None:
    reconstruction = np.array([0.1, 0.2])
    total = weighted_score(tang2019_config().score, reconstruction, None, None, None)
    np.testing.assert_allclose(total, 20 * reconstruction)
    # A variant without D and E: its missing components are NaN and the score is λ1·L_R alone.
    config = with_overrides(
        with_overrides(tang2019_config(), "model", variant="u", base_channels=8, latent_dim=16),
        "train",
        epochs=1,
        batch_size=8,
        seed=0,
    )
    networks = train_detector(config, random_pixels(8, seed=0)).detector
    result = score_pixels(networks, random_pixels(3, seed=1), config)
    assert np.all(np.isnan(result.components["adversarial"])) and np.all(np.isnan(result.components["latent"]))
    np.testing.assert_allclose(result.raw, 20 * result.components["reconstruction"], rtol=1e-6)


def test_a_film_scored_alone_gets_the_same_calibrated_score_as_in_a_batch(trained: tuple[Config, object]) -> None:
    config, detector = trained
    pixels = random_pixels(12, seed=2)
    calibration = fit_calibration(score_pixels(detector, random_pixels(20, seed=3), config).raw, 0.95)
    batch = calibration.standardise(score_pixels(detector, pixels, config, batch_size=12).raw)
    alone = np.array(
        [calibration.standardise(score_pixels(detector, pixels[i : i + 1], config).raw)[0] for i in range(len(pixels))]
    )
    np.testing.assert_allclose(alone, batch, rtol=1e-5, atol=1e-6)
    # The paper's min-max normalisation, by contrast, depends on the rest of the set.
    minmax = min_max_normalise(score_pixels(detector, pixels, config).raw)
    assert minmax.min() == 0.0 and minmax.max() == 1.0


def test_reconstructions_are_returned_as_uint8_images(trained: tuple[Config, object]) -> None:
    config, detector = trained
    result = score_pixels(detector, random_pixels(3, seed=4), config, keep_maps=True)
    assert result.reconstructions is not None
    assert result.reconstructions.shape == (3, 64, 64) and result.reconstructions.dtype == np.uint8
    # The anomaly map is the residual |x - x'| / 2, in [0, 1].
    assert result.anomaly_maps is not None and result.anomaly_maps.shape == (3, 64, 64)
    assert result.anomaly_maps.min() >= 0.0 and result.anomaly_maps.max() <= 1.0
    assert score_pixels(detector, random_pixels(3, seed=4), config).reconstructions is None


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


def test_training_stores_normal_codes_for_the_code_knn_score(trained: tuple[Config, object]) -> None:
    config, detector = trained
    assert tuple(detector.normal_codes.shape) == (16, config.model.latent_dim)
    assert int(detector.code_neighbours) == config.score.neighbours
    knn_config = with_overrides(config, "score", method="code_knn")
    result = score_pixels(detector, random_pixels(5, seed=5), knn_config)
    code_distance = result.components["code_distance"]
    assert np.all(np.isfinite(code_distance))
    np.testing.assert_array_equal(result.raw, code_distance)
    # eq. 6 ignores the code distance.
    eq6 = score_pixels(detector, random_pixels(5, seed=5), with_overrides(config, "score", method="eq6"))
    parts = eq6.components
    np.testing.assert_allclose(
        eq6.raw, 20 * parts["reconstruction"] + 4 * parts["adversarial"] + 8 * parts["latent"], rtol=1e-6
    )


def test_code_distance_of_a_stored_normal_to_itself_is_zero(trained: tuple[Config, object]) -> None:
    import copy

    from cxr_anomaly.models.tang2019.training import store_normal_codes

    config, detector = trained
    detector = copy.deepcopy(detector)
    normals = random_pixels(16, seed=0)
    store_normal_codes(detector, normals, with_overrides(config, "score", neighbours=1))
    # in fp32, the precision the codes were stored in (bf16 autocast, where native, moves them)
    distances = score_pixels(detector, normals[:4], config, precision="fp32").components["code_distance"]
    np.testing.assert_allclose(distances, 0.0, atol=1e-3)
    assert np.all(score_pixels(detector, random_pixels(4, seed=9), config).components["code_distance"] > 1e-3)


def test_normal_codes_travel_in_the_state_dict_and_old_state_dicts_still_load(trained: tuple[Config, object]) -> None:
    from cxr_anomaly.models.tang2019 import OneClassDetector

    config, detector = trained
    copy_of = OneClassDetector(config.model)
    copy_of.load_state_dict(detector.state_dict())
    assert np.array_equal(copy_of.normal_codes.numpy(), detector.normal_codes.numpy())
    old = {key: value for key, value in detector.state_dict().items() if key not in ("normal_codes", "code_neighbours")}
    restored = OneClassDetector(config.model)
    restored.load_state_dict(old)
    assert len(restored.normal_codes) == 0
    restored.eval()
    assert np.all(np.isnan(score_pixels(restored, random_pixels(2, seed=6), config).components["code_distance"]))
    with pytest.raises(ValueError, match="no codes of training normals"):
        score_pixels(restored, random_pixels(2, seed=6), with_overrides(config, "score", method="code_knn"))
