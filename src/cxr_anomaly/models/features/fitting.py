"""Fitting the feature detector: one pass of the frozen backbone over the normal films.

Nothing is trained, unless ``features.finetune_epochs`` asks for the backbone to be fine-tuned
on the normals first (:mod:`.finetune`). The pass collects every normal film's pooled features
and patch features; then the Gaussian (mean, Ledoit-Wolf shrinkage covariance), the
pooled-feature bank and the patch memory bank (greedy k-centre coreset, as PatchCore) are
computed and stored as buffers, with the pooled features themselves, from which a refit on more
normals (:mod:`.refit`) fits the Gaussian and the pooled bank on the union.

Coreset selection is exact greedy k-centre on a random projection of a random candidate subset
of at most ``16 x memory_bank_size`` patches: the full greedy pass over millions of patches of
5,000 films would cost tens of minutes on a CPU, and the covering radius it gains is small.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from tqdm.auto import tqdm

from ...config import Config
from ...errors import NoNormalImagesError
from ...inference import inference_autocast, resolve_precision
from .finetune import FinetuneResult, finetune_backbone, finetune_head
from .torch_model import FeatureDetector, squared_distances

logger = logging.getLogger(__name__)

CANDIDATES_PER_BANK_ENTRY = 16


@dataclass
class FeatureFitResult:
    """A fitted :class:`FeatureDetector` and what the fit did."""

    detector: FeatureDetector
    num_train_images: int
    num_patches_seen: int
    memory_bank_size: int
    patch_radius: float
    seconds: float
    finetune_losses: list[float] = field(default_factory=list)  # mean loss per epoch; empty: frozen
    finetune_seconds: float = 0.0  # part of ``seconds``
    precision: str = "fp32"  # what fine-tuning and the features pass computed in

    def record(self) -> dict[str, float | int | str | list[float]]:
        """Plain values for the checkpoint's training record."""
        return {
            "family": "features",
            "num_train_images": self.num_train_images,
            "num_patches_seen": self.num_patches_seen,
            "memory_bank_size": self.memory_bank_size,
            "patch_radius": self.patch_radius,
            "seconds": self.seconds,
            "finetune_losses": self.finetune_losses,
            "finetune_seconds": self.finetune_seconds,
            "precision": self.precision,
        }


def greedy_coreset(points: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``size`` rows of points (P, C) chosen by greedy k-centre selection.

    Each step adds the point farthest from everything chosen so far, so the chosen set covers
    the rare patches that random sampling would miss.
    """
    if size >= len(points):
        return torch.arange(len(points))
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = torch.randint(len(points), (1,), generator=generator)
    # |p|² once, not once per step: each step then reads the points once (a matrix-vector product)
    points_squared = points.pow(2).sum(dim=1, keepdim=True)  # (P, 1)
    nearest = squared_distances(points, points[chosen[0]][None], points_squared).squeeze(1)  # (P,)
    for step in range(1, size):
        chosen[step] = torch.argmax(nearest)
        nearest = torch.minimum(
            nearest, squared_distances(points, points[chosen[step]][None], points_squared).squeeze(1)
        )
    return chosen


def bank_candidates(patches: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random subset (fp32) of at most ``CANDIDATES_PER_BANK_ENTRY x size`` of the patches (P, C)."""
    candidate_count = min(len(patches), CANDIDATES_PER_BANK_ENTRY * size)
    return patches[torch.randperm(len(patches), generator=generator)[:candidate_count]].float()


def coreset_bank(candidates: torch.Tensor, size: int, projection_dim: int, generator: torch.Generator) -> torch.Tensor:
    """The ``size`` candidates (P, C) that greedy k-centre selection keeps, on a random projection."""
    projection = torch.randn(candidates.shape[1], projection_dim, generator=generator)
    return candidates[greedy_coreset(candidates @ projection, size, generator)]  # (M, C)


def patch_memory_bank(
    patches: torch.Tensor, size: int, projection_dim: int, generator: torch.Generator
) -> torch.Tensor:
    """The coreset memory bank (M, C) of normal patches (P, C): see the module docstring."""
    return coreset_bank(bank_candidates(patches, size, generator), size, projection_dim, generator)


def normal_patch_radius(patches: torch.Tensor, bank: torch.Tensor, generator: torch.Generator) -> float:
    """How far normal patches (P, C) lie from the bank (M, C): the 99.9th percentile of up to
    50,000 of them, a fallback heatmap scale for uncalibrated models."""
    sample = patches[torch.randperm(len(patches), generator=generator)[:50_000]].float()
    nearest_two = torch.cat(
        [
            squared_distances(part, bank).topk(min(2, len(bank)), dim=1, largest=False).values
            for part in sample.split(4096)
        ]
    ).sqrt()  # (S, 2)
    # A patch that is itself in the bank lies at distance 0: take its nearest *other* bank patch.
    own = nearest_two[:, 0] <= 1e-6
    nearest = torch.where(own, nearest_two[:, -1], nearest_two[:, 0])
    return max(float(nearest.quantile(0.999)), 1e-6)


@dataclass
class NormalFeatures:
    """What the fitted heads read of the normal films: pooled features (N, D) in fp32 and patch
    features (N*g*g, C) in fp16, both on the CPU."""

    pooled: torch.Tensor
    patches: torch.Tensor


def features_of_maps(
    detector: FeatureDetector, maps: Iterable[dict[int, torch.Tensor]], device: torch.device, precision: str
) -> NormalFeatures:
    """Pooled and patch features of batches of backbone maps ({stride: (B, C_s, h, w)}); a lazy
    iterable's batches are computed here, in inference mode and ``precision``."""
    pooled_parts: list[torch.Tensor] = []
    patch_parts: list[torch.Tensor] = []
    with torch.inference_mode(), inference_autocast(device, precision):
        for batch in maps:
            pooled, patches = detector.embed_maps(batch)  # (B, D), (B, C, g, g)
            pooled_parts.append(pooled.float().cpu())
            # float16 halves the memory of millions of patches; distances need no more precision
            patch_parts.append(patches.float().permute(0, 2, 3, 1).reshape(-1, patches.shape[1]).half().cpu())
    return NormalFeatures(torch.cat(pooled_parts), torch.cat(patch_parts))


def trunk_pass(
    detector: FeatureDetector,
    train_pixels: np.ndarray,
    stride: int,
    device: torch.device,
    precision: str,
    progress: bool,
) -> dict[int, torch.Tensor]:
    """The frozen trunk's maps up to ``stride`` of every film, {stride: (N, C_s, h, w)} fp32 on
    ``device``: the map at ``stride`` and those of smaller strides that the scores read."""
    settings = detector.config.features
    kept = {stride} | {read for read in (*settings.pooled_strides, *settings.patch_strides) if read < stride}
    parts: dict[int, list[torch.Tensor]] = {key: [] for key in kept}
    batches = range(0, len(train_pixels), settings.batch_size)
    for begin in tqdm(batches, desc="frozen trunk of the normals", unit="batch", disable=not progress):
        images = detector.model_input(train_pixels[begin : begin + settings.batch_size], device)
        # no_grad, not inference_mode: the fine-tuned stages back-propagate through these maps
        with torch.no_grad(), inference_autocast(device, precision):
            maps = detector.backbone.forward_trunk(images, stride)
        for key in kept:
            parts[key].append(maps[key].float())
    return {key: torch.cat(value) for key, value in parts.items()}


def normal_features(
    detector: FeatureDetector,
    pixels: np.ndarray,
    *,
    device: torch.device,
    precision: str,
    progress: bool,
) -> NormalFeatures:
    """One pass of the detector's whole backbone over uint8 normal films (N, S, S), in ``precision``."""
    batch_size = detector.config.features.batch_size
    images = (
        detector.model_input(pixels[begin : begin + batch_size], device)
        for begin in tqdm(
            range(0, len(pixels), batch_size), desc="features of the normals", unit="batch", disable=not progress
        )
    )
    return features_of_maps(detector, (detector.backbone(batch) for batch in images), device, precision)


def fit_pooled_heads(detector: FeatureDetector, pooled: torch.Tensor) -> torch.Generator:
    """Fit the Gaussian and the pooled bank on every training normal's pooled features (N, D),
    and keep those features (``train_pooled``) for a later refit on more normals.

    Returns the fit's random generator (seeded by ``features.seed``), for the patch bank to go
    on drawing from: a fit and a refit on the same normals draw the same numbers.
    """
    settings = detector.config.features
    device = detector.gaussian_mean.device
    covariance = LedoitWolf().fit(pooled.double().numpy())
    generator = torch.Generator().manual_seed(settings.seed)
    unit = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if len(unit) > settings.pooled_bank_size:
        unit = unit[torch.randperm(len(unit), generator=generator)[: settings.pooled_bank_size]]
    with torch.no_grad():
        detector.gaussian_mean = torch.from_numpy(covariance.location_).float().to(device)
        detector.gaussian_precision = torch.from_numpy(covariance.precision_).float().to(device)
        detector.pooled_bank = unit.to(device)
        detector.train_pooled = pooled.float().to(device)
    return generator


def store_patch_heads(detector: FeatureDetector, bank: torch.Tensor, radius: float) -> None:
    """Put the patch memory bank (M, C) and the normal patch radius into the detector."""
    device = detector.gaussian_mean.device
    with torch.no_grad():
        detector.patch_bank = bank.to(device)
        detector.patch_radius = torch.tensor(radius, device=device)


def fit_features(
    config: Config,
    train_pixels: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    progress: bool = True,
) -> FeatureFitResult:
    """Fit a :class:`FeatureDetector` on uint8 normal films (N, S, S) in one pass.

    Raises:
        NoNormalImagesError: fewer normal films than ``features.neighbours + 1``.
    """
    settings = config.features
    if len(train_pixels) < settings.neighbours + 1:
        raise NoNormalImagesError(
            f"the features method needs at least {settings.neighbours + 1} normal "
            f"training films, got {len(train_pixels)}"
        )
    start = time.perf_counter()
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    detector = FeatureDetector(config).to(device).eval()
    finetuned = FinetuneResult([], 0.0)
    trunk_stride = settings.finetune_trunk_stride if settings.finetune_epochs > 0 else 0
    if trunk_stride:
        trunk_maps = trunk_pass(detector, train_pixels, trunk_stride, device, precision, progress)
        finetuned = finetune_head(detector, trunk_maps, device=device, precision=precision, progress=progress)
        batches = [
            {key: value[begin : begin + settings.batch_size] for key, value in trunk_maps.items()}
            for begin in range(0, len(train_pixels), settings.batch_size)
        ]
        features = features_of_maps(
            detector, (detector.head_maps(maps, trunk_stride) for maps in batches), device, precision
        )
    else:
        if settings.finetune_epochs > 0:
            finetuned = finetune_backbone(detector, train_pixels, device=device, precision=precision, progress=progress)
        features = normal_features(detector, train_pixels, device=device, precision=precision, progress=progress)
    patches_all = features.patches
    generator = fit_pooled_heads(detector, features.pooled)
    bank = patch_memory_bank(patches_all, settings.memory_bank_size, settings.coreset_projection_dim, generator)
    radius = normal_patch_radius(patches_all, bank, generator)
    store_patch_heads(detector, bank, radius)
    seconds = time.perf_counter() - start
    logger.info(
        "fitted the features detector on %d normal films in %.1f s: %d patches seen, memory bank "
        "%d, normal patch radius %.3f",
        len(train_pixels),
        seconds,
        len(patches_all),
        len(bank),
        radius,
    )
    return FeatureFitResult(
        detector,
        len(train_pixels),
        len(patches_all),
        len(bank),
        radius,
        seconds,
        finetuned.epoch_losses,
        finetuned.seconds,
        precision,
    )
