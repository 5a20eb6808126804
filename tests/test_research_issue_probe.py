"""The scores and the paired comparison of ``docs/notebook/research/issue_probe.py`` (issue 10's probe
rerun beside a checkpoint's evaluation)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY_ROOT))  # docs/notebook/research is a folder of the repository, not installed

from docs.notebook.research.issue_probe import paired_difference, probe_scores  # noqa: E402


def test_probe_scores_rank_a_film_far_from_the_normals_above_one_among_them() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(5.0, 1.0, size=(200, 16))  # positive, like pooled ReLU features
    near, far = train.mean(axis=0), train.mean(axis=0) + np.r_[np.full(8, 4.0), np.full(8, -4.0)]
    scores = probe_scores(train, np.stack([near, far]))
    assert set(scores) == {"probe_gaussian", "probe_cosine_knn5"}
    for values in scores.values():
        assert values.shape == (2,)
        assert values[1] > values[0]
    # the 5-NN distance is a cosine one: a film's brightness scale does not move it
    scaled = probe_scores(train, np.stack([near, far]) * 3.0)
    np.testing.assert_allclose(scaled["probe_cosine_knn5"], scores["probe_cosine_knn5"], rtol=1e-9)
    assert scaled["probe_gaussian"][0] > scores["probe_gaussian"][0]  # the Mahalanobis distance is not


def test_paired_difference_is_the_auc_gap_with_an_interval_around_it() -> None:
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(60, int), np.ones(40, int)]
    good = labels + rng.normal(0, 0.8, size=100)
    noise = rng.normal(0, 1, size=100)
    result = paired_difference(labels, good, noise, resamples=300)
    assert result["difference"] == roc_auc_score(labels, good) - roc_auc_score(labels, noise)
    assert result["low"] < result["difference"] < result["high"]
    assert result["low"] > 0  # a real signal against noise on 100 films
    same = paired_difference(labels, good, good, resamples=50)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}  # paired: both see each resample
