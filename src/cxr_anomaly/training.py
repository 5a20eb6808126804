"""The training loop, read top to bottom (nanoGPT style).

One generator step updates U (and E) on λ1·L_R + λ2·L_A + λ3·L_E + L_F (eq. 5); one
discriminator step updates D on real films against detached reconstructions. Training sees
normal films only: the caller passes the pixels of label-0 images and nothing else.

All randomness (initialisation, batch order, input noise) comes from ``config.train.seed``
through explicit :class:`torch.Generator` objects, never from the global RNG.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config
from .data.dataset import to_model_tensor
from .errors import NoNormalImagesError, TrainingDivergedError
from .models.tang2019 import DiscriminatorLoss, GeneratorLoss, OneClassDetector
from .models.tang2019.torch_model import initialise_weights

logger = logging.getLogger(__name__)


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
    """A trained detector and the record of how it was trained."""

    detector: OneClassDetector
    history: list[EpochLog] = field(default_factory=list)
    num_train_images: int = 0
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    """Map ``"auto"`` to CUDA when available, else CPU; pass other names through."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when asked for (CPU or CUDA); a disabled context for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def build_detector(config: Config) -> OneClassDetector:
    """Build the variant's networks and initialise them from ``config.train.seed``."""
    detector = OneClassDetector(config.model)
    generator = torch.Generator().manual_seed(config.train.seed)
    initialise_weights(detector, config.model.init, generator)
    return detector


def train_detector(
    config: Config,
    train_pixels: np.ndarray,
    *,
    progress: bool = False,
    on_epoch_end: Callable[[OneClassDetector, EpochLog], None] | None = None,
) -> TrainingResult:
    """Train a detector on normal films.

    Args:
        config: the whole run configuration (model variant, loss weights, optimiser, seed).
        train_pixels: uint8 images (N, H, W) of normal films only.
        progress: show a progress bar over batches.
        on_epoch_end: called after each epoch with the detector (in eval mode) and the epoch's log.

    Raises:
        NoNormalImagesError: ``train_pixels`` is empty.
        TrainingDivergedError: a loss became NaN or infinite.
    """
    if len(train_pixels) == 0:
        raise NoNormalImagesError("no normal (label 0) training images: nothing to learn from")
    if len(train_pixels) < 2:
        raise NoNormalImagesError(
            f"only {len(train_pixels)} normal training image; BatchNorm needs at least 2"
        )
    train_config = config.train
    device = resolve_device(train_config.device)
    detector = build_detector(config).to(device)
    images = to_model_tensor(train_pixels, config.data)  # (N, H, W) uint8 -> (N, 1, H, W) in [-1, 1]
    generator_loss = GeneratorLoss(config.loss)
    discriminator_loss = DiscriminatorLoss()
    betas = (train_config.beta1, train_config.beta2)
    generator_optimizer = torch.optim.Adam(
        detector.generator_parameters(), lr=train_config.learning_rate, betas=betas
    )
    discriminator_optimizer = None
    if detector.discriminator is not None:
        discriminator_optimizer = torch.optim.Adam(
            detector.discriminator.parameters(), lr=train_config.learning_rate, betas=betas
        )
    # Separate streams so that changing the noise level does not change the batch order.
    order_generator = torch.Generator().manual_seed(train_config.seed + 1)
    noise_generator = torch.Generator().manual_seed(train_config.seed + 2)
    noise_std = config.model.input_noise_std
    count = len(images)
    batch_size = min(train_config.batch_size, count)
    steps_per_epoch = math.ceil(count / batch_size)
    logger.info(
        "training %s on %d normal images, %d epochs of %d steps, on %s (%s)",
        config.model.variant, count, train_config.epochs, steps_per_epoch, device,
        train_config.precision,
    )
    history: list[EpochLog] = []
    started = time.perf_counter()
    bar = tqdm(total=train_config.epochs * steps_per_epoch, desc="training", unit="step",
               disable=not progress)
    for epoch in range(1, train_config.epochs + 1):
        detector.train()
        epoch_started = time.perf_counter()
        sums = dict.fromkeys(
            ("generator_total", "reconstruction", "adversarial", "latent", "feature", "discriminator"), 0.0
        )
        permutation = torch.randperm(count, generator=order_generator)
        for step in range(steps_per_epoch):
            indices = permutation[step * batch_size:(step + 1) * batch_size]
            if len(indices) < 2:  # a lone last image would break BatchNorm's batch statistics
                continue
            clean = images[indices].to(device, non_blocking=True)  # (B, 1, 64, 64)
            noise = torch.randn(clean.shape, generator=noise_generator).to(device) * noise_std
            with autocast_context(device, train_config.precision):
                output = detector(clean + noise)
                losses = generator_loss(clean, output, detector.discriminator)
            generator_optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            generator_optimizer.step()

            discriminator_value = 0.0
            if detector.discriminator is not None and discriminator_optimizer is not None:
                with autocast_context(device, train_config.precision):
                    loss_d = discriminator_loss(
                        detector.discriminator, clean, output.reconstruction.detach()
                    )
                discriminator_optimizer.zero_grad(set_to_none=True)
                loss_d.backward()
                discriminator_optimizer.step()
                discriminator_value = float(loss_d.detach())

            values = {
                "generator_total": float(losses.total.detach()),
                "reconstruction": float(losses.reconstruction),
                "adversarial": float(losses.adversarial),
                "latent": float(losses.latent),
                "feature": float(losses.feature),
                "discriminator": discriminator_value,
            }
            if not all(math.isfinite(value) for value in values.values()):
                raise TrainingDivergedError(
                    f"non-finite loss at epoch {epoch}, step {step + 1}: {values}"
                )
            for key, value in values.items():
                sums[key] += value * len(indices)
            bar.update(1)
            bar.set_postfix(epoch=epoch, rec=f"{values['reconstruction']:.4f}")
        log = EpochLog(
            epoch=epoch,
            **{key: value / count for key, value in sums.items()},
            seconds=time.perf_counter() - epoch_started,
            images=count,
        )
        history.append(log)
        logger.info(
            "epoch %d/%d: L=%.4f L_R=%.4f L_A=%.4f L_E=%.4f L_F=%.4f L_D=%.4f (%.1fs)",
            epoch, train_config.epochs, log.generator_total, log.reconstruction, log.adversarial,
            log.latent, log.feature, log.discriminator, log.seconds,
        )
        detector.eval()
        if on_epoch_end is not None:
            on_epoch_end(detector, log)
    bar.close()
    detector.eval()
    return TrainingResult(detector, history, count, time.perf_counter() - started)
