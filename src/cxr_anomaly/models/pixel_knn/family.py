"""The pixel_knn family's record for the registry (:mod:`cxr_anomaly.models.family`)."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ...config import Config
from ...data.dataset import preprocess_films
from ...errors import NoNormalImagesError
from ..base import AnomalyDetector
from ..family import BenchmarkCells, DetectorFamily, FitOptions, FitResult
from .config import SETTINGS
from .torch_model import NAME, NEIGHBOURS, PixelKNNDetector


def build(config: Config, pretrained: bool = True) -> AnomalyDetector:
    """An empty detector (nothing pretrained to read)."""
    return PixelKNNDetector(config)


def fit(config: Config, train_pixels: np.ndarray, options: FitOptions) -> FitResult:
    """Keep the preprocessed training normals as the bank, in one pass.

    Raises:
        NoNormalImagesError: fewer normal films than :data:`NEIGHBOURS`.
    """
    if len(train_pixels) < NEIGHBOURS:
        raise NoNormalImagesError(f"{NAME} needs at least {NEIGHBOURS} normal training films, got {len(train_pixels)}")
    started = time.perf_counter()
    detector = PixelKNNDetector(config)
    films = preprocess_films(train_pixels, config.data)  # (N, S, S) float32 in [0, 1]
    detector.bank = nn.Parameter(torch.from_numpy(films.reshape(len(films), -1)), requires_grad=False)
    seconds = time.perf_counter() - started
    record = {
        "family": NAME,
        "num_train_images": len(train_pixels),
        "neighbours": NEIGHBOURS,
        "seconds": seconds,
        "precision": "fp32",
    }
    return FitResult(detector.to(options.device).eval(), record)


def describe(config: Config) -> str:
    """``pixel_knn: 5-NN, 64 px, intensity none``."""
    return f"{NAME}: {NEIGHBOURS}-NN, {config.data.image_size} px, intensity {config.data.intensity}"


FAMILY = DetectorFamily(
    name=NAME,
    detector_class=PixelKNNDetector,
    build=build,
    fit=fit,
    config_sections=(),
    describe=describe,
    benchmark=BenchmarkCells(spec_help=NAME),
    settings=SETTINGS,
)
