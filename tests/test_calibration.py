"""Operating points, percentiles, checkpoint storage and bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr_anomaly.calibration import Calibration, bootstrap_intervals, fit_calibration, sensitivity_threshold
from cxr_anomaly.checkpoint import load_checkpoint


def test_scoring_still_exports_the_calibration() -> None:
    from cxr_anomaly import scoring

    assert scoring.Calibration is Calibration
    assert scoring.fit_calibration is fit_calibration


def test_specificity_threshold_from_normal_films_alone_holds_on_new_normals() -> None:
    rng = np.random.default_rng(0)
    calibration = fit_calibration(rng.gamma(4.0, 1.0, 4000), 0.95)
    fresh_normals = rng.gamma(4.0, 1.0, 20000)
    assert calibration.operating_point == "specificity"
    assert calibration.threshold == pytest.approx(calibration.specificity_threshold)
    assert calibration.validation_specificity == pytest.approx(0.95, abs=0.002)
    assert calibration.validation_sensitivity is None
    assert np.mean(~calibration.flag(fresh_normals)) == pytest.approx(0.95, abs=0.01)


def test_sensitivity_target_without_abnormal_films_falls_back_to_the_specificity_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    normals = np.random.default_rng(1).normal(10.0, 1.0, 300)
    calibration = fit_calibration(normals, 0.9, abnormal_raw_scores=np.zeros(0), target_sensitivity=0.95)
    assert calibration.operating_point == "specificity"
    assert calibration.threshold == pytest.approx(float(np.quantile(normals, 0.9)))
    assert normals.min() < calibration.threshold < normals.max()
    assert "no abnormal films" in calibration.note
    assert "no abnormal films" in caplog.text


def test_sensitivity_threshold_is_the_highest_that_reaches_the_target() -> None:
    rng = np.random.default_rng(2)
    normals = rng.normal(0.0, 1.0, 500)
    abnormals = rng.normal(1.5, 1.0, 200)
    calibration = fit_calibration(normals, 0.95, abnormal_raw_scores=abnormals, target_sensitivity=0.9)
    threshold = calibration.threshold
    assert calibration.operating_point == "sensitivity"
    assert np.mean(abnormals > threshold) >= 0.9
    # the next abnormal score above the threshold, used as threshold, would miss the target
    next_above = np.min(abnormals[abnormals > threshold])
    assert np.mean(abnormals > next_above) < 0.9
    assert calibration.validation_sensitivity == pytest.approx(np.mean(abnormals > threshold))
    assert calibration.validation_specificity == pytest.approx(np.mean(normals <= threshold))
    assert calibration.validation_specificity < 0.95  # the cost of 90% sensitivity with overlap


def test_few_abnormal_films_give_a_warning_note() -> None:
    calibration = fit_calibration(
        np.arange(50.0), 0.95, abnormal_raw_scores=np.array([40.0, 60.0]), target_sensitivity=0.5
    )
    assert "only 2 abnormal films" in calibration.note
    assert calibration.flag(np.array([60.0]))[0]


@settings(max_examples=60, deadline=None)
@given(
    normals=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=60),
    abnormals=st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=30),
    specificity=st.floats(0.01, 0.99),
    sensitivity=st.one_of(st.none(), st.floats(0.01, 1.0)),
)
def test_thresholds_are_finite_and_inside_the_validation_scores(
    normals: list[float], abnormals: list[float], specificity: float, sensitivity: float | None
) -> None:
    calibration = fit_calibration(
        np.array(normals), specificity, abnormal_raw_scores=np.array(abnormals), target_sensitivity=sensitivity
    )
    everything = np.array(normals + abnormals)
    assert np.isfinite(calibration.threshold)
    assert np.nextafter(everything.min(), -np.inf) <= calibration.threshold <= everything.max()
    if calibration.operating_point == "sensitivity":
        assert np.mean(np.array(abnormals) > calibration.threshold) >= sensitivity - 1e-12


def test_percentile_is_the_same_alone_and_in_a_batch_and_monotone() -> None:
    calibration = fit_calibration(np.random.default_rng(3).normal(size=400), 0.95)
    batch = np.linspace(-4.0, 4.0, 50)
    percentiles = calibration.percentile(batch)
    assert np.all(np.diff(percentiles) >= 0)
    assert percentiles[0] == 0.0 and percentiles[-1] == 100.0
    assert calibration.percentile(batch[20:21])[0] == percentiles[20]
    assert calibration.percentile(np.array([0.0]))[0] == pytest.approx(50.0, abs=5.0)


def test_bad_inputs_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="at least 2 normal"):
        fit_calibration(np.array([1.0]), 0.95)
    with pytest.raises(ValueError, match="NaN"):
        fit_calibration(np.array([1.0, np.nan]), 0.95)
    with pytest.raises(ValueError, match="target_specificity=1.5"):
        fit_calibration(np.array([1.0, 2.0]), 1.5)
    with pytest.raises(ValueError, match="target_sensitivity=0"):
        sensitivity_threshold(np.array([1.0]), np.array([0.0]), 0.0)


def test_calibrations_of_the_first_checkpoint_format_still_load() -> None:
    old = {
        "normal_quantiles": [0.0, 1.0, 2.0],
        "median": 1.0,
        "scale": 0.5,
        "threshold": 1.9,
        "target_specificity": 0.95,
        "num_normals": 3,
    }
    calibration = Calibration.from_dict(old)
    assert calibration.operating_point == "specificity"
    assert calibration.specificity_threshold == 1.9
    assert Calibration.from_dict({**calibration.to_dict(), "from_the_future": 1}) == calibration


def test_bootstrap_intervals_contain_their_estimates_and_have_the_binomial_width() -> None:
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(300), np.ones(200)]
    scores = np.r_[rng.normal(0.0, 1.0, 300), rng.normal(1.0, 1.0, 200)]
    intervals = bootstrap_intervals(labels, scores, threshold=0.5, num_resamples=800, seed=7)
    for interval in (intervals.auc, intervals.sensitivity, intervals.specificity):
        assert interval.low <= interval.estimate <= interval.high
    sensitivity = intervals.sensitivity.estimate
    expected_width = 2 * 1.96 * np.sqrt(sensitivity * (1 - sensitivity) / 200)
    assert intervals.sensitivity.high - intervals.sensitivity.low == pytest.approx(expected_width, rel=0.25)
    assert 0.70 < intervals.auc.estimate < 0.82  # binormal AUC with d' = 1 is 0.76
    again = bootstrap_intervals(labels, scores, threshold=0.5, num_resamples=800, seed=7)
    assert again == intervals


def test_bootstrap_with_one_class_reports_none_not_a_number() -> None:
    intervals = bootstrap_intervals(np.zeros(20), np.arange(20.0), threshold=14.5, num_resamples=50)
    assert intervals.auc.estimate is None and intervals.sensitivity.low is None
    assert intervals.specificity.estimate == 0.75


def test_calibrate_command_stores_a_sensitivity_operating_point(tiny_nih_model, tmp_path: Path) -> None:
    from cxr_anomaly.cli import main

    out = tmp_path / "sensitive.pt"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(tiny_nih_model.checkpoint),
                "--data",
                str(tiny_nih_model.manifest),
                "--target-sensitivity",
                "0.8",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    calibration = load_checkpoint(out).calibration
    assert calibration.operating_point == "sensitivity"
    assert calibration.num_normals == 24 and calibration.num_abnormals == 24
    assert calibration.validation_sensitivity >= 0.8
    assert load_checkpoint(tiny_nih_model.checkpoint).calibration.operating_point == "specificity"


def test_calibrate_on_normal_films_only_never_picks_an_absurd_threshold(tiny_nih_model, tmp_path: Path) -> None:
    from cxr_anomaly.jobs.calibrate import calibrate_job

    manifest = pd.read_csv(tiny_nih_model.manifest)
    normals_only = tmp_path / "normals.csv"
    manifest[manifest["label"] == 0].to_csv(normals_only, index=False)
    outcome = calibrate_job(
        tiny_nih_model.checkpoint,
        [normals_only],
        target_sensitivity=0.9,
        out_path=tmp_path / "model.pt",
        progress=False,
    )
    calibration = load_checkpoint(outcome.checkpoint).calibration
    quantiles = np.array(calibration.normal_quantiles)
    assert calibration.operating_point == "specificity" and outcome.num_abnormal == 0
    assert quantiles[0] < calibration.threshold < quantiles[-1]
    assert calibration.validation_specificity == pytest.approx(0.95, abs=1 / 24 + 1e-9)


def test_evaluate_reports_sensitivity_and_specificity_with_bootstrap_intervals(tiny_nih_model, tmp_path: Path) -> None:
    from cxr_anomaly.jobs.evaluate import evaluate_job

    manifest = pd.read_csv(tiny_nih_model.nih1000 / "manifest.csv")
    manifest["path"] = [str(tiny_nih_model.nih1000 / path) for path in manifest["path"]]
    test_rows = tmp_path / "test.csv"
    manifest[manifest["split"] == "test"].groupby("label").head(30).to_csv(test_rows, index=False)
    outcome = evaluate_job(
        tiny_nih_model.checkpoint, [test_rows], tmp_path / "eval", progress=False, bootstrap_resamples=300
    )
    metrics = json.loads(outcome.metrics_path.read_text())
    intervals = metrics["bootstrap_95ci"]
    assert intervals["auc"]["estimate"] == pytest.approx(metrics["auc"])
    assert intervals["sensitivity"]["estimate"] == metrics["sensitivity_at_threshold"]
    for name in ("auc", "sensitivity", "specificity"):
        assert intervals[name]["low"] <= intervals[name]["estimate"] <= intervals[name]["high"]
        assert intervals[name]["high"] - intervals[name]["low"] > 0.0
    assert metrics["operating_point"]["operating_point"] == "specificity"
    assert intervals["threshold"] == metrics["threshold"]
    assert outcome.intervals is not None and outcome.intervals.to_dict() == intervals
    assert outcome.intervals.auc.describe().startswith(f"{metrics['auc']:.3f} [")


@pytest.fixture(scope="module")
def real_darkness_scores(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """A real score of real films: 1 - mean brightness of 30 normal and 30 abnormal NIH1000 test
    films (abnormal NIH films are darker, so this is a weak pixel detector)."""
    from cxr_anomaly.io import read_image

    folder = shared_data / "nih1000"
    manifest = pd.read_csv(folder / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    scores = {
        label: np.array(
            [1.0 - read_image(folder / path).array.mean() for path in test[test["label"] == label]["path"].head(30)]
        )
        for label in (0, 1)
    }
    return scores[0], scores[1]


def test_thirty_of_thirty_is_not_reported_as_certain(real_darkness_scores) -> None:
    normal, abnormal = real_darkness_scores
    labels = np.r_[np.zeros(30), np.ones(30)]
    # All correct: every abnormal film scored above every normal one, threshold between them.
    separated = np.r_[normal, abnormal - abnormal.min() + normal.max() + 0.01]
    intervals = bootstrap_intervals(labels, separated, threshold=normal.max() + 0.005, num_resamples=200)
    for interval in (intervals.sensitivity, intervals.specificity):
        assert interval.estimate == 1.0 and interval.method == "wilson"
        assert (interval.low, interval.high) == pytest.approx((0.8865, 1.0), abs=1e-4)  # not [1, 1]
    assert intervals.auc.estimate == 1.0 and intervals.auc.method == "bamber_wilson"
    assert intervals.auc.low == pytest.approx(0.8865, abs=1e-4) and intervals.auc.high == 1.0
    # None correct: the same films with the classes' scores swapped.
    swapped = np.r_[separated[30:], separated[:30]]
    intervals = bootstrap_intervals(labels, swapped, threshold=normal.max() + 0.005, num_resamples=200)
    for interval in (intervals.sensitivity, intervals.specificity, intervals.auc):
        assert interval.estimate == 0.0
        assert interval.low == 0.0 and interval.high == pytest.approx(0.1135, abs=1e-4)


def test_a_tiny_class_gets_a_wide_interval(real_darkness_scores) -> None:
    normal, abnormal = real_darkness_scores
    labels = np.r_[np.zeros(30), np.ones(1)]
    scores = np.r_[normal, abnormal[:1]]
    intervals = bootstrap_intervals(labels, scores, threshold=float(np.median(normal)), num_resamples=200)
    sensitivity = intervals.sensitivity
    assert sensitivity.estimate in (0.0, 1.0) and sensitivity.high - sensitivity.low > 0.75  # one film
    auc = intervals.auc
    assert auc.method == "bamber_wilson" and auc.low <= auc.estimate <= auc.high
    assert auc.high - auc.low > 0.5  # a percentile bootstrap resamples that one film every time


def test_auc_interval_is_bca_on_real_scores_and_reproducible(real_darkness_scores) -> None:
    normal, abnormal = real_darkness_scores
    labels = np.r_[np.zeros(30), np.ones(30)]
    scores = np.r_[normal, abnormal]
    intervals = bootstrap_intervals(labels, scores, threshold=float(np.median(scores)), num_resamples=500, seed=3)
    auc = intervals.auc
    assert auc.method == "bca_bootstrap" and auc.low < auc.estimate < auc.high
    assert 0.1 < auc.high - auc.low < 0.5  # 30 films a class: about +-0.15
    assert (
        bootstrap_intervals(labels, scores, threshold=float(np.median(scores)), num_resamples=500, seed=3) == intervals
    )
    assert bootstrap_intervals(labels, scores, threshold=float(np.median(scores)), num_resamples=500, seed=4).auc != auc
