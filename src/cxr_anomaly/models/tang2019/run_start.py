"""The start of a training run of :func:`~cxr_anomaly.models.tang2019.training.train_detector`:
checked inputs, the run folder, the networks, optimisers and generators, restored from the
training state when resuming.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ... import distributed
from ...config import Config
from ...data.dataset import to_model_tensor
from ...errors import ConfigError, NoNormalImagesError
from ...files import remove_stale_temporaries
from ...inference import resolve_precision
from .loss import GeneratorLoss
from .resume import check_resumable, data_fingerprint
from .run_state import LoopPosition, StateWriter, restore_position
from .state import TRAINING_STATE_NAME, TrainingState, load_training_state
from .steps import BatchPlan, RunLog, TrainingParts, batch_plan, training_parts
from .torch_model import OneClassDetector, initialise_weights

logger = logging.getLogger(__name__)


def build_detector(config: Config) -> OneClassDetector:
    """Build the variant's networks and initialise them from ``config.train.seed``."""
    detector = OneClassDetector(config.model)
    generator = torch.Generator().manual_seed(config.train.seed)
    initialise_weights(detector, config.model.init, generator)
    return detector


def check_training_inputs(config: Config, train_pixels: np.ndarray, resume: bool, run_dir: str | Path | None) -> None:
    """Refuse what :func:`train_detector` cannot train on (see its Raises)."""
    if config.method != "tang2019":
        raise ConfigError(
            f"method={config.method!r}: this loop trains the tang2019 networks; "
            "use models.registry.fit_detector, which picks each family's fitting"
        )
    if len(train_pixels) == 0:
        raise NoNormalImagesError("no normal (label 0) training images: nothing to learn from")
    if len(train_pixels) < 2:
        raise NoNormalImagesError(f"only {len(train_pixels)} normal training image; BatchNorm needs at least 2")
    if resume and run_dir is None:
        raise ConfigError("resume=True needs run_dir, the folder holding training_state.pt")


def prepared_detector(
    config: Config, state: TrainingState | None, device: torch.device, context: distributed.DistributedContext
) -> OneClassDetector:
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
class TrainingRun:
    """Everything the training loop of :func:`train_detector` reads and advances."""

    config: Config
    context: distributed.DistributedContext
    device: torch.device
    precision: str
    run_log: RunLog
    state_path: Path | None
    detector: OneClassDetector
    images: torch.Tensor  # (N, 1, H, W) in [-1, 1]
    generator_loss: GeneratorLoss
    parts: TrainingParts
    order_generator: torch.Generator
    noise_generator: torch.Generator
    plan: BatchPlan
    writer: StateWriter
    position: LoopPosition
    resumed_from: tuple[int, int] | None
    bar: tqdm
    started: float
    on_step_end: Callable[[int], None] | None

    @property
    def count(self) -> int:
        """Training films."""
        return len(self.images)


def prepared_run_folder(run_dir: str | Path | None, context: distributed.DistributedContext) -> Path | None:
    """The run folder, made (by the main process, cleared of stale temporaries) before every rank goes on."""
    run_path = None if run_dir is None else Path(run_dir)
    if run_path is not None and context.is_main:
        run_path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_path)
    distributed.barrier(context)
    return run_path


def resumable_state(
    config: Config, state_path: Path | None, fingerprint: str, context: distributed.DistributedContext
) -> TrainingState | None:
    """The training state to resume from, checked against this run; None when there is none yet."""
    if state_path is not None and state_path.is_file():
        state = load_training_state(state_path)
        check_resumable(state, config, fingerprint, context, state_path)
        return state
    logger.info(
        "no training state in %s yet: starting from the beginning", None if state_path is None else state_path.parent
    )
    return None


@dataclass(frozen=True)
class RunStart:
    """What the run log and the log say when a run starts or resumes."""

    config: Config
    state: TrainingState | None
    state_path: Path | None
    position: LoopPosition
    count: int
    steps_per_epoch: int
    device: torch.device
    precision: str


def log_run_start(start: RunStart, run_log: RunLog, context: distributed.DistributedContext) -> None:
    """Record the start (or the resumption) in the run log, and log what is trained where."""
    state, train_config = start.state, start.config.train
    if state is not None:
        logger.info(
            "resuming %s after epoch %d, step %d of the next (%d steps done)",
            start.state_path,
            state.epochs_done,
            state.next_step,
            start.position.global_step,
        )
        run_log.record(
            "resume", epochs_done=state.epochs_done, next_step=state.next_step, global_step=start.position.global_step
        )
    else:
        run_log.record(
            "start",
            epochs=train_config.epochs,
            images=start.count,
            world_size=context.world_size,
            precision=start.precision,
            steps_per_epoch=start.steps_per_epoch,
        )
    logger.info(
        "training %s on %d normal images, %d epochs of %d steps, on %s (%s), %d process(es)",
        start.config.model.variant,
        start.count,
        train_config.epochs,
        start.steps_per_epoch,
        start.device,
        start.precision,
        context.world_size,
    )


def start_run(
    config: Config,
    train_pixels: np.ndarray,
    *,
    run_dir: str | Path | None,
    resume: bool,
    progress: bool,
    on_step_end: Callable[[int], None] | None,
) -> TrainingRun:
    """Check the inputs, prepare the run folder, the networks, optimisers and generators, and
    restore them from the training state when resuming (see :func:`train_detector`)."""
    check_training_inputs(config, train_pixels, resume, run_dir)
    train_config = config.train
    context = distributed.current_context()
    device = distributed.training_device(train_config.device, context)
    precision = resolve_precision(train_config.precision, device)  # "auto": bf16 where native
    run_path = prepared_run_folder(run_dir, context)
    state_path = None if run_path is None else run_path / TRAINING_STATE_NAME
    run_log = RunLog(run_path, context.is_main)
    fingerprint = data_fingerprint(train_pixels)

    state = resumable_state(config, state_path, fingerprint, context) if resume else None

    detector = prepared_detector(config, state, device, context)
    images = to_model_tensor(train_pixels, config.data)  # (N, H, W) uint8 -> (N, 1, H, W) in [-1, 1]
    if device.type == "cuda":  # the films fit in GPU memory: no host-to-device copy per step
        images = images.to(device)
    generator_loss = GeneratorLoss(config.loss)
    parts = training_parts(detector, train_config, state, context, device)

    # Separate streams so that changing the noise level does not change the batch order; each
    # rank draws its own noise.
    order_generator = torch.Generator().manual_seed(train_config.seed + 1)
    noise_generator = torch.Generator().manual_seed(distributed.rank_seed(train_config.seed + 2, context.rank))
    count = len(images)
    plan = batch_plan(count, train_config, context)
    steps_per_epoch = plan.steps_per_epoch
    writer = StateWriter(state_path, config, detector, parts, noise_generator, context, run_log, fingerprint)

    position = LoopPosition()
    resumed_from = None
    if state is not None:
        position = restore_position(state, order_generator, noise_generator, context.rank)
        resumed_from = (state.epochs_done, state.next_step)
    log_run_start(
        RunStart(config, state, state_path, position, count, steps_per_epoch, device, precision), run_log, context
    )

    started = time.perf_counter()
    bar = tqdm(
        total=train_config.epochs * steps_per_epoch,
        initial=position.global_step,
        desc="training",
        unit="step",
        disable=not (progress and context.is_main),
    )
    return TrainingRun(
        config,
        context,
        device,
        precision,
        run_log,
        state_path,
        detector,
        images,
        generator_loss,
        parts,
        order_generator,
        noise_generator,
        plan,
        writer,
        position,
        resumed_from,
        bar,
        started,
        on_step_end,
    )
