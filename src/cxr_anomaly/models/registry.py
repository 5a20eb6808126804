"""The detector families, listed once and found by name.

``config.method`` names the family. Checkpoints, the jobs, the service and the export build and
fit detectors only through :func:`build_detector` and :func:`fit_detector`, and read anything
else about a family from its record (:func:`family_of`), so adding a family means adding a
folder that exports a :class:`~cxr_anomaly.models.family.DetectorFamily` as ``FAMILY`` and one
entry in :data:`FAMILIES` (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..errors import ConfigError
from . import features, pixel_knn, tang2019
from .base import AnomalyDetector
from .family import DetectorFamily, FitOptions, FitResult

# Every family, in the order help texts list them.
FAMILIES: dict[str, DetectorFamily] = {
    family.name: family for family in (features.FAMILY, tang2019.FAMILY, pixel_knn.FAMILY)
}


def family_of(name: str) -> DetectorFamily:
    """The record of the family called ``name`` (a configuration's ``method``).

    Raises:
        ConfigError: no family has that name.
    """
    if name not in FAMILIES:
        raise ConfigError(f"method={name!r}; expected one of {tuple(FAMILIES)}")
    return FAMILIES[name]


def build_detector(config: Config, *, pretrained: bool = True) -> AnomalyDetector:
    """An unfitted detector of ``config.method``.

    ``pretrained=False`` skips reading pretrained weights that a checkpoint will overwrite.
    """
    return family_of(config.method).build(config, pretrained)


def fit_detector(
    config: Config,
    train_pixels: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Fit the detector of ``config.method`` on uint8 normal films (N, S, S), in
    ``train.precision``; the record names the precision used.

    ``run_dir`` and ``resume`` reach families that keep resumable training states.
    """
    options = FitOptions(device=device, progress=progress, run_dir=run_dir, resume=resume)
    return family_of(config.method).fit(config, train_pixels, options)


__all__ = ["FAMILIES", "DetectorFamily", "FitOptions", "FitResult", "build_detector", "family_of", "fit_detector"]
