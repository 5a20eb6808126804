"""Checkpoints: weights, the full config, the calibration and the package version.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python values (dicts,
lists, strings, numbers). It is loaded with ``torch.load(weights_only=True)``, whose restricted
unpickler refuses anything else, so a file from an untrusted source cannot run code on load.
Writes are atomic (temporary file, fsync, rename): a crash never leaves a half-written
checkpoint under the final name.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import Config, config_from_dict, config_to_dict
from .errors import CheckpointError, ConfigError
from .models.tang2019 import OneClassDetector
from .scoring import Calibration

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cxr-anomaly-checkpoint"
FORMAT_VERSION = 1  # bump when the layout changes incompatibly


@dataclass
class LoadedModel:
    """A detector ready to score, with everything its checkpoint recorded."""

    detector: OneClassDetector
    config: Config
    calibration: Calibration | None
    package_version: str
    training: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def atomic_torch_save(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def save_checkpoint(
    path: str | Path,
    detector: OneClassDetector,
    config: Config,
    *,
    calibration: Calibration | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config": config_to_dict(config),
        "state_dict": {key: value.detach().cpu() for key, value in detector.state_dict().items()},
        "calibration": None if calibration is None else calibration.to_dict(),
        "training": training or {},
    }
    atomic_torch_save(payload, path)
    logger.info("wrote checkpoint %s", path)
    return Path(path)


def read_checkpoint_payload(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's raw dictionary safely and check its format and version.

    Raises:
        CheckpointError: missing file, unsafe content (a pickle that would run code), not a
            cxr-anomaly checkpoint, or a format newer than this package understands.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            path, f"refused to load: the file holds objects other than tensors and plain values ({error})"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(path, f"not a readable checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(path, "not a cxr-anomaly checkpoint (no 'format' marker)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"checkpoint format version {version} written by cxr-anomaly "
            f"{payload.get('package_version')} is newer than this cxr-anomaly {__version__} "
            f"understands (format version {FORMAT_VERSION}); upgrade cxr-anomaly",
        )
    return payload


def load_checkpoint(path: str | Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a checkpoint into a detector in eval mode.

    Raises:
        CheckpointError: see :func:`read_checkpoint_payload`, or weights that do not fit the
            stored configuration.
    """
    payload = read_checkpoint_payload(path)
    try:
        config = config_from_dict(payload["config"])
    except (ConfigError, KeyError, TypeError) as error:
        raise CheckpointError(path, f"invalid stored configuration: {error}") from error
    detector = OneClassDetector(config.model)
    try:
        detector.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(path, f"weights do not match the stored configuration: {error}") from error
    detector.to(device).eval()
    calibration = payload.get("calibration")
    return LoadedModel(
        detector=detector,
        config=config,
        calibration=None if calibration is None else Calibration.from_dict(calibration),
        package_version=str(payload.get("package_version")),
        training=dict(payload.get("training") or {}),
        path=str(path),
    )


def training_record(result: Any, **extra: Any) -> dict[str, Any]:
    """Plain-value summary of a :class:`~cxr_anomaly.training.TrainingResult` for a checkpoint."""
    return {
        "num_train_images": result.num_train_images,
        "seconds": result.seconds,
        "history": [asdict(log) for log in result.history],
        **extra,
    }
