"""Anomaly scores (eq. 6) and their two normalisations.

A(x) = λ1·|x - x'|_1 + λ2·(1 - D(x')) + λ3·||z - z'||_2, where λ1, λ2 and λ3 are
``ScoreConfig.weight_reconstruction``, ``weight_adversarial`` and ``weight_latent``. The
components are kept beside the combined score, so users see which one carries the signal.
Components of networks that the variant lacks are absent (NaN in tables) and left out of the sum.

Normalisations:

- :func:`min_max_normalise`: the paper's, over the scored set. It depends on the other films in
  the set, so it is for reproducing the paper's table only.
- :class:`Calibration`: fitted on normal validation films and stored in the checkpoint. It maps a
  raw score to a robust z-score against normal films and to a percentile among them, so a film
  scored alone gets the same number as inside a batch.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .config import Config
from .data.dataset import to_model_tensor
from .models.tang2019 import OneClassDetector

logger = logging.getLogger(__name__)

NUM_STORED_QUANTILES = 1001


@dataclass
class ScoreResult:
    """Per-image scores, all arrays of shape (N,).

    Attributes:
        raw: the weighted sum of eq. 6.
        reconstruction: mean |x - x'| over pixels.
        adversarial: 1 - D(x'); NaN for variants without D.
        latent: mean (z - z')² over code entries; NaN for variants without E.
        reconstructions: x' as uint8 images (N, H, W) when asked for, else None.
    """

    raw: np.ndarray
    reconstruction: np.ndarray
    adversarial: np.ndarray
    latent: np.ndarray
    reconstructions: np.ndarray | None = None


@dataclass
class Calibration:
    """Where a raw score lies among the scores of normal validation films.

    Attributes:
        normal_quantiles: quantiles 0, 0.001, ..., 1 of the normal films' raw scores.
        median: median of those scores.
        scale: 1.4826 x their median absolute deviation (a robust standard deviation).
        threshold: raw score above which a film is flagged; the ``target_specificity``
            quantile of the normal scores.
        target_specificity: the fraction of normal films meant to fall below ``threshold``.
        num_normals: how many normal films the calibration saw.
    """

    normal_quantiles: list[float]
    median: float
    scale: float
    threshold: float
    target_specificity: float
    num_normals: int

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """Robust z-score of raw scores against the normal films: 0 is a typical normal."""
        return (np.asarray(raw, dtype=np.float64) - self.median) / self.scale

    def percentile(self, raw: np.ndarray) -> np.ndarray:
        """Percentile (0-100) of raw scores among the normal films, by interpolation."""
        levels = np.linspace(0.0, 100.0, len(self.normal_quantiles))
        quantiles = np.maximum.accumulate(np.asarray(self.normal_quantiles, dtype=np.float64))
        return np.interp(np.asarray(raw, dtype=np.float64), quantiles, levels)

    def flag(self, raw: np.ndarray) -> np.ndarray:
        """True where a raw score exceeds the stored threshold."""
        return np.asarray(raw) > self.threshold

    def to_dict(self) -> dict[str, object]:
        """Plain values for a checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        return cls(**values)  # type: ignore[arg-type]


def fit_calibration(normal_raw_scores: np.ndarray, target_specificity: float) -> Calibration:
    """Fit a :class:`Calibration` on the raw scores of normal validation films.

    Raises:
        ValueError: fewer than 2 scores, or a non-finite score.
    """
    scores = np.asarray(normal_raw_scores, dtype=np.float64)
    if scores.size < 2:
        raise ValueError(f"calibration needs at least 2 normal scores, got {scores.size}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("calibration scores contain NaN or infinity")
    median = float(np.median(scores))
    scale = 1.4826 * float(np.median(np.abs(scores - median)))
    if scale <= 0.0:  # identical scores: fall back to the standard deviation, then to 1
        scale = float(scores.std()) or 1.0
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, NUM_STORED_QUANTILES))
    return Calibration(
        normal_quantiles=[float(value) for value in quantiles],
        median=median,
        scale=scale,
        threshold=float(np.quantile(scores, target_specificity)),
        target_specificity=target_specificity,
        num_normals=int(scores.size),
    )


def min_max_normalise(raw: np.ndarray) -> np.ndarray:
    """The paper's normalisation over the scored set: (A - min) / (max - min)."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size == 0:
        return raw
    low, high = float(raw.min()), float(raw.max())
    return (raw - low) / (high - low) if high > low else np.zeros_like(raw)


def combine(config: Config, reconstruction: np.ndarray, adversarial: np.ndarray,
            latent: np.ndarray) -> np.ndarray:
    """The weighted sum of eq. 6; NaN components (absent networks) contribute nothing."""
    weights = config.score
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
) -> ScoreResult:
    """Score uint8 images (N, H, W) with a detector in eval mode (no input noise).

    BatchNorm uses its running statistics, so a film's score does not depend on its batch.
    """
    detector.eval()
    device = torch.device(device)
    parts: dict[str, list[np.ndarray]] = {"rec": [], "adv": [], "lat": [], "img": []}
    for start in range(0, len(pixels), batch_size):
        batch = to_model_tensor(pixels[start:start + batch_size], config.data).to(device)  # (B, 1, H, W)
        components = detector.score_components(batch)
        parts["rec"].append(components.reconstruction.cpu().numpy())
        size = len(batch)
        parts["adv"].append(np.full(size, np.nan) if components.adversarial is None
                            else components.adversarial.cpu().numpy())
        parts["lat"].append(np.full(size, np.nan) if components.latent is None
                            else components.latent.cpu().numpy())
        if keep_reconstructions:
            image = (components.reconstruction_image.squeeze(1).cpu().numpy() + 1.0) * 127.5
            parts["img"].append(np.clip(np.rint(image), 0, 255).astype(np.uint8))  # (B, H, W)

    def join(key: str) -> np.ndarray:
        return np.concatenate(parts[key]).astype(np.float64) if parts[key] else np.zeros(0)

    reconstruction, adversarial, latent = join("rec"), join("adv"), join("lat")
    reconstructions = None
    if keep_reconstructions:
        size = config.data.image_size
        reconstructions = (np.concatenate(parts["img"]) if parts["img"]
                           else np.zeros((0, size, size), dtype=np.uint8))
    return ScoreResult(
        raw=combine(config, reconstruction, adversarial, latent),
        reconstruction=reconstruction,
        adversarial=adversarial,
        latent=latent,
        reconstructions=reconstructions,
    )
