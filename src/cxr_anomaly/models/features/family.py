"""The features family's record for the registry (:mod:`cxr_anomaly.models.family`)."""

from __future__ import annotations

import numpy as np

from ...config import Config, with_overrides
from ...errors import ConfigError
from ..base import AnomalyDetector
from ..family import BenchmarkCells, DetectorFamily, FitOptions, FitResult
from .config import FEATURE_SCORES, NAME, SETTINGS
from .fitting import fit_features
from .refit import add_normals
from .torch_model import FeatureDetector


def build(config: Config, pretrained: bool = True) -> AnomalyDetector:
    """An unfitted :class:`FeatureDetector` (ImageNet weights unless ``pretrained=False``)."""
    return FeatureDetector(config, pretrained=pretrained)


def fit(config: Config, train_pixels: np.ndarray, options: FitOptions) -> FitResult:
    """Fine-tune the backbone on the normals (``features.finetune_epochs``), then fit the models
    of their features in one pass, in ``train.precision``."""
    fitted = fit_features(
        config, train_pixels, device=options.device, precision=config.train.precision, progress=options.progress
    )
    return FitResult(fitted.detector, fitted.record())


def describe(config: Config) -> str:
    """``features: BACKBONE, 224 px, intensity equalize``."""
    return f"{NAME}: {config.features.backbone}, {config.data.image_size} px, intensity {config.data.intensity}"


def check_setting(spec: str, setting: str) -> None:
    """``features:SCORE`` names one of the stored feature scores."""
    if setting and setting not in FEATURE_SCORES:
        raise ConfigError(f"method {spec!r}: unknown feature score {setting!r}; expected one of {FEATURE_SCORES}")


FAMILY = DetectorFamily(
    name=NAME,
    detector_class=FeatureDetector,
    build=build,
    fit=fit,
    config_sections=("features",),
    describe=describe,
    benchmark=BenchmarkCells(
        spec_help=f"{NAME}, {NAME}:SCORE",
        check_setting=check_setting,
        setting_refits=False,
        cell_config=lambda config, setting, seed: with_overrides(config, "features", seed=seed),
        score_key=lambda config, setting: setting or config.features.score,
        score_label=lambda config, setting: setting or config.features.score,
        # all three feature scores are stored as components, whichever is the raw score
        unfingerprinted=("features.score",),
    ),
    add_normals=add_normals,
    settings=SETTINGS,
)
