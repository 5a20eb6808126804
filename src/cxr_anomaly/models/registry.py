"""The detector families by name: build one from a configuration, or fit one on normal films.

``config.method`` names the family. Checkpoints, the pipeline, the service and the export build
detectors only through :func:`build_detector` and :func:`fit_detector`, so adding a family
means adding a folder and one entry here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import METHODS, Config
from ..errors import ConfigError
from .base import AnomalyDetector
from .features import FeatureDetector, fit_features
from .tang2019 import Tang2019Detector
from .tang2019.training import train_detector

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """A fitted detector and a plain-value record of the fit for the checkpoint.

    Attributes:
        detector: the fitted detector, in eval mode.
        record: JSON-serialisable facts of the fit (films used, seconds, history, ...).
        world_size: processes that took part (several only for tang2019 under torchrun).
    """

    detector: AnomalyDetector
    record: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1


def build_detector(config: Config, *, pretrained: bool = True) -> AnomalyDetector:
    """An unfitted detector of ``config.method``.

    ``pretrained=False`` skips reading pretrained weights that a checkpoint will overwrite.
    """
    if config.method == "features":
        return FeatureDetector(config, pretrained=pretrained)
    if config.method == "tang2019":
        return Tang2019Detector(config)
    raise ConfigError(f"method={config.method!r}; expected one of {METHODS}")


def fit_detector(
    config: Config,
    train_pixels: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Fit the detector of ``config.method`` on uint8 normal films (N, S, S).

    ``features`` fine-tunes its backbone on the normals (``features.finetune_epochs``), then fits
    its models of their features in one pass; ``tang2019`` trains its GAN (with training states
    in ``run_dir``, resumable, and DistributedDataParallel under torchrun). Both compute in
    ``train.precision`` and record the precision used.
    """
    if config.method == "features":
        fitted = fit_features(config, train_pixels, device=device, precision=config.train.precision,
                              progress=progress)
        return FitResult(fitted.detector, fitted.record())
    if config.method == "tang2019":
        result = train_detector(config, train_pixels, progress=progress, run_dir=run_dir, resume=resume)
        record = {
            "family": "tang2019",
            "num_train_images": result.num_train_images,
            "seconds": result.seconds,
            "history": [vars(log).copy() for log in result.history],
            "world_size": result.world_size,
            "resumed_from": None if result.resumed_from is None else list(result.resumed_from),
            "rank_weight_difference": result.rank_weight_difference,
            "precision": result.precision,
        }
        return FitResult(Tang2019Detector(config, result.detector).eval(), record, result.world_size)
    raise ConfigError(f"method={config.method!r}; expected one of {METHODS}")
