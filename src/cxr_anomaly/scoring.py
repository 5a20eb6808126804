"""Scoring films with any detector family, and the normalisations of a raw score.

:func:`score_films` runs a fitted :class:`~cxr_anomaly.models.base.AnomalyDetector` over uint8
films in batches and returns the raw score (higher is more abnormal), the family's named
components and, when asked for, the anomaly maps (heatmaps) and reconstructions.

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
from dataclasses import dataclass, field

import numpy as np
import torch

from .calibration import NUM_STORED_QUANTILES, Calibration, fit_calibration  # re-exported
from .inference import inference_autocast, resolve_precision, to_channels_last
from .models.base import AnomalyDetector

logger = logging.getLogger(__name__)

__all__ = ["Calibration", "ScoreResult", "fit_calibration", "min_max_normalise", "score_films", "NUM_STORED_QUANTILES"]


@dataclass
class ScoreResult:
    """Per-film scores of one detector.

    Attributes:
        raw: the detector's raw score, (N,).
        components: the family's components by name, each (N,) float64; NaN where absent.
        anomaly_maps: float32 (N, h, w) anomaly maps when asked for, else None.
        reconstructions: uint8 (N, S, S) reconstructions when asked for and the family
            reconstructs, else None.
    """

    raw: np.ndarray
    components: dict[str, np.ndarray] = field(default_factory=dict)
    anomaly_maps: np.ndarray | None = None
    reconstructions: np.ndarray | None = None


def min_max_normalise(raw: np.ndarray) -> np.ndarray:
    """The paper's normalisation over the scored set: (A - min) / (max - min)."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size == 0:
        return raw
    low, high = float(raw.min()), float(raw.max())
    return (raw - low) / (high - low) if high > low else np.zeros_like(raw)


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """Model-space images (N, 1, S, S) in [-1, 1] -> uint8 (N, S, S)."""
    grey = (images.squeeze(1).float().cpu().numpy() + 1.0) * 127.5
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


@torch.no_grad()
def score_films(
    detector: AnomalyDetector,
    pixels: np.ndarray,
    *,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    keep_maps: bool = False,
    precision: str = "auto",
) -> ScoreResult:
    """Score films (N, S, S) of uint8 or uint16 codes, decoded at the detector's input size, in eval mode.

    A film's score does not depend on its batch (BatchNorm uses running statistics; feature
    banks are fixed). ``precision`` is ``"auto"`` (bf16 autocast where the device computes bf16
    natively, fp32 elsewhere; see :mod:`cxr_anomaly.inference`), ``"fp32"`` or ``"bf16"``.
    ``device`` defaults to where the detector's weights are. ``batch_size`` defaults to the
    detector's :meth:`~cxr_anomaly.models.base.AnomalyDetector.scoring_batch_size` for that
    device. The weights are put in channels_last layout in place (values unchanged): the faster
    layout on CPU and CUDA.

    Raises:
        ValueError: ``batch_size`` is below 1.
    """
    detector.eval()
    device = torch.device(device) if device is not None else next(detector.parameters()).device
    batch_size = detector.scoring_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected at least 1")
    precision = resolve_precision(precision, device)
    to_channels_last(detector)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("raw", *detector.component_names)}
    maps: list[np.ndarray] = []
    reconstructions: list[np.ndarray] = []
    for start in range(0, len(pixels), batch_size):
        batch = detector.model_input(pixels[start : start + batch_size], device)  # (B, C, S, S)
        with torch.inference_mode(), inference_autocast(device, precision):
            output = detector(batch)
        parts["raw"].append(output.score.float().cpu().numpy())
        for name in detector.component_names:
            parts[name].append(output.components[name].float().cpu().numpy())
        if keep_maps:
            maps.append(output.anomaly_map.squeeze(1).float().cpu().numpy())  # (B, h, w)
            if output.reconstruction is not None:
                reconstructions.append(to_uint8_images(output.reconstruction))

    def join(name: str) -> np.ndarray:
        return np.concatenate(parts[name]).astype(np.float64) if parts[name] else np.zeros(0)

    return ScoreResult(
        raw=join("raw"),
        components={name: join(name) for name in detector.component_names},
        anomaly_maps=(np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32)) if keep_maps else None,
        reconstructions=np.concatenate(reconstructions) if reconstructions else None,
    )
