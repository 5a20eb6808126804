"""The detector families, listed once and found by name.

``config.method`` names the family. Checkpoints, the jobs, the service and the export build and
fit detectors only through :func:`build_detector` and :func:`fit_detector`, and read anything
else about a family from its record (:func:`family_of`), so adding a family means adding a
folder that exports a :class:`~cxr_anomaly.models.family.DetectorFamily` as ``FAMILY`` (and its
configuration, ``NAME`` and ``SETTINGS``) and one entry in :data:`PACKAGES`
(docs/architecture.md).

Importing this module registers every family's configuration sections with
:mod:`cxr_anomaly.config` (the package's ``__init__`` does it), without importing the detectors:
``FAMILIES`` is built on first use, since the detectors import torch and ``--help`` should not.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, register_families
from ..errors import ConfigError, RefitError
from . import features, pixel_knn, tang2019

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .base import AnomalyDetector
    from .family import DetectorFamily, FitOptions, FitResult

# Every family's package, in the order help texts list them.
PACKAGES = (features, tang2019, pixel_knn)

# The sections of a stored configuration in the order files have always had them.
STORED_SECTION_ORDER = ("model", "loss", "train", "data", "score", "features")

register_families({package.NAME: package.SETTINGS for package in PACKAGES}, STORED_SECTION_ORDER)


@cache
def families() -> dict[str, DetectorFamily]:
    """Every family's record by name (``FAMILIES``), importing the detectors on first use."""
    records: dict[str, DetectorFamily] = {}
    for package in PACKAGES:
        if package.FAMILY.name != package.NAME or package.FAMILY.settings is not package.SETTINGS:
            raise ConfigError(f"family {package.NAME!r}: its record's name or settings differ from its package's")
        records[package.NAME] = package.FAMILY
    return records


def __getattr__(name: str) -> Any:
    # FAMILIES, the records by name, built on first use (PEP 562)
    if name == "FAMILIES":
        return families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def family_of(name: str) -> DetectorFamily:
    """The record of the family called ``name`` (a configuration's ``method``).

    Raises:
        ConfigError: no family has that name.
    """
    records = families()
    if name not in records:
        raise ConfigError(f"method={name!r}; expected one of {tuple(records)}")
    return records[name]


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
    from .family import FitOptions

    options = FitOptions(device=device, progress=progress, run_dir=run_dir, resume=resume)
    return family_of(config.method).fit(config, train_pixels, options)


def refit_of(method: str) -> Callable[[AnomalyDetector, Config, np.ndarray, FitOptions], FitResult]:
    """The ``add_normals`` of ``method``'s family: how normal films are added to a fitted detector.

    Raises:
        RefitError: its family has no incremental refit.
    """
    refit = family_of(method).add_normals
    if refit is None:
        raise RefitError(
            f"a {method} model cannot take more normal films without fitting it again (the method has "
            "no incremental refit): train it on all its films with `cxr-anomaly train`"
        )
    return refit


def add_normals(
    detector: AnomalyDetector,
    config: Config,
    train_pixels: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FitResult:
    """Refit a fitted ``config.method`` detector on its normals and uint8 normal films (N, S, S)
    more, as its family's ``add_normals`` does (in ``train.precision``).

    Raises:
        RefitError: see :func:`refit_of`, or the family's own refusals.
    """
    from .family import FitOptions

    refit = refit_of(config.method)
    return refit(detector, config, train_pixels, FitOptions(device=device, progress=progress))


__all__ = ["PACKAGES", "add_normals", "build_detector", "refit_of", "families", "family_of", "fit_detector"]
