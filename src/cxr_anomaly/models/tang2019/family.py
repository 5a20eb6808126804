"""The tang2019 family's record for the registry (:mod:`cxr_anomaly.models.family`)."""

from __future__ import annotations

import numpy as np

from ...config import Config, with_overrides
from ...errors import ConfigError
from ..base import AnomalyDetector
from ..family import RAW_SCORE, BenchmarkCells, DetectorFamily, FitOptions, FitResult
from . import resume, training
from .config import COMPONENTS, NAME, SETTINGS, VARIANTS
from .torch_model import Tang2019Detector, weighted_score


def build(config: Config, pretrained: bool = True) -> AnomalyDetector:
    """Unfitted networks of ``model.variant`` (nothing pretrained to read)."""
    return Tang2019Detector(config)


def fit(config: Config, train_pixels: np.ndarray, options: FitOptions) -> FitResult:
    """Train the GAN, with training states in ``run_dir`` (resumable) and DistributedDataParallel
    under torchrun, in ``train.precision``."""
    result = training.train_detector(
        config, train_pixels, progress=options.progress, run_dir=options.run_dir, resume=options.resume
    )
    record = {
        "family": NAME,
        "num_train_images": result.num_train_images,
        "seconds": result.seconds,
        "history": [vars(log).copy() for log in result.history],
        "world_size": result.world_size,
        "resumed_from": None if result.resumed_from is None else list(result.resumed_from),
        "rank_weight_difference": result.rank_weight_difference,
        "precision": result.precision,
    }
    return FitResult(Tang2019Detector(config, result.detector).eval(), record, result.world_size)


def describe(config: Config) -> str:
    """``tang2019: 15 epochs, base_channels 64, ..., score eq6, 64 px, intensity none``."""
    return (
        f"{NAME}: {config.train.epochs} epochs, {config.model.describe()}, score "
        f"{config.score.method}, {config.data.image_size} px, intensity {config.data.intensity}"
    )


def check_setting(spec: str, setting: str) -> None:
    """``tang2019:VARIANT`` names the networks to train; the variant is required."""
    if setting not in VARIANTS:
        raise ConfigError(f"method {spec!r}: {NAME} needs a variant, one of {VARIANTS} (e.g. {NAME}:u+d+e)")


FAMILY = DetectorFamily(
    name=NAME,
    detector_class=Tang2019Detector,
    build=build,
    fit=fit,
    config_sections=("model", "loss", "train", "score"),
    describe=describe,
    benchmark=BenchmarkCells(
        spec_help=f"{NAME}:VARIANT",
        check_setting=check_setting,
        setting_refits=True,
        cell_config=lambda config, setting, seed: with_overrides(config, "model", variant=setting),
        score_key=lambda config, setting: RAW_SCORE,
        score_label=lambda config, setting: config.score.method,
        variant=lambda config: config.model.variant,
    ),
    resume_config=resume.resolve_config_for_resume,
    score_from_components=lambda config, parts: weighted_score(config.score, *(parts[name] for name in COMPONENTS)),
    settings=SETTINGS,
)
