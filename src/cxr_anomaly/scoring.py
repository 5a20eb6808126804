"""Anomaly scores (eq. 6) and their two normalisations.

A(x) = λ1·|x - x'|_1 + λ2·(1 - D(x')) + λ3·||z - z'||_2, where λ1, λ2 and λ3 are
``ScoreConfig.weight_reconstruction``, ``weight_adversarial`` and ``weight_latent``. The
components are kept beside the combined score, so users see which one carries the signal.
Components of networks that the variant lacks are absent (NaN in tables) and left out of the sum.

Normalisations:

- :func:`min_max_normalise`: the paper's, over the scored set. It depends on the other films in
  the set, so it is for reproducing the paper's table only.
- :class:`~cxr_anomaly.calibration.Calibration` (re-exported here): fitted on validation films and
  stored in the checkpoint. It maps a raw score to a robust z-score against normal films, to a
  percentile among them and to a decision at a stated operating point, so a film scored alone gets
  the same numbers as inside a batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .calibration import NUM_STORED_QUANTILES, Calibration, fit_calibration  # re-exported
from .config import Config
from .data.dataset import to_model_tensor
from .inference import inference_autocast, resolve_precision, to_channels_last, to_device
from .models.tang2019 import OneClassDetector

logger = logging.getLogger(__name__)

__all__ = ["Calibration", "ScoreResult", "combine", "fit_calibration", "min_max_normalise", "score_pixels",
           "NUM_STORED_QUANTILES"]


@dataclass
class ScoreResult:
    """Per-image scores, all arrays of shape (N,).

    Attributes:
        raw: the weighted sum of eq. 6.
        reconstruction: mean |x - x'| over pixels.
        adversarial: 1 - D(x'); NaN for variants without D.
        latent: mean (z - z')² over code entries; NaN for variants without E.
        reconstructions: x' as uint8 images (N, H, W) when asked for, else None.
        code_distance: mean distance of z = UE(x) to the nearest training normals' codes; NaN
            when the detector stores no codes.
    """

    raw: np.ndarray
    reconstruction: np.ndarray
    adversarial: np.ndarray
    latent: np.ndarray
    reconstructions: np.ndarray | None = None
    code_distance: np.ndarray | None = None


def min_max_normalise(raw: np.ndarray) -> np.ndarray:
    """The paper's normalisation over the scored set: (A - min) / (max - min)."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size == 0:
        return raw
    low, high = float(raw.min()), float(raw.max())
    return (raw - low) / (high - low) if high > low else np.zeros_like(raw)


def combine(config: Config, reconstruction: np.ndarray, adversarial: np.ndarray,
            latent: np.ndarray, code_distance: np.ndarray | None = None) -> np.ndarray:
    """The raw score of ``config.score.method``.

    ``eq6``: the weighted sum of eq. 6; NaN components (absent networks) contribute nothing.
    ``code_knn``: the code distance itself.

    Raises:
        ValueError: ``code_knn`` asked for but the detector stores no training codes.
    """
    weights = config.score
    if weights.method == "code_knn":
        if code_distance is None or (len(code_distance) and np.all(np.isnan(code_distance))):
            raise ValueError(
                "score.method='code_knn' but the detector stores no codes of training normals "
                "(a checkpoint from an older version?); retrain, or set score.method='eq6'")
        return code_distance
    total = weights.weight_reconstruction * reconstruction
    if not np.all(np.isnan(adversarial)):
        total = total + weights.weight_adversarial * adversarial
    if not np.all(np.isnan(latent)):
        total = total + weights.weight_latent * latent
    return total


@torch.no_grad()
def score_pixels(
    detector: OneClassDetector,
    pixels: np.ndarray,
    config: Config,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    keep_reconstructions: bool = False,
    precision: str = "fp32",
) -> ScoreResult:
    """Score uint8 images (N, H, W) with a detector in eval mode (no input noise).

    BatchNorm uses its running statistics, so a film's score does not depend on its batch.
    ``precision`` is ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"`` (bf16 only where the device
    computes it natively; see :mod:`cxr_anomaly.inference`). The detector's weights are put in
    channels_last layout in place (their values are unchanged): the faster layout on CPU and CUDA.
    """
    detector.eval()
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    to_channels_last(detector)
    parts: dict[str, list[np.ndarray]] = {"rec": [], "adv": [], "lat": [], "img": [], "code": []}
    for start in range(0, len(pixels), batch_size):
        batch = to_device(to_model_tensor(pixels[start:start + batch_size], config.data), device)  # (B, 1, H, W)
        with torch.inference_mode(), inference_autocast(device, precision):
            components = detector.score_components(batch)
        size = len(batch)
        for key, values in (("rec", components.reconstruction), ("adv", components.adversarial),
                            ("lat", components.latent), ("code", components.code_distance)):
            # A network the variant lacks gives no values: NaN marks the component as absent.
            parts[key].append(np.full(size, np.nan) if values is None else values.cpu().numpy())
        if keep_reconstructions:
            image = (components.reconstruction_image.squeeze(1).cpu().numpy() + 1.0) * 127.5
            parts["img"].append(np.clip(np.rint(image), 0, 255).astype(np.uint8))  # (B, H, W)

    def join(key: str) -> np.ndarray:
        return np.concatenate(parts[key]).astype(np.float64) if parts[key] else np.zeros(0)

    reconstruction, adversarial, latent = join("rec"), join("adv"), join("lat")
    code_distance = join("code")
    reconstructions = None
    if keep_reconstructions:
        size = config.data.image_size
        reconstructions = (np.concatenate(parts["img"]) if parts["img"]
                           else np.zeros((0, size, size), dtype=np.uint8))
    return ScoreResult(
        raw=combine(config, reconstruction, adversarial, latent, code_distance),
        reconstruction=reconstruction,
        adversarial=adversarial,
        latent=latent,
        reconstructions=reconstructions,
        code_distance=code_distance,
    )


@torch.no_grad()
def store_normal_codes(
    detector: OneClassDetector,
    train_pixels: np.ndarray,
    config: Config,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> None:
    """Encode the training normals (N, H, W) in eval mode and store their codes in the detector.

    Afterwards :func:`score_pixels` also returns ``code_distance``, the ``score.method="code_knn"``
    score. Only normal films may be passed: they define what "near" means.
    """
    detector.eval()
    device = torch.device(device)
    codes = []
    for start in range(0, len(train_pixels), batch_size):
        batch = to_model_tensor(train_pixels[start:start + batch_size], config.data).to(device)  # (B, 1, H, W)
        codes.append(detector.unet.encoder(batch).code.flatten(1).float())  # (B, latent_dim)
    detector.store_normal_codes(torch.cat(codes), config.score.neighbours)
    logger.info("stored the codes of %d training normals for the code-space kNN score", len(train_pixels))
