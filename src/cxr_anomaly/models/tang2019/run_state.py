"""Where the training loop stands and how it is saved: the epoch logs, the loop position a
training state stores and a resumed run restores, and the writer of that state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ... import distributed
from ...config import Config
from .state import TrainingState, save_training_state
from .steps import LOSS_NAMES, RunLog, TrainingParts, check_weights_finite
from .torch_model import OneClassDetector


@dataclass
class EpochLog:
    """Mean losses of one epoch (unweighted terms) and its wall time."""

    epoch: int
    generator_total: float
    reconstruction: float
    adversarial: float
    latent: float
    feature: float
    discriminator: float
    seconds: float
    images: int


def empty_epoch_sums() -> dict[str, float]:
    """The loss sums (weighted by films) and the film count of an epoch not yet begun."""
    return dict.fromkeys((*LOSS_NAMES, "films"), 0.0)


@dataclass
class LoopPosition:
    """Where the training loop stands: what a training state stores and a resumed run restores.

    Attributes:
        history: the logs of completed epochs.
        first_epoch: the epoch the loop starts (or restarts) in, from 1.
        first_step: the step within ``first_epoch`` it starts at (0 unless resumed mid-epoch).
        global_step: optimisation steps taken so far.
        collapse_streak: consecutive steps in which D won outright (the GAN guard's count).
        seconds_before: training wall time spent by the processes before this one.
        epoch_sums: the current epoch's loss sums so far (see :func:`empty_epoch_sums`).
        epoch_seconds_before: the current epoch's wall time before this process took it up.
    """

    history: list[EpochLog] = field(default_factory=list)
    first_epoch: int = 1
    first_step: int = 0
    global_step: int = 0
    collapse_streak: int = 0
    seconds_before: float = 0.0
    epoch_sums: dict[str, float] = field(default_factory=empty_epoch_sums)
    epoch_seconds_before: float = 0.0


def restore_position(
    state: TrainingState, order_generator: torch.Generator, noise_generator: torch.Generator, rank: int
) -> LoopPosition:
    """The loop position of a stored training state; sets both generators to their stored states."""
    order_generator.set_state(state.order_rng_state)
    noise_generator.set_state(state.noise_rng_states[rank])
    mid_epoch = state.next_step > 0
    return LoopPosition(
        history=[EpochLog(**log) for log in state.history],
        first_epoch=state.epochs_done + 1,
        first_step=state.next_step,
        global_step=state.global_step,
        collapse_streak=state.collapse_streak,
        seconds_before=state.seconds,
        epoch_sums=dict(state.epoch_sums) if mid_epoch else empty_epoch_sums(),
        epoch_seconds_before=state.epoch_seconds if mid_epoch else 0.0,
    )


@dataclass
class StateWriter:
    """Writes the training state at checkpoints; None as ``path`` keeps nothing on disk.

    Every rank calls :meth:`write`, since the ranks' noise-generator states are gathered; rank 0
    alone writes the file.
    """

    path: Path | None
    config: Config
    detector: OneClassDetector
    parts: TrainingParts
    noise_generator: torch.Generator
    context: distributed.DistributedContext
    run_log: RunLog
    fingerprint: str

    def write(
        self,
        position: LoopPosition,
        *,
        epochs_done: int,
        next_step: int,
        epoch_order_state: torch.Tensor,
        epoch_sums: dict[str, float],
        epoch_seconds: float,
        seconds: float,
    ) -> None:
        """Save the state after ``epochs_done`` epochs and ``next_step`` steps of the next one."""
        if self.path is None:
            return
        check_weights_finite(self.detector, epochs_done, next_step, self.path, self.run_log)
        noise_states = distributed.all_gather_bytes(self.noise_generator.get_state(), self.context)
        if self.context.is_main:
            discriminator_optimizer = self.parts.discriminator_optimizer
            save_training_state(
                self.path,
                TrainingState(
                    config=self.config,
                    model_state=self.detector.state_dict(),
                    generator_optimizer=self.parts.generator_optimizer.state_dict(),
                    discriminator_optimizer=(
                        None if discriminator_optimizer is None else discriminator_optimizer.state_dict()
                    ),
                    scaler=None,
                    epochs_done=epochs_done,
                    next_step=next_step,
                    global_step=position.global_step,
                    order_rng_state=epoch_order_state,
                    noise_rng_states=noise_states,
                    epoch_sums=epoch_sums,
                    epoch_seconds=epoch_seconds,
                    history=[asdict(log) for log in position.history],
                    collapse_streak=position.collapse_streak,
                    world_size=self.context.world_size,
                    data_fingerprint=self.fingerprint,
                    seconds=seconds,
                ),
            )
            self.run_log.record(
                "checkpoint", epochs_done=epochs_done, next_step=next_step, global_step=position.global_step
            )
        distributed.barrier(self.context)
