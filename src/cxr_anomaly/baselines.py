"""Pixel baselines that a one-class chest X-ray detector has to beat.

Both come from scikit-learn and are fitted on the same training normals, preprocessed the same
way (:func:`~cxr_anomaly.data.dataset.apply_intensity` with the run's ``DataConfig``), as the
networks they are compared with:

- :class:`PCABaseline`: mean squared error of the reconstruction from the first principal
  components of the normal films (a linear autoencoder);
- :class:`KNNBaseline`: mean Euclidean distance to the nearest training normals.

Higher scores mean "more abnormal", as for the detector's A(x).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from .config import DataConfig
from .data.dataset import apply_intensity
from .errors import NoNormalImagesError

logger = logging.getLogger(__name__)

DEFAULT_PCA_COMPONENTS = 5
DEFAULT_NEIGHBOURS = 5
BASELINE_IMAGE_SIZE = 64  # the pixel baselines read every film at 64 px, as the paper's model does
BASELINE_NAMES = {"pca5": "PCA(5) reconstruction, 64 px", "knn5": "5-NN pixel distance, 64 px"}


def flatten_pixels(pixels: np.ndarray, data_config: DataConfig) -> np.ndarray:
    """Preprocess uint8 images (N, H, W) like the detector's input and flatten to (N, H*W)."""
    images = apply_intensity(pixels, data_config.intensity)  # (N, H, W) float32 in [0, 1]
    return images.reshape(len(images), -1).astype(np.float64)


def _check_training_set(train_pixels: np.ndarray, needed: int, what: str) -> None:
    if len(train_pixels) < needed:
        raise NoNormalImagesError(f"{what} needs at least {needed} normal training images, got {len(train_pixels)}")


class PCABaseline:
    """Reconstruction error from the leading principal components of normal films."""

    def __init__(self, data_config: DataConfig, components: int = DEFAULT_PCA_COMPONENTS) -> None:
        if components < 1:
            raise ValueError(f"components={components}; must be >= 1")
        self.data_config = data_config
        self.components = components
        self.model: PCA | None = None

    def fit(self, train_pixels: np.ndarray) -> PCABaseline:
        """Fit on uint8 normal images (N, H, W); N must exceed the number of components."""
        _check_training_set(train_pixels, self.components + 1, f"PCA({self.components})")
        # The full SVD is deterministic, so the baseline needs no seed.
        self.model = PCA(n_components=self.components, svd_solver="full")
        self.model.fit(flatten_pixels(train_pixels, self.data_config))
        return self

    def score(self, pixels: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error per image, shape (N,)."""
        if self.model is None:
            raise RuntimeError("PCABaseline.score called before fit")
        flat = flatten_pixels(pixels, self.data_config)  # (N, H*W)
        restored = self.model.inverse_transform(self.model.transform(flat))
        return np.mean((flat - restored) ** 2, axis=1)


class KNNBaseline:
    """Mean Euclidean distance to the ``neighbours`` nearest normal training films."""

    def __init__(self, data_config: DataConfig, neighbours: int = DEFAULT_NEIGHBOURS) -> None:
        if neighbours < 1:
            raise ValueError(f"neighbours={neighbours}; must be >= 1")
        self.data_config = data_config
        self.neighbours = neighbours
        self.model: NearestNeighbors | None = None

    def fit(self, train_pixels: np.ndarray) -> KNNBaseline:
        """Index uint8 normal images (N, H, W); N must be at least ``neighbours``."""
        _check_training_set(train_pixels, self.neighbours, f"{self.neighbours}-NN")
        self.model = NearestNeighbors(n_neighbors=self.neighbours)
        self.model.fit(flatten_pixels(train_pixels, self.data_config))
        return self

    def score(self, pixels: np.ndarray) -> np.ndarray:
        """Mean distance to the nearest training normals per image, shape (N,)."""
        if self.model is None:
            raise RuntimeError("KNNBaseline.score called before fit")
        distances, _ = self.model.kneighbors(flatten_pixels(pixels, self.data_config))  # (N, k)
        return distances.mean(axis=1)


@dataclass
class BaselineScores:
    """Scores of every baseline on one set of images.

    Attributes:
        scores: baseline name (``pca5``, ``knn5``...) -> scores of shape (N,).
    """

    scores: dict[str, np.ndarray]


def fit_and_score_baselines(
    train_pixels: np.ndarray,
    score_sets: dict[str, np.ndarray],
    data_config: DataConfig,
    *,
    pca_components: int = DEFAULT_PCA_COMPONENTS,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> dict[str, BaselineScores]:
    """Fit PCA and kNN on normal training images and score each named set of images.

    Args:
        train_pixels: uint8 normal images (N, H, W), the detector's training set.
        score_sets: name (e.g. ``val``, ``test``) -> uint8 images (M, H, W) to score.
        data_config: preprocessing shared with the detector.
        pca_components: principal components kept.
        neighbours: k of the k-nearest-neighbour distance.

    Returns:
        set name -> :class:`BaselineScores` with keys ``pca{components}`` and ``knn{neighbours}``.
    """
    pca = PCABaseline(data_config, pca_components).fit(train_pixels)
    knn = KNNBaseline(data_config, neighbours).fit(train_pixels)
    logger.info("baselines fitted on %d normal images: PCA(%d), %d-NN", len(train_pixels), pca_components, neighbours)
    return {
        name: BaselineScores({f"pca{pca_components}": pca.score(pixels), f"knn{neighbours}": knn.score(pixels)})
        for name, pixels in score_sets.items()
    }


def named_baseline_scores(
    train_pixels: np.ndarray, score_sets: dict[str, np.ndarray]
) -> dict[str, dict[str, np.ndarray]]:
    """PCA(5) and 5-NN at 64 px (uint8 films decoded at :data:`BASELINE_IMAGE_SIZE`), fitted on
    the normal ``train_pixels``: set name -> {display name (:data:`BASELINE_NAMES`) -> scores (M,)}."""
    scored = fit_and_score_baselines(train_pixels, score_sets, DataConfig(image_size=BASELINE_IMAGE_SIZE))
    return {
        name: {BASELINE_NAMES[key]: values for key, values in result.scores.items()} for name, result in scored.items()
    }
