"""One optimisation step of the tang2019 training loop and its guards: the batch plan, the
(DistributedDataParallel-wrapped) networks and optimisers, the generator and discriminator
steps, and the event log that records why a run stopped (:mod:`.training`).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ... import distributed
from ...config import TrainConfig
from ...errors import ConfigError, TrainingDivergedError
from .loss import GeneratorLoss, discriminator_loss_from_logits
from .state import TrainingState
from .torch_model import DetectorOutput, OneClassDetector

logger = logging.getLogger(__name__)

EVENTS_NAME = "training_events.jsonl"
LOSS_NAMES: tuple[str, ...] = (
    "generator_total",
    "reconstruction",
    "adversarial",
    "latent",
    "feature",
    "discriminator",
)


def autocast_context(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when asked for (CPU or CUDA); a disabled context for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class GeneratorNetworks(nn.Module):
    """U and E of a detector as one module, so that DDP synchronises exactly their gradients.

    D is deliberately not a submodule: the generator step reads D without updating it, and D's
    own DDP wrapper synchronises D's gradients in the discriminator step.
    """

    def __init__(self, detector: OneClassDetector) -> None:
        super().__init__()
        self.unet = detector.unet
        self.second_encoder = detector.second_encoder
        object.__setattr__(self, "detector", detector)  # a plain attribute, not a submodule

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        """The detector's forward pass (U, then E on the reconstruction)."""
        return self.detector(images)


class RunLog:
    """Appends events (start, resume, checkpoint, epoch end, divergence) to the run's JSONL log.

    Each event is one ``write`` of a whole line to a file opened for appending, then fsync, so a
    killed process leaves complete lines only. Only rank 0 writes.
    """

    def __init__(self, run_dir: Path | None, enabled: bool) -> None:
        self.path = None if run_dir is None or not enabled else run_dir / EVENTS_NAME

    def record(self, event: str, **details: Any) -> None:
        """Append one event with a UTC timestamp."""
        if self.path is None:
            return
        entry = {"time": datetime.datetime.now(datetime.UTC).isoformat(), "event": event, **details}
        line = (json.dumps(entry) + "\n").encode("utf-8")
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@dataclass
class BatchPlan:
    """How this rank cuts the training films into steps.

    Attributes:
        sampler: the distributed sampler giving this rank its share of each epoch (None in one
            process, where the order comes from the run's order generator).
        batch_size: films per step on this rank (the global ``train.batch_size`` shared out).
        steps_per_epoch: steps this rank takes per epoch, the same on every rank.
    """

    sampler: DistributedSampler | None
    batch_size: int
    steps_per_epoch: int


def batch_plan(count: int, train_config: TrainConfig, context: distributed.DistributedContext) -> BatchPlan:
    """The steps of an epoch over ``count`` films for this rank.

    Raises:
        ConfigError: the global batch gives a rank fewer than 2 films (BatchNorm needs 2).
    """
    if not context.is_distributed:
        batch_size = min(train_config.batch_size, count)
        return BatchPlan(None, batch_size, math.ceil(count / batch_size))
    # The global batch is train.batch_size; each rank takes its share of it.
    sampler = DistributedSampler(
        range(count),
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=train_config.seed + 1,
        drop_last=False,
    )
    batch_size = min(train_config.batch_size // context.world_size, len(sampler))
    if batch_size < 2:
        raise ConfigError(
            f"train.batch_size={train_config.batch_size} over {context.world_size} processes "
            f"gives {batch_size} film(s) per rank; BatchNorm needs at least 2"
        )
    return BatchPlan(sampler, batch_size, math.ceil(len(sampler) / batch_size))


@dataclass
class TrainingParts:
    """The modules the steps call and the optimisers they step.

    Under DDP each network has its own wrapper, so that the generator step synchronises the
    gradients of U and E only, and the discriminator step those of D only.

    Attributes:
        generator_module: U and E (the detector itself in one process).
        discriminator_module: D, or None for variants without one.
        generator_optimizer: Adam over U and E.
        discriminator_optimizer: Adam over D, or None.
    """

    generator_module: nn.Module
    discriminator_module: nn.Module | None
    generator_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer | None


def training_parts(
    detector: OneClassDetector,
    train_config: TrainConfig,
    state: TrainingState | None,
    context: distributed.DistributedContext,
    device: torch.device,
) -> TrainingParts:
    """Optimisers (restored from ``state`` when resuming) and, under DDP, the wrapped networks."""
    betas = (train_config.beta1, train_config.beta2)
    generator_optimizer = torch.optim.Adam(detector.generator_parameters(), lr=train_config.learning_rate, betas=betas)
    discriminator_optimizer = None
    if detector.discriminator is not None:
        discriminator_optimizer = torch.optim.Adam(
            detector.discriminator.parameters(), lr=train_config.learning_rate, betas=betas
        )
    if state is not None:
        generator_optimizer.load_state_dict(state.generator_optimizer)
        if discriminator_optimizer is not None and state.discriminator_optimizer is not None:
            discriminator_optimizer.load_state_dict(state.discriminator_optimizer)
    generator_module: nn.Module = detector
    discriminator_module: nn.Module | None = detector.discriminator
    if context.is_distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        generator_module = DistributedDataParallel(GeneratorNetworks(detector), device_ids=device_ids)
        if detector.discriminator is not None:
            discriminator_module = DistributedDataParallel(detector.discriminator, device_ids=device_ids)
    return TrainingParts(generator_module, discriminator_module, generator_optimizer, discriminator_optimizer)


@dataclass
class StepResult:
    """One optimisation step, reduced over all ranks.

    Attributes:
        losses: mean of each of :data:`LOSS_NAMES` over the step's films (all ranks).
        films: films in the step (all ranks).
        all_ranks_collapsed: D won outright (D(x') below ``train.collapse_threshold`` for every
            film) on every rank.
    """

    losses: dict[str, float]
    films: float
    all_ranks_collapsed: bool


def train_step(
    parts: TrainingParts,
    detector: OneClassDetector,
    generator_loss: GeneratorLoss,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    *,
    precision: str,
    collapse_threshold: float,
    context: distributed.DistributedContext,
) -> StepResult:
    """One generator step (eq. 5) then one discriminator step on a batch (B, 1, S, S) of films."""
    device = clean.device
    with autocast_context(device, precision):
        output = parts.generator_module(noisy)
        losses = generator_loss(clean, output, detector.discriminator)
    parts.generator_optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    parts.generator_optimizer.step()

    discriminator_value = torch.zeros((), dtype=torch.float64)
    collapsed = 0.0
    if parts.discriminator_module is not None and parts.discriminator_optimizer is not None:
        with autocast_context(device, precision):
            real_logit = parts.discriminator_module(clean).logit.float()  # (B,)
            fake_logit = parts.discriminator_module(output.reconstruction.detach()).logit.float()  # (B,)
            loss_d = discriminator_loss_from_logits(real_logit, fake_logit)
        parts.discriminator_optimizer.zero_grad(set_to_none=True)
        loss_d.backward()
        parts.discriminator_optimizer.step()
        discriminator_value = loss_d.detach().double().cpu()
        collapsed = float(torch.sigmoid(fake_logit.detach()).max() < collapse_threshold)

    # One reduction per step: loss sums weighted by batch size, film count and how many ranks
    # saw D win outright. A NaN on any rank makes every rank's sum NaN, so all ranks stop together.
    batch = len(clean)
    local = (
        torch.stack(
            [
                losses.total.detach().double().cpu(),
                losses.reconstruction.double().cpu(),
                losses.adversarial.double().cpu(),
                losses.latent.double().cpu(),
                losses.feature.double().cpu(),
                discriminator_value,
            ]
        )
        * batch
    )
    reduced = distributed.all_reduce_sum(
        torch.cat([local, torch.tensor([float(batch), collapsed], dtype=torch.float64)]), context
    )
    films = float(reduced[len(LOSS_NAMES)])
    values = {name: float(reduced[index]) / films for index, name in enumerate(LOSS_NAMES)}
    return StepResult(values, films, bool(reduced[-1] >= context.world_size - 0.5))


def guard_step(
    result: StepResult,
    collapse_streak: int,
    epoch: int,
    step: int,
    *,
    train_config: TrainConfig,
    has_discriminator: bool,
    run_log: RunLog,
    state_path: Path | None,
) -> int:
    """The GAN guard after step ``step`` of ``epoch``; returns the updated count of consecutive
    steps in which D won outright.

    Raises:
        TrainingDivergedError: a loss is not finite, or D won outright for
            ``train.collapse_patience_steps`` consecutive steps (via :func:`stop_run`).
    """
    values = result.losses
    if not all(math.isfinite(value) for value in values.values()):
        stop_run(
            run_log,
            "diverged",
            state_path,
            f"non-finite loss at epoch {epoch}, step {step}: {values}",
            epoch=epoch,
            step=step,
            losses=values,
        )
    collapse_streak = collapse_streak + 1 if result.all_ranks_collapsed else 0
    if has_discriminator and 0 < train_config.collapse_patience_steps <= collapse_streak:
        stop_run(
            run_log,
            "collapsed",
            state_path,
            f"the discriminator won outright: D(x') < {train_config.collapse_threshold} "
            f"for every film of {collapse_streak} consecutive batches (epoch {epoch}, "
            f"step {step}); lower the learning rate or the adversarial weight",
            epoch=epoch,
            step=step,
            streak=collapse_streak,
        )
    return collapse_streak


def check_weights_finite(
    detector: nn.Module, epochs_done: int, next_step: int, state_path: Path, run_log: RunLog
) -> None:
    """Stop before a checkpoint would store NaN or infinite weights over the last good one."""
    for name, tensor in detector.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            stop_run(
                run_log,
                "diverged",
                state_path,
                f"non-finite values in {name} after epoch {epochs_done}, step {next_step}",
                tensor=name,
                epochs_done=epochs_done,
                next_step=next_step,
            )


def stop_run(run_log: RunLog, event: str, state_path: Path | None, message: str, **details: Any) -> None:
    """Record the failure in the run's event log and raise :class:`TrainingDivergedError`."""
    kept = (
        f"; the last good training state is kept in {state_path}"
        if state_path is not None and state_path.is_file()
        else ""
    )
    logger.error("training stopped: %s%s", message, kept)
    run_log.record(event, message=message, **details)
    raise TrainingDivergedError(f"training stopped: {message}{kept}")
