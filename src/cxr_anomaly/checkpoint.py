"""Checkpoints: weights, the full config, the calibration and the package version.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python values (dicts,
lists, strings, numbers). It is loaded with ``torch.load(weights_only=True)``, whose restricted
unpickler refuses anything else, so a file from an untrusted source cannot run code on load.
Writes are atomic (temporary file, fsync, rename: :mod:`cxr_anomaly.files`): a crash never
leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, config_to_dict, paper_method, stored_config_from_dict
from .data.copies import pack_signatures, unpack_signatures
from .errors import CheckpointError, ConfigError
from .files import CHECKPOINT_FORMAT, FORMAT_VERSION, atomic_torch_save, read_checkpoint_payload, version_note
from .inference import resolve_device, resolve_precision
from .models.base import AnomalyDetector
from .models.registry import build_detector
from .scoring import Calibration, ScoreResult, score_films
from .version import __version__

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A detector ready to score, with everything its checkpoint recorded."""

    detector: AnomalyDetector
    config: Config
    calibration: Calibration | None
    package_version: str
    training: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    packed_training_signatures: torch.Tensor | None = None  # int8 (N, 1024), see data.copies; None in older checkpoints
    precision: str = "auto"  # what score_films computes in: auto (bf16 where native), fp32 or bf16

    @property
    def training_signatures(self) -> np.ndarray | None:
        """The training films' signatures (N, 1024), unpacked on demand: only ``evaluate`` reads
        them, so loading a checkpoint to score or serve does not pay for them."""
        return None if self.packed_training_signatures is None else unpack_signatures(self.packed_training_signatures)

    @property
    def description(self) -> str:
        """The detector's one-line description (family, backbone or variant, score)."""
        return self.detector.description

    @property
    def device(self) -> torch.device:
        """Where the detector's weights are, and so where it scores."""
        return next(self.detector.parameters()).device

    @property
    def computes_in(self) -> str:
        """``fp32`` or ``bf16``: :attr:`precision` with ``auto`` resolved for :attr:`device`."""
        return resolve_precision(self.precision, self.device)

    @property
    def anomaly_map_scale(self) -> float:
        """The detector's heatmap scale for films scored without a calibrated range."""
        return self.detector.anomaly_map_scale

    def score_films(self, pixels: np.ndarray, *, keep_maps: bool = False) -> ScoreResult:
        """Score uint8 films (N, S, S) with the detector, in :attr:`precision`:
        :func:`cxr_anomaly.scoring.score_films`."""
        return score_films(self.detector, pixels, keep_maps=keep_maps, precision=self.precision)


def save_checkpoint(
    path: str | Path,
    detector: AnomalyDetector,
    config: Config,
    *,
    calibration: Calibration | None = None,
    training: dict[str, Any] | None = None,
    training_signatures: np.ndarray | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path.

    ``training_signatures`` (:func:`cxr_anomaly.data.copies.film_signatures` of the training
    films) let ``evaluate`` find test films that are copies of training films; stored as int8,
    1 KB a film.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "config": config_to_dict(config),
        "state_dict": {key: value.detach().cpu() for key, value in detector.state_dict().items()},
        "calibration": None if calibration is None else calibration.to_dict(),
        "training": training or {},
        "training_signatures": None if training_signatures is None else pack_signatures(training_signatures),
    }
    atomic_torch_save(payload, path)
    logger.info("wrote checkpoint %s", path)
    return Path(path)


def load_checkpoint(path: str | Path, *, device: torch.device | str = "cpu", precision: str = "auto") -> LoadedModel:
    """Load a checkpoint into a detector in eval mode on ``device`` (``auto``: CUDA where there
    is one), to score in ``precision`` (``auto``: bf16 where the device computes it natively,
    else fp32; ``fp32``; ``bf16``).

    Raises:
        CheckpointError: see :func:`read_checkpoint_payload`, or weights that do not fit the
            stored configuration.
    """
    payload = read_checkpoint_payload(path)
    try:
        stored_config = payload.get("config")
        if payload.get("format_version") == 1 and isinstance(stored_config, dict):
            # version 1 predates the families: it knew only the paper's
            stored_config = {**stored_config, "method": paper_method()}
        config = stored_config_from_dict(stored_config)
    except (ConfigError, KeyError, TypeError) as error:
        raise CheckpointError(path, f"invalid stored configuration: {error}{version_note(payload)}") from error

    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(path, f"no weights in the checkpoint (state_dict is {type(state_dict).__name__})")
    if payload.get("format_version") == 1:
        # Version 1 held only the paper's networks, at the top level of the state_dict.
        state_dict = {f"networks.{key}": value for key, value in state_dict.items()}
    try:
        detector = build_detector(config, pretrained=False)
    except ConfigError as error:
        raise CheckpointError(path, f"cannot build its {config.method} detector: {error}") from error
    try:
        detector.load_state_dict(state_dict)
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(
            path, f"weights do not match the stored configuration: {error}{version_note(payload)}"
        ) from error
    detector.to(resolve_device(str(device))).eval()
    calibration = payload.get("calibration")
    return LoadedModel(
        detector=detector,
        config=config,
        calibration=None if calibration is None else Calibration.from_dict(calibration),
        package_version=str(payload.get("package_version")),
        training=dict(payload.get("training") or {}),
        path=str(path),
        packed_training_signatures=_packed_training_signatures(payload),
        precision=precision,
    )


def _packed_training_signatures(payload: dict[str, Any]) -> torch.Tensor | None:
    """The stored int8 signatures of the training films; None in checkpoints written without them."""
    stored = payload.get("training_signatures")
    if not isinstance(stored, torch.Tensor) or stored.ndim != 2 or stored.dtype != torch.int8:
        return None
    return stored
