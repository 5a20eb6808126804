"""Mean-shifted contrastive fine-tuning of the features backbone on normal films (optional).

MSC (Reiss & Hoshen, "Mean-Shifted Contrastive Loss for Anomaly Detection", AAAI 2023) adapts
an ImageNet backbone to the one class it will model. With ``z`` the L2-normalised pooled
embedding of a film and ``c`` the mean of the normals' ``z`` under the *pretrained* backbone
(fixed), two augmented views of each normal film are pulled together, and apart from the other
films of the batch, as directions from ``c``: an NT-Xent loss on ``(z - c) / |z - c|``. Unlike a
loss that pulls every film to ``c``, it cannot collapse all films onto one point.

The embedding is the detector's own pooled features (``features.pooled_strides``), so the
fine-tuned backbone sharpens exactly what the pooled kNN and the Gaussian read. Augmentations
are geometric (scale 0.8-1, shift up to 8%, rotation up to 10 degrees; no flips: a mirrored chest
is not a normal chest) and photometric (gamma 0.7-1.4, contrast 0.8-1.2), the latter because
the intensity curve is what differs between hospitals' pipelines and should not count.

Two ways, by ``features.finetune_trunk_stride``. 0 (:func:`finetune_backbone`): every step sends
two augmented views of each film forward and backward through the whole backbone, as the MSC
paper does. 16 (the default) or 8 (:func:`finetune_head`): the stages up to that stride stay
frozen, the films pass through them once (the fit's features pass needs that pass anyway), and
only the later stages are fine-tuned, on the cached maps, with the films' warps applied to the
maps and a per-channel gain in place of gamma and contrast. On by default, 2 epochs over 1,000
of the normals (``features.finetune_films``), because that raised the worst validation view on
films radiologists labelled and on the NIH validation sets, in a fraction of the whole
backbone's time (see docs/results.md#fitting-in-minutes). ``features.finetune_epochs = 0``
keeps the ImageNet backbone frozen.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...inference import inference_autocast
from .torch_model import FeatureDetector

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What the fine-tuning did: the mean loss of each epoch and the time it took."""

    epoch_losses: list[float]
    seconds: float


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` draws (N,) from U(low, high) on the CPU generator."""
    return low + (high - low) * torch.rand(count, generator=generator)


def random_warp(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each of maps (N, C, H, W) under its own random affine warp: rotation up to 10 degrees,
    scale 0.8-1, shift up to 8% of the side; borders are repeated."""
    count = maps.shape[0]
    angle = _uniform(count, -10.0, 10.0, generator) * math.pi / 180.0
    scale = _uniform(count, 0.8, 1.0, generator)
    shift_x, shift_y = _uniform(count, -0.08, 0.08, generator), _uniform(count, -0.08, 0.08, generator)
    theta = torch.zeros(count, 2, 3)  # (N, 2, 3) affine maps of the output grid to the input
    theta[:, 0, 0], theta[:, 0, 1] = scale * torch.cos(angle), -scale * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = scale * torch.sin(angle), scale * torch.cos(angle)
    theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
    grid = F.affine_grid(theta.to(maps.device, maps.dtype), list(maps.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(maps, grid, padding_mode="border", align_corners=False)  # (N, C, H, W)


def augment_maps(maps: torch.Tensor, generator: torch.Generator, jitter: float) -> torch.Tensor:
    """A random view of cached backbone maps (N, C, h, w): the films' affine warp applied to the
    maps (the convolutions commute with it up to their receptive fields), and a per-channel gain
    of 1 + ``jitter`` x N(0, 1) in place of the films' gamma and contrast."""
    gain = 1.0 + jitter * torch.randn(maps.shape[0], maps.shape[1], 1, 1, generator=generator)  # (N, C, 1, 1)
    return random_warp(maps, generator) * gain.to(maps.device, maps.dtype)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random view of each model input (N, 3, S, S) in [-1, 1]: affine warp, gamma, contrast.

    The random parameters come from ``generator`` (a CPU generator) and are moved to the
    images' device, so a seed gives the same views on every device.
    """
    count = images.shape[0]
    warped = random_warp(images, generator)  # (N, 3, S, S)
    gamma = _uniform(count, 0.7, 1.4, generator).view(-1, 1, 1, 1).to(images.device)
    contrast = _uniform(count, 0.8, 1.2, generator).view(-1, 1, 1, 1).to(images.device)
    unit = ((warped + 1.0) / 2.0).clamp(0.0, 1.0) ** gamma
    mean = unit.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    unit = ((unit - mean) * contrast + mean).clamp(0.0, 1.0)
    return unit * 2.0 - 1.0


def mean_shifted_contrastive_loss(
    first: torch.Tensor, second: torch.Tensor, centre: torch.Tensor, temperature: float
) -> torch.Tensor:
    """NT-Xent loss of two views' embeddings (N, D) each, as unit directions from ``centre`` (D,)."""
    first = F.normalize(F.normalize(first, dim=1) - centre, dim=1)
    second = F.normalize(F.normalize(second, dim=1) - centre, dim=1)
    both = torch.cat([first, second])  # (2N, D)
    logits = both @ both.T / temperature  # (2N, 2N)
    logits = logits.masked_fill(torch.eye(len(both), dtype=torch.bool, device=both.device), float("-inf"))
    count = len(first)
    # view i of the first half is paired with view i of the second half, and vice versa
    targets = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(both.device)
    return F.cross_entropy(logits, targets)


def finetune_backbone(
    detector: FeatureDetector,
    train_pixels: np.ndarray,
    *,
    device: torch.device,
    precision: str,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune the whole of ``detector.backbone`` in place on uint8 normal films (N, S, S) with
    the MSC loss, each step on two augmented views of a batch of films.

    Runs ``features.finetune_epochs`` epochs of shuffled batches of ``features.batch_size``
    films (the last incomplete batch is skipped: the loss needs other films as negatives), SGD
    with momentum 0.9 and weight decay 5e-5 as in the MSC paper, seeded by ``features.seed``.
    The backbone is left frozen and in eval mode again afterwards.
    """
    started = time.perf_counter()
    settings = detector.config.features
    batch_size = min(settings.batch_size, len(train_pixels))
    with torch.no_grad():  # not inference_mode: the centre takes part in the loss's graph
        parts = [
            detector.pooled_features(detector.model_input(train_pixels[begin : begin + batch_size], device)).float()
            for begin in tqdm(
                range(0, len(train_pixels), batch_size),
                desc="fine-tuning, centre of the normals",
                unit="batch",
                disable=not progress,
            )
        ]  # (B, D) each

    def two_views(rows: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images = detector.model_input(train_pixels[rows], device)  # (B, 3, S, S)
        with inference_autocast(device, precision):  # bf16 where native, as for scoring
            first = detector.pooled_features(augment(images, generator))  # (B, D)
            second = detector.pooled_features(augment(images, generator))
        return first, second

    parameters = list(detector.backbone.parameters())
    return _contrastive_epochs(detector, len(train_pixels), torch.cat(parts), parameters, two_views, progress, started)


def finetune_head(
    detector: FeatureDetector,
    trunk_maps: dict[int, torch.Tensor],
    *,
    device: torch.device,
    precision: str,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune the backbone's stages after ``features.finetune_trunk_stride`` in place, on the
    frozen trunk's maps of the normal films ({stride: (N, C, h, w)}, from one pass), with the MSC
    loss on two views of each map made by :func:`augment_maps`.

    The schedule, optimiser and seed are those of :func:`finetune_backbone`; only the later
    stages run, forward and backward, so a step costs a fraction of a whole-backbone step.
    """
    started = time.perf_counter()
    settings = detector.config.features
    stride = settings.finetune_trunk_stride
    count = len(trunk_maps[stride])
    batch_size = min(settings.batch_size, count)
    with torch.no_grad():
        parts = [
            detector.pooled_features_of_head(
                {key: value[begin : begin + batch_size] for key, value in trunk_maps.items()}, stride
            ).float()
            for begin in range(0, count, batch_size)
        ]  # (B, D) each

    def two_views(rows: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(rows).to(device)
        views = []
        for _ in range(2):
            maps = {
                key: augment_maps(value[index], generator, settings.finetune_map_jitter)
                for key, value in trunk_maps.items()
            }
            with inference_autocast(device, precision):
                views.append(detector.pooled_features_of_head(maps, stride))  # (B, D)
        return views[0], views[1]

    parameters = detector.backbone.head_parameters(stride)
    return _contrastive_epochs(detector, count, torch.cat(parts), parameters, two_views, progress, started)


def _contrastive_epochs(
    detector: FeatureDetector,
    count: int,
    centre_features: torch.Tensor,
    parameters: list[torch.nn.Parameter],
    two_views: Callable[[np.ndarray, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    progress: bool,
    started: float,
) -> FinetuneResult:
    """The MSC epochs shared by both ways of fine-tuning: ``two_views(rows, generator)`` gives the
    pooled features (B, D) of two views of the films ``rows``; ``centre_features`` (N, D) are the
    films' features before fine-tuning, whose normalised mean is the fixed centre; ``started``:
    when the fine-tuning began (``perf_counter``)."""
    settings = detector.config.features
    generator = torch.Generator().manual_seed(settings.seed)
    films = np.arange(count)
    if 0 < settings.finetune_films < count:  # its own generator: the default's batches stay as they were
        films = np.sort(np.random.default_rng(settings.seed).choice(count, settings.finetune_films, replace=False))
    batch_size = min(settings.batch_size, len(films))
    centre = F.normalize(centre_features, dim=1).mean(dim=0)  # (D,)
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimiser = torch.optim.SGD(parameters, lr=settings.finetune_learning_rate, momentum=0.9, weight_decay=5e-5)
    epoch_losses: list[float] = []
    try:
        for epoch in range(1, settings.finetune_epochs + 1):
            order = films[torch.randperm(len(films), generator=generator).numpy()]
            starts = range(0, len(order) - batch_size + 1, batch_size)
            losses = []
            for begin in tqdm(
                starts,
                desc=f"fine-tuning, epoch {epoch}/{settings.finetune_epochs}",
                unit="batch",
                disable=not progress,
            ):
                first, second = two_views(np.sort(order[begin : begin + batch_size]), generator)
                loss = mean_shifted_contrastive_loss(
                    first.float(), second.float(), centre, settings.finetune_temperature
                )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
            epoch_losses.append(float(np.mean(losses)))
            logger.info(
                "fine-tuning epoch %d/%d: mean-shifted contrastive loss %.4f",
                epoch,
                settings.finetune_epochs,
                epoch_losses[-1],
            )
    finally:
        for parameter in parameters:
            parameter.requires_grad_(False)
        detector.eval()
    return FinetuneResult(epoch_losses, time.perf_counter() - started)
