"""compute_metrics: the AUC beside the AUC within each view, the view-balanced and view-only AUCs."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_anomaly.evaluation import compute_metrics


def views_and_scores() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """80 films, 40 PA and 40 AP, half abnormal; the score separates PA films only."""
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 40)
    views = np.repeat(np.array(["PA", "AP"], dtype=object), 40)
    scores = rng.normal(size=80) + labels * np.where(views == "PA", 3.0, 0.0)
    return labels, views, scores


def test_without_resamples_every_metric_is_an_estimate_without_interval() -> None:
    labels, views, scores = views_and_scores()
    metrics = compute_metrics(labels, scores, views=views, ages=np.full(80, 40), num_resamples=0)
    assert metrics.auc_per_view["PA"] > 0.9 and 0.2 < metrics.auc_per_view["AP"] < 0.8
    assert metrics.auc_view_balanced == pytest.approx(np.mean(list(metrics.auc_per_view.values())))
    assert metrics.auc_view_only == pytest.approx(0.5)  # as many abnormal films in each view
    assert metrics.num_per_view == {"PA": {"normal": 20, "abnormal": 20}, "AP": {"normal": 20, "abnormal": 20}}
    for key in ("auc", "auc_view_balanced", "auc_view_only", "auc_view_PA", "auc_view_AP"):
        interval = metrics.interval(key)
        assert interval.estimate is not None and interval.low is None and interval.high is None, key


def test_with_resamples_the_intervals_hold_the_estimates() -> None:
    labels, views, scores = views_and_scores()
    metrics = compute_metrics(labels, scores, views=views, components={"part": scores}, num_resamples=50)
    for key in ("auc", "auc_view_balanced", "auc_view_PA", "auc_view_AP"):
        interval = metrics.interval(key)
        assert interval.low <= interval.estimate <= interval.high, key
    assert metrics.component_auc == {"part": metrics.auc}
    values = metrics.to_dict()
    assert values["intervals"]["auc"]["estimate"] == pytest.approx(metrics.auc)
