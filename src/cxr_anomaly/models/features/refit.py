"""Adding normal films to a fitted feature detector without fitting it again from scratch.

A site adds its own normal films to a model fitted elsewhere (``cxr-anomaly train --resume-from``).
The backbone is kept as it was fitted: it is not fine-tuned again, so the new films pass through
it once and the refit takes time in proportion to them (plus a coreset selection over a bank-sized
set, the same whatever the number of old films). The heads are then:

- the Gaussian: Ledoit-Wolf on the pooled features of the old normals (kept in ``train_pooled``)
  and the new ones: exactly what a fit on the union would give with the same backbone;
- the pooled bank: the union's unit vectors, drawn by the same seeded subsample as a fit on the
  union when they are more than ``features.pooled_bank_size``: exact as well;
- the patch bank: greedy k-centre selection over the old bank and a random subset of the new
  films' patches (as many as a fit draws, at most 16 per bank entry). The old films' other
  patches are not kept (millions at 5,000 films), so this approximates a fit on the union:
  the old bank stands for the old films, as coresets of parts stand for a whole;
- the normal patch radius: the mean of the old radius and the new films' patches' radius
  against the new bank, weighted by film counts, since the old films' patches are not kept. It
  only scales heatmaps of uncalibrated models, and a refit is calibrated again.

A fit on the union would also fine-tune the backbone on the union (``features.finetune_epochs``);
a refit keeps the old backbone, so its features, and all three heads, differ from such a fit.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ...config import Config
from ...errors import RefitError
from ...inference import resolve_precision
from ..base import AnomalyDetector
from ..family import FitOptions, FitResult
from .fitting import (
    bank_candidates,
    coreset_bank,
    fit_pooled_heads,
    normal_features,
    normal_patch_radius,
    store_patch_heads,
)
from .torch_model import FeatureDetector

logger = logging.getLogger(__name__)


def check_refittable(detector: AnomalyDetector) -> FeatureDetector:
    """The detector, when it is a fitted :class:`FeatureDetector` that kept its normals' pooled features.

    Raises:
        RefitError: it is unfitted, or was fitted before ``train_pooled`` existed.
    """
    if not isinstance(detector, FeatureDetector) or not detector.is_fitted:
        raise RefitError(f"normals can be added only to a fitted features detector, not {detector.description}")
    if len(detector.train_pooled) == 0:
        raise RefitError(
            "this features model predates incremental refits: it does not hold its training normals' "
            "pooled features (train_pooled), so the Gaussian cannot be refitted on more normals; "
            "train it again on all its films with `cxr-anomaly train`"
        )
    return detector


def add_normals(detector: AnomalyDetector, config: Config, pixels: np.ndarray, options: FitOptions) -> FitResult:
    """Refit the heads of a fitted features detector on its normals and uint8 films (N, S, S) more
    (see the module docstring), in ``config.train.precision``; the detector is updated in place.

    The record holds what a fit's does (counts, bank, radius, precision) for the union, and
    ``films_added``, ``previous_num_train_images`` and ``seconds`` (this refit's).

    Raises:
        RefitError: see :func:`check_refittable`; or no films to add.
    """
    feature_detector = check_refittable(detector)
    if len(pixels) == 0:
        raise RefitError("no normal films to add")
    start = time.perf_counter()
    settings = config.features
    device = torch.device(options.device)
    precision = resolve_precision(config.train.precision, device)
    feature_detector.to(device).eval()
    previous = len(feature_detector.train_pooled)
    previous_radius = float(feature_detector.patch_radius)
    added = normal_features(feature_detector, pixels, device=device, precision=precision, progress=options.progress)
    generator = fit_pooled_heads(
        feature_detector, torch.cat([feature_detector.train_pooled.float().cpu(), added.pooled])
    )
    candidates = torch.cat(
        [
            feature_detector.patch_bank.float().cpu(),
            bank_candidates(added.patches, settings.memory_bank_size, generator),
        ]
    )
    bank = coreset_bank(candidates, settings.memory_bank_size, settings.coreset_projection_dim, generator)
    added_radius = normal_patch_radius(added.patches, bank, generator)
    radius = (previous * previous_radius + len(pixels) * added_radius) / (previous + len(pixels))
    store_patch_heads(feature_detector, bank, radius)
    seconds = time.perf_counter() - start
    logger.info(
        "added %d normal films to a features detector fitted on %d in %.1f s: memory bank %d, "
        "normal patch radius %.3f (was %.3f)",
        len(pixels),
        previous,
        seconds,
        len(bank),
        radius,
        previous_radius,
    )
    record = {
        "num_train_images": previous + len(pixels),
        "num_patches_seen": (previous + len(pixels)) * settings.patch_grid**2,
        "memory_bank_size": len(bank),
        "patch_radius": radius,
        "precision": precision,
        "films_added": len(pixels),
        "previous_num_train_images": previous,
        "seconds": seconds,
    }
    return FitResult(feature_detector, record)
