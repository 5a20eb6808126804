"""The training loop, read top to bottom (nanoGPT style).

One generator step updates U (and E) on λ1·L_R + λ2·L_A + λ3·L_E + L_F (eq. 5); one
discriminator step updates D on real films against detached reconstructions. Training sees
normal films only: the caller passes the pixels of label-0 images and nothing else.

All randomness (initialisation, batch order, input noise) comes from ``config.train.seed``
through explicit :class:`torch.Generator` objects, never from the global RNG.

Robustness (issue 7):

- With ``run_dir``, a training state (weights, optimisers, generator states, epoch and step) is
  written atomically to ``run_dir/training_state.pt`` after every epoch and, with
  ``train.checkpoint_every_steps``, every that many steps. ``resume=True`` continues from it and
  reproduces the uninterrupted run exactly (same batches, same noise, same final epoch count).
- A GAN guard stops the run with :class:`TrainingDivergedError` when a loss is not finite, when
  weights stop being finite, or when the discriminator wins outright (D(x') below
  ``train.collapse_threshold`` for every film of the batch) for ``train.collapse_patience_steps``
  consecutive steps. The last good training state is kept and the event is appended to
  ``run_dir/training_events.jsonl``.
- Under ``torchrun`` the networks are wrapped in DistributedDataParallel; see
  :mod:`cxr_anomaly.distributed` for the choices made there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ... import distributed
from ...config import Config
from ...data.dataset import to_model_tensor
from .run_start import TrainingRun, start_run
from .run_start import build_detector as build_detector  # re-exported: tests and benchmarks import it from here
from .run_state import EpochLog, empty_epoch_sums
from .steps import LOSS_NAMES, guard_step, train_step
from .torch_model import OneClassDetector

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """A trained detector and the record of how it was trained.

    Attributes:
        detector: the trained networks, in eval mode, plain BatchNorm, not wrapped in DDP.
        history: one log per epoch, including epochs done before a resumption.
        num_train_images: training films (all ranks together).
        seconds: training wall time, including time spent before a resumption.
        world_size: how many processes trained together.
        resumed_from: ``(epochs_done, next_step)`` of the state the run resumed from, or None.
        rank_weight_difference: largest difference between any rank's weights and rank 0's after
            training (0.0 for one process; DDP keeps it 0).
        precision: the precision the steps ran in, ``fp32`` or ``bf16`` (``train.precision``
            resolved for the device).
    """

    detector: OneClassDetector
    history: list[EpochLog] = field(default_factory=list)
    num_train_images: int = 0
    seconds: float = 0.0
    world_size: int = 1
    resumed_from: tuple[int, int] | None = None
    rank_weight_difference: float = 0.0
    precision: str = "fp32"


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

    Afterwards the detector also scores ``code_distance``, the ``score.method="code_knn"`` score.
    Only normal films may be passed: they define what "near" means.
    """
    detector.eval()
    codes = []
    for start in range(0, len(train_pixels), batch_size):
        batch = to_model_tensor(train_pixels[start : start + batch_size], config.data).to(device)  # (B, 1, H, W)
        codes.append(detector.unet.encoder(batch).code.flatten(1).float())  # (B, latent_dim)
    detector.store_normal_codes(torch.cat(codes), config.score.neighbours)
    logger.info("stored the codes of %d training normals for the code-space kNN score", len(train_pixels))


@torch.no_grad()
def recalibrate_batchnorm(
    detector: OneClassDetector, train_pixels: np.ndarray, config: Config, device: torch.device, batch_size: int = 64
) -> None:
    """Re-estimate every BatchNorm's running mean and variance over the training normals.

    One pass without input noise and without weight updates, averaging the batch statistics
    cumulatively (momentum None): U and E see what they see at scoring time, D sees the real
    films and their reconstructions, as in its training steps.
    """
    layers = [layer for layer in detector.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    detector.train()
    for start in range(0, len(train_pixels), batch_size):
        batch = to_model_tensor(train_pixels[start : start + batch_size], config.data).to(device)  # (B, 1, H, W)
        if len(batch) < 2:  # a lone film has no batch variance
            continue
        output = detector(batch)
        if detector.discriminator is not None:
            detector.discriminator(torch.cat([batch, output.reconstruction]))  # (2B, 1, H, W)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    detector.eval()
    logger.info(
        "re-estimated BatchNorm statistics of %d layers over %d training normals", len(layers), len(train_pixels)
    )


@dataclass
class FinishedDetector:
    """The trained detector in eval mode, and the largest weight difference between ranks (0 in one process)."""

    detector: OneClassDetector
    rank_weight_difference: float


def finished_detector(
    detector: OneClassDetector,
    config: Config,
    train_pixels: np.ndarray,
    device: torch.device,
    context: distributed.DistributedContext,
) -> FinishedDetector:
    """After the last epoch: plain BatchNorm layers again, recalibrated statistics, the normals' codes."""
    difference = distributed.max_parameter_difference(detector, context)
    if difference > 0:
        logger.warning("ranks ended with different weights (largest difference %.3g)", difference)
    if config.train.sync_batchnorm and context.is_distributed:
        plain = OneClassDetector(config.model)  # SyncBatchNorm layers back to BatchNorm2d
        plain.load_state_dict(detector.state_dict())
        detector = plain.to(device)
    if config.train.recalibrate_batchnorm:
        recalibrate_batchnorm(detector, train_pixels, config, device)
    detector.eval()
    # The codes of the training normals make the code-space kNN score (score.method="code_knn")
    # available to every checkpoint, whichever method the config picks.
    store_normal_codes(detector, train_pixels, config, device=device)
    return FinishedDetector(detector, difference)


def train_detector(
    config: Config,
    train_pixels: np.ndarray,
    *,
    progress: bool = False,
    on_epoch_end: Callable[[OneClassDetector, EpochLog], None] | None = None,
    on_step_end: Callable[[int], None] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> TrainingResult:
    """Train a detector on normal films, in this process or as one rank of a DDP job.

    Args:
        config: the whole run configuration (model variant, loss weights, optimiser, seed).
        train_pixels: uint8 images (N, H, W) of normal films only. Under DDP every rank passes
            the same films; a distributed sampler gives each rank its share.
        progress: show a progress bar over batches (rank 0 only).
        on_epoch_end: called after each epoch with the detector (in eval mode) and the epoch's log.
        on_step_end: called after each optimisation step with the number of steps taken so far.
        run_dir: folder for the training state and the event log; None keeps nothing on disk.
        resume: continue from ``run_dir/training_state.pt`` when it exists (a fresh start when
            it does not, so a run killed before its first checkpoint can be resumed too).

    Raises:
        NoNormalImagesError: ``train_pixels`` is empty or holds a single film.
        TrainingDivergedError: a loss or weight became NaN or infinite, or D won outright for
            ``train.collapse_patience_steps`` consecutive steps.
        ConfigError: ``resume`` without ``run_dir``, a batch too small for the number of ranks,
            or SyncBatchNorm asked for on CPU.
        CheckpointError: the stored training state is unreadable or belongs to other settings,
            other data or another number of processes.
    """
    run = start_run(config, train_pixels, run_dir=run_dir, resume=resume, progress=progress, on_step_end=on_step_end)
    position, train_config = run.position, config.train
    for epoch in range(position.first_epoch, train_config.epochs + 1):
        run.detector.train()
        epoch_started = time.perf_counter()
        start_step = position.first_step if epoch == position.first_epoch else 0
        if start_step == 0:
            position.epoch_sums, position.epoch_seconds_before = empty_epoch_sums(), 0.0
        train_epoch_steps(run, epoch, start_step, epoch_started)
        log = finish_epoch(run, epoch, epoch_started)
        run.detector.eval()
        if on_epoch_end is not None:
            on_epoch_end(run.detector, log)
    run.bar.close()
    finished = finished_detector(run.detector, config, train_pixels, run.device, run.context)
    total_seconds = position.seconds_before + time.perf_counter() - run.started
    run.run_log.record(
        "finished",
        epochs=train_config.epochs,
        global_step=position.global_step,
        seconds=total_seconds,
        rank_weight_difference=finished.rank_weight_difference,
    )
    return TrainingResult(
        finished.detector,
        position.history,
        run.count,
        total_seconds,
        run.context.world_size,
        run.resumed_from,
        finished.rank_weight_difference,
        run.precision,
    )


def train_epoch_steps(run: TrainingRun, epoch: int, start_step: int, epoch_started: float) -> None:
    """The optimisation steps of ``epoch`` from ``start_step`` on, with training states written
    every ``train.checkpoint_every_steps`` steps."""
    train_config, position, plan = run.config.train, run.position, run.plan
    epoch_order_state = run.order_generator.get_state()
    if plan.sampler is not None:
        plan.sampler.set_epoch(epoch)
        order = torch.tensor(list(plan.sampler), dtype=torch.long)  # this rank's share, shuffled
    else:
        order = torch.randperm(run.count, generator=run.order_generator)
    for step in range(start_step, plan.steps_per_epoch):
        indices = order[step * plan.batch_size : (step + 1) * plan.batch_size]
        # Every rank holds as many films as the others, so all ranks skip the same steps.
        if len(indices) < 2:  # a lone last image would break BatchNorm's batch statistics
            continue
        clean = run.images[indices].to(run.device, non_blocking=True)  # (B, 1, 64, 64)
        noise = (
            torch.randn(clean.shape, generator=run.noise_generator).to(run.device) * run.config.model.input_noise_std
        )
        result = train_step(
            run.parts,
            run.detector,
            run.generator_loss,
            clean,
            clean + noise,
            precision=run.precision,
            collapse_threshold=train_config.collapse_threshold,
            context=run.context,
        )
        position.global_step += 1
        position.collapse_streak = guard_step(
            result,
            position.collapse_streak,
            epoch,
            step + 1,
            train_config=train_config,
            has_discriminator=run.parts.discriminator_module is not None,
            run_log=run.run_log,
            state_path=run.state_path,
        )
        for name, value in result.losses.items():
            position.epoch_sums[name] += value * result.films
        position.epoch_sums["films"] += result.films
        run.bar.update(1)
        run.bar.set_postfix(epoch=epoch, rec=f"{result.losses['reconstruction']:.4f}")
        if run.on_step_end is not None:
            run.on_step_end(position.global_step)
        every = train_config.checkpoint_every_steps
        if every > 0 and position.global_step % every == 0 and step + 1 < plan.steps_per_epoch:
            now = time.perf_counter()
            run.writer.write(
                position,
                epochs_done=epoch - 1,
                next_step=step + 1,
                epoch_order_state=epoch_order_state,
                epoch_sums=position.epoch_sums,
                epoch_seconds=position.epoch_seconds_before + now - epoch_started,
                seconds=position.seconds_before + now - run.started,
            )


def finish_epoch(run: TrainingRun, epoch: int, epoch_started: float) -> EpochLog:
    """Share rank 0's BatchNorm statistics, log the epoch and write the training state at its end."""
    position = run.position
    # All ranks keep rank 0's BatchNorm running statistics, so every rank holds one model.
    distributed.broadcast_buffers(run.detector, run.context)
    sums = position.epoch_sums
    log = EpochLog(
        epoch=epoch,
        **{name: sums[name] / max(sums["films"], 1.0) for name in LOSS_NAMES},
        seconds=position.epoch_seconds_before + time.perf_counter() - epoch_started,
        images=run.count,
    )
    position.history.append(log)
    logger.info(
        "epoch %d/%d: L=%.4f L_R=%.4f L_A=%.4f L_E=%.4f L_F=%.4f L_D=%.4f (%.1fs)",
        epoch,
        run.config.train.epochs,
        log.generator_total,
        log.reconstruction,
        log.adversarial,
        log.latent,
        log.feature,
        log.discriminator,
        log.seconds,
    )
    run.writer.write(
        position,
        epochs_done=epoch,
        next_step=0,
        epoch_order_state=run.order_generator.get_state(),
        epoch_sums=empty_epoch_sums(),
        epoch_seconds=0.0,
        seconds=position.seconds_before + time.perf_counter() - run.started,
    )
    return log
