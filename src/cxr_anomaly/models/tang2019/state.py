"""The tang2019 family's training state: what a killed run needs to continue where it stopped.

A training state is a ``torch.save`` file of tensors and plain values, written atomically to the
run folder after every epoch (and every ``train.checkpoint_every_steps`` steps), read back safely
(:func:`cxr_anomaly.files.read_checkpoint_payload`) by ``train --resume``.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ...config import Config, config_to_dict, stored_config_from_dict
from ...errors import CheckpointError, ConfigError
from ...files import atomic_torch_save, read_checkpoint_payload, version_note

logger = logging.getLogger(__name__)

TRAINING_STATE_FORMAT = "cxr-anomaly-training-state"
TRAINING_STATE_VERSION = 1  # bump when the training-state layout changes incompatibly
TRAINING_STATE_NAME = "training_state.pt"  # in the run folder


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
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
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
        raise CheckpointError(path, f"incomplete or invalid training state: {error}{version_note(payload)}") from error
