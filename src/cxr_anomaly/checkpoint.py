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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from . import __version__
from .config import Config, config_to_dict, stored_config_from_dict
from .data.copies import pack_signatures, unpack_signatures
from .errors import CheckpointError, ConfigError
from .inference import resolve_device, resolve_precision
from .io import sniff_format
from .models.base import AnomalyDetector
from .models.registry import build_detector
from .scoring import Calibration, ScoreResult, score_films

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cxr-anomaly-checkpoint"
FORMAT_VERSION = 2  # bump when the layout changes incompatibly (2: several detector families)
TRAINING_STATE_FORMAT = "cxr-anomaly-training-state"
TRAINING_STATE_VERSION = 1  # bump when the training-state layout changes incompatibly
TEMPORARY_SUFFIX = ".tmp"


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


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(stream)`` atomically: temporary file, fsync, rename.

    A process killed at any moment leaves either the previous file or the new one under
    ``path``, never a partial one; at worst a hidden ``.NAME.*.tmp`` file remains, which
    :func:`remove_stale_temporaries` deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide the file from the group
        with os.fdopen(handle, "wb") as stream:
            write(stream)
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


def _current_umask() -> int:
    """The process's umask (reading it means setting it, so it is restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_torch_save(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    atomic_write(path, lambda stream: torch.save(payload, stream))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the hidden temporary files that a killed :func:`atomic_write` left in ``folder``.

    Call it only when no other process is writing to ``folder``. Returns the deleted paths.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for candidate in folder.glob(f".*{TEMPORARY_SUFFIX}"):
            if candidate.is_file():
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
    if removed:
        logger.info("removed %d temporary files left by an interrupted write in %s", len(removed), folder)
    return removed


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
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config": config_to_dict(config),
        "state_dict": {key: value.detach().cpu() for key, value in detector.state_dict().items()},
        "calibration": None if calibration is None else calibration.to_dict(),
        "training": training or {},
        "training_signatures": None if training_signatures is None else pack_signatures(training_signatures),
    }
    atomic_torch_save(payload, path)
    logger.info("wrote checkpoint %s", path)
    return Path(path)


def read_checkpoint_payload(
    path: str | Path,
    *,
    expected_format: str = CHECKPOINT_FORMAT,
    supported_version: int = FORMAT_VERSION,
) -> dict[str, Any]:
    """Load a checkpoint's raw dictionary safely and check its format and version.

    Args:
        path: the file.
        expected_format: the ``format`` marker it must carry (a model checkpoint by default,
            or :data:`TRAINING_STATE_FORMAT`).
        supported_version: the newest layout version this package reads for that format.

    Raises:
        CheckpointError: missing file, unsafe content (a pickle that would run code), not a
            cxr-anomaly checkpoint, or a format newer than this package understands.
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "model.pt"
        raise CheckpointError(path, "is a folder, not a checkpoint file" +
                              (f" (did you mean {inside}?)" if inside.is_file() else ""))
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file does not exist")
    try:
        with path.open("rb") as stream:
            head = stream.read(132)  # enough for sniff_format to recognise DICOM's preamble
    except OSError as error:
        raise CheckpointError(path, f"cannot read the checkpoint: {error.strerror or error}") from error
    foreign = _describe_foreign_file(head)
    if foreign is not None:
        raise CheckpointError(path, foreign)
    try:
        with warnings.catch_warnings():
            # torch asks for an issue to be filed whenever a pickle's protocol is not the one it
            # writes; only foreign files do that, and they are refused below with a plain message.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            path, "refused to load: the file holds objects other than tensors and plain values "
                  f"({_unpickler_reason(error)})"
        ) from error
    except Exception as error:
        # On damaged bytes torch.load fails with whatever its reader trips over (RuntimeError,
        # KeyError, AttributeError, UnicodeDecodeError, ...): all of them mean "damaged file".
        raise CheckpointError(
            path, f"not a readable checkpoint, damaged or truncated ({type(error).__name__}: {_one_line(error)})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(path, f"not a {expected_format} file (format marker {found!r})")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > supported_version:
        raise CheckpointError(
            path,
            f"checkpoint format version {version} written by cxr-anomaly "
            f"{payload.get('package_version')} is newer than this cxr-anomaly {__version__} "
            f"understands (format version {supported_version}); upgrade cxr-anomaly",
        )
    return payload


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_PROTOCOL = b"\x80"  # the legacy torch.save format opens with a pickle PROTO opcode


def _describe_foreign_file(head: bytes) -> str | None:
    """Why a file opening with ``head`` cannot be a checkpoint, or None when it may be one.

    Recognising images and text before ``torch.load`` sees them gives the most common mistake
    (an image or a CSV passed as ``--model``) a plain answer instead of an unpickler's.
    """
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTOCOL):
        return None
    if not head:
        return "the file is empty, not a checkpoint"
    image_format = sniff_format(head)
    if image_format is not None:
        return (f"the file is a {image_format.upper()} image, not a checkpoint "
                "(--model takes the model.pt that `cxr-anomaly train` writes)")
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return "the file is text, not a checkpoint (--model takes the model.pt that `cxr-anomaly train` writes)"
    return "not a checkpoint: the file is neither a PyTorch zip archive nor a pickle"


def _one_line(error: BaseException) -> str:
    """An exception's message on one line, shortened: torch's run over many lines."""
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The restricted unpickler's own reason, without torch's advice to turn the restriction off."""
    text = " ".join(str(error).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0].strip()
    return _one_line(RuntimeError(text))


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
            stored_config = {**stored_config, "method": "tang2019"}  # version 1 knew one family
        config = stored_config_from_dict(stored_config)
    except (ConfigError, KeyError, TypeError) as error:
        raise CheckpointError(path, f"invalid stored configuration: {error}{_version_note(payload)}") from error

    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(path, f"no weights in the checkpoint (state_dict is {type(state_dict).__name__})")
    if payload.get("format_version") == 1:
        # Version 1 held only the tang2019 networks, at the top level of the state_dict.
        state_dict = {f"networks.{key}": value for key, value in state_dict.items()}
    try:
        detector = build_detector(config, pretrained=False)
    except ConfigError as error:
        raise CheckpointError(path, f"cannot build its {config.method} detector: {error}") from error
    try:
        detector.load_state_dict(state_dict)
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(
            path, f"weights do not match the stored configuration: {error}{_version_note(payload)}"
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


def _version_note(payload: dict[str, Any]) -> str:
    """A hint naming both versions when a file comes from another cxr-anomaly release."""
    written_by = payload.get("package_version")
    if written_by == __version__:
        return ""
    return (
        f" (the file was written by cxr-anomaly {written_by}; this is cxr-anomaly {__version__}, "
        "which does not understand it: use the version that wrote it, or retrain)"
    )


@dataclass
class TrainingState:
    """Everything needed to continue an interrupted training run exactly where it stopped.

    Only tensors and plain values, so the file loads with ``weights_only=True``. Random
    generator states are stored as the uint8 tensors that ``torch.Generator.get_state`` returns.

    Attributes:
        config: the run's configuration.
        model_state: the detector's ``state_dict`` (CPU tensors).
        generator_optimizer: state of the optimiser of U (and E).
        discriminator_optimizer: state of the optimiser of D, None without D.
        scaler: loss-scaler state; None because bf16 and fp32 training need no loss scaling.
        epochs_done: completed epochs.
        next_step: index of the next step within epoch ``epochs_done + 1`` (0 at an epoch boundary).
        global_step: optimisation steps taken so far.
        order_rng_state: state of the batch-order generator at the start of the current epoch.
        noise_rng_states: state of each rank's input-noise generator, in rank order.
        epoch_sums: loss sums of the current epoch so far (for its log line).
        epoch_seconds: wall time spent in the current epoch so far.
        history: the logs of completed epochs, as dictionaries.
        collapse_streak: consecutive steps in which D(x') stayed below the collapse threshold.
        world_size: how many processes trained.
        data_fingerprint: digest of the training pixels, so a resume cannot switch data silently.
        seconds: training wall time so far.
        package_version: the cxr-anomaly version that wrote the state.
    """

    config: Config
    model_state: dict[str, torch.Tensor]
    generator_optimizer: dict[str, Any]
    discriminator_optimizer: dict[str, Any] | None
    scaler: dict[str, Any] | None
    epochs_done: int
    next_step: int
    global_step: int
    order_rng_state: torch.Tensor
    noise_rng_states: list[torch.Tensor]
    epoch_sums: dict[str, float]
    epoch_seconds: float
    history: list[dict[str, Any]]
    collapse_streak: int
    world_size: int
    data_fingerprint: str
    seconds: float
    package_version: str = __version__


def save_training_state(path: str | Path, state: TrainingState) -> Path:
    """Write a training state atomically and return its path."""
    payload = {
        "format": TRAINING_STATE_FORMAT,
        "format_version": TRAINING_STATE_VERSION,
        "package_version": state.package_version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "config": config_to_dict(state.config),
        "model_state": {key: value.detach().cpu() for key, value in state.model_state.items()},
        "generator_optimizer": state.generator_optimizer,
        "discriminator_optimizer": state.discriminator_optimizer,
        "scaler": state.scaler,
        "epochs_done": state.epochs_done,
        "next_step": state.next_step,
        "global_step": state.global_step,
        "order_rng_state": state.order_rng_state.cpu(),
        "noise_rng_states": [rng_state.cpu() for rng_state in state.noise_rng_states],
        "epoch_sums": dict(state.epoch_sums),
        "epoch_seconds": state.epoch_seconds,
        "history": list(state.history),
        "collapse_streak": state.collapse_streak,
        "world_size": state.world_size,
        "data_fingerprint": state.data_fingerprint,
        "seconds": state.seconds,
    }
    atomic_torch_save(payload, path)
    logger.debug("wrote training state %s (epoch %d, step %d)", path, state.epochs_done, state.next_step)
    return Path(path)


def load_training_state(path: str | Path) -> TrainingState:
    """Read a training state written by :func:`save_training_state`.

    Raises:
        CheckpointError: unreadable, unsafe, not a training state, from a newer version, or
            missing fields.
    """
    payload = read_checkpoint_payload(
        path, expected_format=TRAINING_STATE_FORMAT, supported_version=TRAINING_STATE_VERSION
    )
    try:
        return TrainingState(
            config=stored_config_from_dict(payload["config"]),
            model_state=dict(payload["model_state"]),
            generator_optimizer=payload["generator_optimizer"],
            discriminator_optimizer=payload["discriminator_optimizer"],
            scaler=payload["scaler"],
            epochs_done=int(payload["epochs_done"]),
            next_step=int(payload["next_step"]),
            global_step=int(payload["global_step"]),
            order_rng_state=payload["order_rng_state"],
            noise_rng_states=list(payload["noise_rng_states"]),
            epoch_sums={key: float(value) for key, value in payload["epoch_sums"].items()},
            epoch_seconds=float(payload["epoch_seconds"]),
            history=list(payload["history"]),
            collapse_streak=int(payload["collapse_streak"]),
            world_size=int(payload["world_size"]),
            data_fingerprint=str(payload["data_fingerprint"]),
            seconds=float(payload["seconds"]),
            package_version=str(payload["package_version"]),
        )
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(path, f"incomplete or invalid training state: {error}{_version_note(payload)}") from error
