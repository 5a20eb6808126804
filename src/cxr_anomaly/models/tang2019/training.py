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

import datetime
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from ... import distributed
from ...config import Config, TrainConfig, config_differences, config_from_dict, config_to_dict
from ...data.dataset import to_model_tensor
from ...errors import CheckpointError, ConfigError, NoNormalImagesError, TrainingDivergedError
from ...files import remove_stale_temporaries
from ...inference import resolve_precision
from .loss import GeneratorLoss, discriminator_loss_from_logits
from .state import TrainingState, load_training_state, save_training_state
from .torch_model import DetectorOutput, OneClassDetector, initialise_weights

logger = logging.getLogger(__name__)

TRAINING_STATE_NAME = "training_state.pt"
EVENTS_NAME = "training_events.jsonl"
LOSS_NAMES: tuple[str, ...] = (
    "generator_total", "reconstruction", "adversarial", "latent", "feature", "discriminator",
)
# Settings that may change between an interrupted run and its resumption: where it runs and how
# often it saves, but nothing that changes the arithmetic of training.
RESUMABLE_CHANGES: frozenset[str] = frozenset({"device", "checkpoint_every_steps"})


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


def autocast_context(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when asked for (CPU or CUDA); a disabled context for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def build_detector(config: Config) -> OneClassDetector:
    """Build the variant's networks and initialise them from ``config.train.seed``."""
    detector = OneClassDetector(config.model)
    generator = torch.Generator().manual_seed(config.train.seed)
    initialise_weights(detector, config.model.init, generator)
    return detector


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
        batch = to_model_tensor(train_pixels[start:start + batch_size], config.data).to(device)  # (B, 1, H, W)
        codes.append(detector.unet.encoder(batch).code.flatten(1).float())  # (B, latent_dim)
    detector.store_normal_codes(torch.cat(codes), config.score.neighbours)
    logger.info("stored the codes of %d training normals for the code-space kNN score", len(train_pixels))


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
            "resuming %s with its stored settings; ignoring the requested changes %s", path,
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


@torch.no_grad()
def recalibrate_batchnorm(detector: OneClassDetector, train_pixels: np.ndarray, config: Config,
                          device: torch.device, batch_size: int = 64) -> None:
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
        batch = to_model_tensor(train_pixels[start:start + batch_size], config.data).to(device)  # (B, 1, H, W)
        if len(batch) < 2:  # a lone film has no batch variance
            continue
        output = detector(batch)
        if detector.discriminator is not None:
            detector.discriminator(torch.cat([batch, output.reconstruction]))  # (2B, 1, H, W)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    detector.eval()
    logger.info("re-estimated BatchNorm statistics of %d layers over %d training normals",
                len(layers), len(train_pixels))


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
    sampler = DistributedSampler(range(count), num_replicas=context.world_size, rank=context.rank,
                                 shuffle=True, seed=train_config.seed + 1, drop_last=False)
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


def training_parts(detector: OneClassDetector, train_config: TrainConfig, state: TrainingState | None,
                   context: distributed.DistributedContext, device: torch.device) -> TrainingParts:
    """Optimisers (restored from ``state`` when resuming) and, under DDP, the wrapped networks."""
    betas = (train_config.beta1, train_config.beta2)
    generator_optimizer = torch.optim.Adam(detector.generator_parameters(), lr=train_config.learning_rate,
                                           betas=betas)
    discriminator_optimizer = None
    if detector.discriminator is not None:
        discriminator_optimizer = torch.optim.Adam(detector.discriminator.parameters(),
                                                   lr=train_config.learning_rate, betas=betas)
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


def train_step(parts: TrainingParts, detector: OneClassDetector, generator_loss: GeneratorLoss,
               clean: torch.Tensor, noisy: torch.Tensor, *, precision: str, collapse_threshold: float,
               context: distributed.DistributedContext) -> StepResult:
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
    local = torch.stack([
        losses.total.detach().double().cpu(), losses.reconstruction.double().cpu(),
        losses.adversarial.double().cpu(), losses.latent.double().cpu(),
        losses.feature.double().cpu(), discriminator_value,
    ]) * batch
    reduced = distributed.all_reduce_sum(
        torch.cat([local, torch.tensor([float(batch), collapsed], dtype=torch.float64)]), context)
    films = float(reduced[len(LOSS_NAMES)])
    values = {name: float(reduced[index]) / films for index, name in enumerate(LOSS_NAMES)}
    return StepResult(values, films, bool(reduced[-1] >= context.world_size - 0.5))


def guard_step(result: StepResult, collapse_streak: int, epoch: int, step: int, *, train_config: TrainConfig,
               has_discriminator: bool, run_log: RunLog, state_path: Path | None) -> int:
    """The GAN guard after step ``step`` of ``epoch``; returns the updated count of consecutive
    steps in which D won outright.

    Raises:
        TrainingDivergedError: a loss is not finite, or D won outright for
            ``train.collapse_patience_steps`` consecutive steps (via :func:`stop_run`).
    """
    values = result.losses
    if not all(math.isfinite(value) for value in values.values()):
        stop_run(run_log, "diverged", state_path, f"non-finite loss at epoch {epoch}, step {step}: {values}",
                 epoch=epoch, step=step, losses=values)
    collapse_streak = collapse_streak + 1 if result.all_ranks_collapsed else 0
    if has_discriminator and 0 < train_config.collapse_patience_steps <= collapse_streak:
        stop_run(run_log, "collapsed", state_path,
                 f"the discriminator won outright: D(x') < {train_config.collapse_threshold} "
                 f"for every film of {collapse_streak} consecutive batches (epoch {epoch}, "
                 f"step {step}); lower the learning rate or the adversarial weight",
                 epoch=epoch, step=step, streak=collapse_streak)
    return collapse_streak


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


def restore_position(state: TrainingState, order_generator: torch.Generator, noise_generator: torch.Generator,
                     rank: int) -> LoopPosition:
    """The loop position of a stored training state; sets both generators to their stored states."""
    order_generator.set_state(state.order_rng_state)
    noise_generator.set_state(state.noise_rng_states[rank])
    mid_epoch = state.next_step > 0
    return LoopPosition(
        history=[EpochLog(**log) for log in state.history], first_epoch=state.epochs_done + 1,
        first_step=state.next_step, global_step=state.global_step, collapse_streak=state.collapse_streak,
        seconds_before=state.seconds, epoch_sums=dict(state.epoch_sums) if mid_epoch else empty_epoch_sums(),
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

    def write(self, position: LoopPosition, *, epochs_done: int, next_step: int, epoch_order_state: torch.Tensor,
              epoch_sums: dict[str, float], epoch_seconds: float, seconds: float) -> None:
        """Save the state after ``epochs_done`` epochs and ``next_step`` steps of the next one."""
        if self.path is None:
            return
        check_weights_finite(self.detector, epochs_done, next_step, self.path, self.run_log)
        noise_states = distributed.all_gather_bytes(self.noise_generator.get_state(), self.context)
        if self.context.is_main:
            discriminator_optimizer = self.parts.discriminator_optimizer
            save_training_state(self.path, TrainingState(
                config=self.config,
                model_state=self.detector.state_dict(),
                generator_optimizer=self.parts.generator_optimizer.state_dict(),
                discriminator_optimizer=(None if discriminator_optimizer is None
                                         else discriminator_optimizer.state_dict()),
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
            ))
            self.run_log.record("checkpoint", epochs_done=epochs_done, next_step=next_step,
                                global_step=position.global_step)
        distributed.barrier(self.context)


def check_training_inputs(config: Config, train_pixels: np.ndarray, resume: bool, run_dir: str | Path | None) -> None:
    """Refuse what :func:`train_detector` cannot train on (see its Raises)."""
    if config.method != "tang2019":
        raise ConfigError(f"method={config.method!r}: this loop trains the tang2019 networks; "
                          "use models.registry.fit_detector, which picks each family's fitting")
    if len(train_pixels) == 0:
        raise NoNormalImagesError("no normal (label 0) training images: nothing to learn from")
    if len(train_pixels) < 2:
        raise NoNormalImagesError(
            f"only {len(train_pixels)} normal training image; BatchNorm needs at least 2"
        )
    if resume and run_dir is None:
        raise ConfigError("resume=True needs run_dir, the folder holding training_state.pt")


def prepared_detector(config: Config, state: TrainingState | None, device: torch.device,
                      context: distributed.DistributedContext) -> OneClassDetector:
    """The networks to train: freshly initialised or the stored state's, on ``device``."""
    detector = build_detector(config)
    if state is not None:
        detector.load_state_dict(state.model_state)
    detector.to(device, memory_format=torch.channels_last)  # the faster conv layout of oneDNN and cuDNN
    if config.train.sync_batchnorm:
        if context.is_distributed:
            distributed.convert_sync_batchnorm(detector, device)
        else:
            logger.info("train.sync_batchnorm has no effect in a single process")
    return detector


@dataclass
class FinishedDetector:
    """The trained detector in eval mode, and the largest weight difference between ranks (0 in one process)."""

    detector: OneClassDetector
    rank_weight_difference: float


def finished_detector(detector: OneClassDetector, config: Config, train_pixels: np.ndarray,
                      device: torch.device, context: distributed.DistributedContext) -> FinishedDetector:
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
    check_training_inputs(config, train_pixels, resume, run_dir)
    train_config = config.train
    context = distributed.current_context()
    device = distributed.training_device(train_config.device, context)
    precision = resolve_precision(train_config.precision, device)  # "auto": bf16 where native
    run_path = None if run_dir is None else Path(run_dir)
    state_path = None if run_path is None else run_path / TRAINING_STATE_NAME
    if run_path is not None and context.is_main:
        run_path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_path)
    distributed.barrier(context)
    run_log = RunLog(run_path, context.is_main)
    fingerprint = data_fingerprint(train_pixels)

    state: TrainingState | None = None
    if resume and state_path is not None and state_path.is_file():
        state = load_training_state(state_path)
        check_resumable(state, config, fingerprint, context, state_path)
    elif resume:
        logger.info("no training state in %s yet: starting from the beginning", run_path)

    detector = prepared_detector(config, state, device, context)
    images = to_model_tensor(train_pixels, config.data)  # (N, H, W) uint8 -> (N, 1, H, W) in [-1, 1]
    if device.type == "cuda":  # the films fit in GPU memory: no host-to-device copy per step
        images = images.to(device)
    generator_loss = GeneratorLoss(config.loss)
    parts = training_parts(detector, train_config, state, context, device)

    # Separate streams so that changing the noise level does not change the batch order; each
    # rank draws its own noise.
    order_generator = torch.Generator().manual_seed(train_config.seed + 1)
    noise_generator = torch.Generator().manual_seed(
        distributed.rank_seed(train_config.seed + 2, context.rank)
    )
    count = len(images)
    plan = batch_plan(count, train_config, context)
    steps_per_epoch = plan.steps_per_epoch
    writer = StateWriter(state_path, config, detector, parts, noise_generator, context, run_log, fingerprint)

    position = LoopPosition()
    resumed_from = None
    if state is not None:
        position = restore_position(state, order_generator, noise_generator, context.rank)
        resumed_from = (state.epochs_done, state.next_step)
        logger.info("resuming %s after epoch %d, step %d of the next (%d steps done)",
                    state_path, state.epochs_done, state.next_step, position.global_step)
        run_log.record("resume", epochs_done=state.epochs_done, next_step=state.next_step,
                       global_step=position.global_step)
    else:
        run_log.record("start", epochs=train_config.epochs, images=count, world_size=context.world_size,
                       precision=precision, steps_per_epoch=steps_per_epoch)
    logger.info(
        "training %s on %d normal images, %d epochs of %d steps, on %s (%s), %d process(es)",
        config.model.variant, count, train_config.epochs, steps_per_epoch, device,
        precision, context.world_size,
    )

    started = time.perf_counter()
    bar = tqdm(total=train_config.epochs * steps_per_epoch, initial=position.global_step, desc="training",
               unit="step", disable=not (progress and context.is_main))
    for epoch in range(position.first_epoch, train_config.epochs + 1):
        detector.train()
        epoch_started = time.perf_counter()
        start_step = position.first_step if epoch == position.first_epoch else 0
        if start_step == 0:
            position.epoch_sums, position.epoch_seconds_before = empty_epoch_sums(), 0.0
        epoch_order_state = order_generator.get_state()
        if plan.sampler is not None:
            plan.sampler.set_epoch(epoch)
            order = torch.tensor(list(plan.sampler), dtype=torch.long)  # this rank's share, shuffled
        else:
            order = torch.randperm(count, generator=order_generator)
        for step in range(start_step, steps_per_epoch):
            indices = order[step * plan.batch_size:(step + 1) * plan.batch_size]
            # Every rank holds as many films as the others, so all ranks skip the same steps.
            if len(indices) < 2:  # a lone last image would break BatchNorm's batch statistics
                continue
            clean = images[indices].to(device, non_blocking=True)  # (B, 1, 64, 64)
            noise = torch.randn(clean.shape, generator=noise_generator).to(device) * config.model.input_noise_std
            result = train_step(parts, detector, generator_loss, clean, clean + noise, precision=precision,
                                collapse_threshold=train_config.collapse_threshold, context=context)
            position.global_step += 1
            position.collapse_streak = guard_step(
                result, position.collapse_streak, epoch, step + 1, train_config=train_config,
                has_discriminator=parts.discriminator_module is not None, run_log=run_log, state_path=state_path)
            for name, value in result.losses.items():
                position.epoch_sums[name] += value * result.films
            position.epoch_sums["films"] += result.films
            bar.update(1)
            bar.set_postfix(epoch=epoch, rec=f"{result.losses['reconstruction']:.4f}")
            if on_step_end is not None:
                on_step_end(position.global_step)
            every = train_config.checkpoint_every_steps
            if every > 0 and position.global_step % every == 0 and step + 1 < steps_per_epoch:
                now = time.perf_counter()
                writer.write(position, epochs_done=epoch - 1, next_step=step + 1, epoch_order_state=epoch_order_state,
                             epoch_sums=position.epoch_sums,
                             epoch_seconds=position.epoch_seconds_before + now - epoch_started,
                             seconds=position.seconds_before + now - started)
        # All ranks keep rank 0's BatchNorm running statistics, so every rank holds one model.
        distributed.broadcast_buffers(detector, context)
        sums = position.epoch_sums
        log = EpochLog(
            epoch=epoch,
            **{name: sums[name] / max(sums["films"], 1.0) for name in LOSS_NAMES},
            seconds=position.epoch_seconds_before + time.perf_counter() - epoch_started,
            images=count,
        )
        position.history.append(log)
        logger.info(
            "epoch %d/%d: L=%.4f L_R=%.4f L_A=%.4f L_E=%.4f L_F=%.4f L_D=%.4f (%.1fs)",
            epoch, train_config.epochs, log.generator_total, log.reconstruction, log.adversarial,
            log.latent, log.feature, log.discriminator, log.seconds,
        )
        writer.write(position, epochs_done=epoch, next_step=0, epoch_order_state=order_generator.get_state(),
                     epoch_sums=empty_epoch_sums(), epoch_seconds=0.0,
                     seconds=position.seconds_before + time.perf_counter() - started)
        detector.eval()
        if on_epoch_end is not None:
            on_epoch_end(detector, log)
    bar.close()
    finished = finished_detector(detector, config, train_pixels, device, context)
    total_seconds = position.seconds_before + time.perf_counter() - started
    run_log.record("finished", epochs=train_config.epochs, global_step=position.global_step,
                   seconds=total_seconds, rank_weight_difference=finished.rank_weight_difference)
    return TrainingResult(finished.detector, position.history, count, total_seconds, context.world_size,
                          resumed_from, finished.rank_weight_difference, precision)


def check_resumable(state: TrainingState, config: Config, fingerprint: str,
                    context: distributed.DistributedContext, path: Path) -> None:
    """Refuse a training state that belongs to other settings, other data or another world size.

    Raises:
        CheckpointError: naming what differs.
    """
    differences = resumption_differences(state.config, config)
    if differences:
        raise CheckpointError(
            path, f"the training state was written with other settings {differences} "
                  "(stored, requested); resume with the stored settings (see resolve_config_for_resume)"
        )
    if state.data_fingerprint != fingerprint:
        raise CheckpointError(
            path, "the training films differ from those the interrupted run used; "
                  "resume with the same data or start a new run folder"
        )
    if state.world_size != context.world_size:
        raise CheckpointError(
            path, f"the training state was written by {state.world_size} process(es); "
                  f"resume with the same number, not {context.world_size}"
        )


def check_weights_finite(detector: nn.Module, epochs_done: int, next_step: int,
                         state_path: Path, run_log: RunLog) -> None:
    """Stop before a checkpoint would store NaN or infinite weights over the last good one."""
    for name, tensor in detector.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            stop_run(run_log, "diverged", state_path,
                     f"non-finite values in {name} after epoch {epochs_done}, step {next_step}",
                     tensor=name, epochs_done=epochs_done, next_step=next_step)


def stop_run(run_log: RunLog, event: str, state_path: Path | None, message: str, **details: Any) -> None:
    """Record the failure in the run's event log and raise :class:`TrainingDivergedError`."""
    kept = (f"; the last good training state is kept in {state_path}"
            if state_path is not None and state_path.is_file() else "")
    logger.error("training stopped: %s%s", message, kept)
    run_log.record(event, message=message, **details)
    raise TrainingDivergedError(f"training stopped: {message}{kept}")
