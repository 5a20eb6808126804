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

On by default (``features.finetune_epochs = 2``), because it raised the worst validation view;
it is most of a fit's time on a CPU and seconds on a GPU (see
docs/results.md#fine-tuning-the-backbone). ``features.finetune_epochs = 0`` keeps the ImageNet
backbone frozen.
"""

from __future__ import annotations

import logging
import math
import time
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


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random view of each model input (N, 3, S, S) in [-1, 1]: affine warp, gamma, contrast.

    The random parameters come from ``generator`` (a CPU generator) and are moved to the
    images' device, so a seed gives the same views on every device.
    """
    count = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    angle = uniform(-10.0, 10.0) * math.pi / 180.0
    scale = uniform(0.8, 1.0)
    shift_x, shift_y = uniform(-0.08, 0.08), uniform(-0.08, 0.08)
    gamma = uniform(0.7, 1.4).view(-1, 1, 1, 1).to(images.device)
    contrast = uniform(0.8, 1.2).view(-1, 1, 1, 1).to(images.device)
    theta = torch.zeros(count, 2, 3)  # (N, 2, 3) affine maps of the output grid to the input
    theta[:, 0, 0], theta[:, 0, 1] = scale * torch.cos(angle), -scale * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = scale * torch.sin(angle), scale * torch.cos(angle)
    theta[:, 0, 2], theta[:, 1, 2] = shift_x, shift_y
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)  # (N, S, S, 2)
    warped = F.grid_sample(images, grid, padding_mode="border", align_corners=False)  # (N, 3, S, S)
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
    """Fine-tune ``detector.backbone`` in place on uint8 normal films (N, S, S) with the MSC loss.

    Runs ``features.finetune_epochs`` epochs of shuffled batches of ``features.batch_size``
    films (the last incomplete batch is skipped: the loss needs other films as negatives), SGD
    with momentum 0.9 and weight decay 5e-5 as in the MSC paper, seeded by ``features.seed``.
    The backbone is left frozen and in eval mode again afterwards.
    """
    settings = detector.config.features
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(settings.seed)
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
        centre = F.normalize(torch.cat(parts), dim=1).mean(dim=0)  # (D,)
    parameters = list(detector.backbone.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimiser = torch.optim.SGD(parameters, lr=settings.finetune_learning_rate, momentum=0.9, weight_decay=5e-5)
    epoch_losses: list[float] = []
    try:
        for epoch in range(1, settings.finetune_epochs + 1):
            order = torch.randperm(len(train_pixels), generator=generator).numpy()
            starts = range(0, len(order) - batch_size + 1, batch_size)
            losses = []
            for begin in tqdm(
                starts,
                desc=f"fine-tuning, epoch {epoch}/{settings.finetune_epochs}",
                unit="batch",
                disable=not progress,
            ):
                films = train_pixels[np.sort(order[begin : begin + batch_size])]
                images = detector.model_input(films, device)  # (B, 3, S, S)
                with inference_autocast(device, precision):  # bf16 where native, as for scoring
                    first = detector.pooled_features(augment(images, generator))  # (B, D)
                    second = detector.pooled_features(augment(images, generator))
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
