"""Resuming a tang2019 training run: which stored settings a resumed run keeps, and the checks
that a training state belongs to this run's settings, data and processes (:mod:`.training`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ... import distributed
from ...config import Config, config_differences, config_from_dict, config_to_dict
from ...errors import CheckpointError
from .state import TRAINING_STATE_NAME, TrainingState, load_training_state

logger = logging.getLogger(__name__)

# Settings that may change between an interrupted run and its resumption: where it runs and how
# often it saves, but nothing that changes the arithmetic of training.
RESUMABLE_CHANGES: frozenset[str] = frozenset({"device", "checkpoint_every_steps"})


def data_fingerprint(train_pixels: np.ndarray) -> str:
    """A digest of the training films (shape and bytes) that a resumed run must match."""
    digest = hashlib.sha256(str(train_pixels.shape).encode())
    digest.update(np.ascontiguousarray(train_pixels).tobytes())
    return digest.hexdigest()


def resolve_config_for_resume(run_dir: str | Path, config: Config) -> Config:
    """The configuration a resumed run must use: the stored one, with where-it-runs settings new.

    Without a training state in ``run_dir`` the given ``config`` is returned unchanged. Settings
    that change the arithmetic of training (epochs, batch size, seed, variant...) come from the
    stored state, so a resumed run ends exactly where the interrupted one would have; a warning
    names any that the caller asked to change.

    Raises:
        CheckpointError: the training state exists but cannot be read.
    """
    path = Path(run_dir) / TRAINING_STATE_NAME
    if not path.is_file():
        return config
    stored = load_training_state(path).config
    differences = resumption_differences(stored, config)
    if differences:
        logger.warning(
            "resuming %s with its stored settings; ignoring the requested changes %s",
            path,
            differences,
        )
    values = config_to_dict(stored)
    new_values = config_to_dict(config)
    for name in RESUMABLE_CHANGES:
        values["train"][name] = new_values["train"][name]
    return config_from_dict(values)


def resumption_differences(stored: Config, requested: Config) -> dict[str, tuple[Any, Any]]:
    """``section.key -> (stored, requested)`` for every setting a resumption may not change."""
    return config_differences(stored, requested, ignore={f"train.{name}" for name in RESUMABLE_CHANGES})


def check_resumable(
    state: TrainingState, config: Config, fingerprint: str, context: distributed.DistributedContext, path: Path
) -> None:
    """Refuse a training state that belongs to other settings, other data or another world size.

    Raises:
        CheckpointError: naming what differs.
    """
    differences = resumption_differences(state.config, config)
    if differences:
        raise CheckpointError(
            path,
            f"the training state was written with other settings {differences} "
            "(stored, requested); resume with the stored settings (see resolve_config_for_resume)",
        )
    if state.data_fingerprint != fingerprint:
        raise CheckpointError(
            path,
            "the training films differ from those the interrupted run used; "
            "resume with the same data or start a new run folder",
        )
    if state.world_size != context.world_size:
        raise CheckpointError(
            path,
            f"the training state was written by {state.world_size} process(es); "
            f"resume with the same number, not {context.world_size}",
        )
