"""One-class models on the features of a pretrained CNN (PaDiM/PatchCore family).

:class:`FeatureDetector` holds the backbone (:mod:`.backbone`; fine-tuned on the normals by
:mod:`.finetune` when ``features.finetune_epochs`` > 0, frozen from then on) and three fitted
models of the normal films' features, each giving one score component (see
:class:`~cxr_anomaly.models.features.config.FeatureConfig` for the settings):

- ``gaussian``: Mahalanobis distance of the pooled multi-scale features to a Gaussian of the
  normals (mean and Ledoit-Wolf shrinkage covariance), as in PaDiM but per film;
- ``pooled_knn``: mean cosine distance of the pooled features to the k nearest normals;
- ``patch_knn``: the largest distance of any local patch feature to its nearest patch in a
  coreset memory bank of normal patches (PatchCore); the patch distances form the anomaly map.

Nearest-neighbour distances are written with matrix products (|a|² - 2ab + |b|²) rather than
``torch.cdist``, so the graph exports to ONNX and runs under bf16 autocast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ... import inference
from ...config import Config
from ...data.resample import preprocess_on
from ..base import AnomalyDetector, AnomalyOutput
from .backbone import build_backbone
from .config import COMPONENTS

logger = logging.getLogger(__name__)


# Scoring batches: the fastest per device, thread count and precision; either gives the same
# scores (see docs/results.md#speed-on-a-2-core-cpu, docs/results.md#speed-with-native-bf16).
CPU_SCORING_BATCH_SIZE = 16
MANY_CORE_BF16_SCORING_BATCH_SIZE = 64
MANY_CORE_THREADS = 12  # the fewest torch threads at which the larger batch pays, with native bf16
# A GPU preprocesses the films itself, so a larger batch pays there (see docs/results.md#speed-on-a-gpu).
GPU_SCORING_BATCH_SIZE = 256
# Query rows per block in nearest_distances: on a CPU a block stays in the cache through the
# passes after the product; a GPU keeps the larger block, for fewer kernel launches (see
# docs/results.md#speed-with-native-bf16).
NEAREST_CHUNK = 4096
CPU_NEAREST_CHUNK = 1024


def squared_distances(
    queries: torch.Tensor, bank: torch.Tensor, queries_squared: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared Euclidean distances (Q, M) between rows of queries (Q, C) and bank (M, C).

    ``queries_squared`` (Q, 1) may bring |q|² computed once for repeated calls with the same
    queries (greedy coreset selection). The (Q, M) result is updated in place rather than built
    from temporaries of its size: the same numbers, with one pass over memory instead of five.
    """
    if queries_squared is None:
        queries_squared = queries.pow(2).sum(dim=1, keepdim=True)  # (Q, 1)
    cross = (queries @ bank.T).float()  # (Q, M); fp32 even when autocast made the product bf16
    # -2ab + |a|² + |b|², in place: the same values as |a|² - 2ab + |b|² (negation is exact)
    return cross.mul_(-2.0).add_(queries_squared).add_(bank.pow(2).sum(dim=1)[None, :]).clamp_min_(0.0)


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Euclidean distance (Q,) of each query row (Q, C) to its nearest bank row (M, C).

    The same numbers as ``squared_distances(queries, bank).min(dim=1).values.sqrt()``, computed
    ``chunk_size`` queries at a time (default: :data:`CPU_NEAREST_CHUNK` on a CPU,
    :data:`NEAREST_CHUNK` elsewhere) so that the whole (Q, M) matrix never exists: 3.3 GB for a
    batch of 64 films at a 28x28 patch grid against 16,384 bank patches. ``amin`` gives the
    values of ``min`` without computing its indices. An ONNX export takes
    the one-block path, so the graph holds no loop fixed to the example's batch size.
    """
    if chunk_size is None:
        chunk_size = CPU_NEAREST_CHUNK if queries.device.type == "cpu" else NEAREST_CHUNK
    if len(queries) <= chunk_size or torch.onnx.is_in_onnx_export():
        return squared_distances(queries, bank).amin(dim=1).sqrt()
    return torch.cat([squared_distances(part, bank).amin(dim=1) for part in queries.split(chunk_size)]).sqrt()


def to_grid(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize (N, C, h, h) to (N, C, grid, grid): average when shrinking by a whole factor, else bilinear.

    Sizes are read as Python ints so that an exported graph holds fixed kernel sizes.
    """
    size = int(feature_map.shape[-1])
    if size == grid:
        return feature_map
    if size > grid and size % grid == 0:
        return F.avg_pool2d(feature_map, size // grid)
    return F.interpolate(feature_map, size=(grid, grid), mode="bilinear", align_corners=False)


@dataclass
class PooledScores:
    """The two components read from a film's pooled features, (N,) each, fp32."""

    gaussian: torch.Tensor
    pooled_knn: torch.Tensor


class FeatureDetector(AnomalyDetector):
    """A frozen CNN and one-class models of its features; see the module docstring.

    Buffers filled by :func:`cxr_anomaly.models.features.fitting.fit_features` (empty before):
    ``gaussian_mean`` (D,), ``gaussian_precision`` (D, D), ``pooled_bank`` (K, D) of unit
    vectors, ``patch_bank`` (M, C), and ``patch_radius`` (), the largest distance of a training
    patch to the bank, which scales the heatmap. ``train_pooled`` (N, D) keeps every training
    normal's pooled features, which scoring does not read: a refit on more normals
    (:mod:`.refit`) fits the Gaussian and the pooled bank on the union from them. Checkpoints
    written before it existed load with it empty (0, D).
    """

    family = "features"
    component_names = COMPONENTS

    def __init__(self, config: Config, *, pretrained: bool = True) -> None:
        super().__init__(config)
        settings = config.features
        # Without ``pretrained`` a checkpoint brings the weights; the packaged ones need not be read.
        self.backbone, _ = build_backbone(settings.backbone, settings.weights_path or None, pretrained=pretrained)
        channels = self.backbone.channels  # {stride: channels}
        pooled_dim = sum(channels[stride] for stride in settings.pooled_strides)
        patch_dim = sum(channels[stride] for stride in settings.patch_strides)
        self.register_buffer("gaussian_mean", torch.zeros(pooled_dim))
        self.register_buffer("gaussian_precision", torch.zeros(pooled_dim, pooled_dim))
        self.register_buffer("pooled_bank", torch.zeros(0, pooled_dim))
        self.register_buffer("patch_bank", torch.zeros(0, patch_dim))
        self.register_buffer("patch_radius", torch.tensor(1.0))
        self.register_buffer("train_pooled", torch.zeros(0, pooled_dim))

    def _load_from_state_dict(
        self, state_dict: dict[str, torch.Tensor], prefix: str, *args: object, **kwargs: object
    ) -> None:
        # load_state_dict hands each module its own copy of the mapping: adding a key changes no caller's
        state_dict.setdefault(prefix + "train_pooled", torch.zeros(0, self.train_pooled.shape[1]))
        # The banks' sizes depend on the data they were fitted on: take the stored shapes.
        for name in ("pooled_bank", "patch_bank", "train_pooled"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    @property
    def is_fitted(self) -> bool:
        """Whether the memory banks hold normal films."""
        return len(self.pooled_bank) > 0 and len(self.patch_bank) > 0

    def scoring_batch_size(self, device: torch.device) -> int:
        """Films a pass: on a CPU 16 (:data:`CPU_SCORING_BATCH_SIZE`), or 64 where torch has at
        least :data:`MANY_CORE_THREADS` threads and the CPU computes bf16 natively (where ``auto``
        precision scores in bf16); :data:`GPU_SCORING_BATCH_SIZE` on other devices."""
        if device.type != "cpu":
            return GPU_SCORING_BATCH_SIZE
        if torch.get_num_threads() >= MANY_CORE_THREADS and inference.native_bf16("cpu"):
            return MANY_CORE_BF16_SCORING_BATCH_SIZE
        return CPU_SCORING_BATCH_SIZE

    @property
    def anomaly_map_scale(self) -> float:
        """Without a calibrated heatmap range, full colour where a patch lies as far from the bank
        as the farthest 0.1% of the training normals' patches."""
        return float(self.patch_radius)

    @property
    def description(self) -> str:
        """Backbone, whether it was fine-tuned on the normals, and score."""
        settings = self.config.features
        tuned = ""
        if settings.finetune_epochs:
            where = f", stages after stride {settings.finetune_trunk_stride}" if settings.finetune_trunk_stride else ""
            tuned = f" fine-tuned {settings.finetune_epochs} epochs (MSC{where})"
        return f"features ({settings.backbone}{tuned}, {settings.score})"

    def model_input(self, pixels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 films (N, S, S) -> (N, 3, S, S) in [-1, 1] on ``device``, the grey film in all three
        channels; preprocessed on that device (on a GPU: 80-89% of scoring time when it ran on
        the CPU's threads)."""
        # on a CPU, as many preprocessing threads as torch computes with (serve --threads)
        films = preprocess_on(pixels, self.config.data, device, threads=torch.get_num_threads())  # (N, S, S)
        images = films * 2.0 - 1.0
        return images[:, None].expand(-1, 3, -1, -1).contiguous()  # (N, 3, S, S)

    def _pool(self, maps: dict[int, torch.Tensor]) -> torch.Tensor:
        """{stride: (N, C_s, h, w)} -> (N, D): the average-pooled maps of ``pooled_strides``."""
        return torch.cat(
            [maps[stride].float().mean(dim=(2, 3)) for stride in self.config.features.pooled_strides], dim=1
        )

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, D) of model inputs (N, 3, S, S): what the Gaussian and pooled kNN read."""
        return self._pool(self.backbone(images))

    def head_maps(self, trunk_maps: dict[int, torch.Tensor], stride: int) -> dict[int, torch.Tensor]:
        """The trunk's maps up to ``stride`` ({stride: (N, C_s, h, w)}) with the maps of the later
        stages computed from them: what :meth:`backbone` returns for the films."""
        return {**trunk_maps, **self.backbone.forward_head(trunk_maps, stride)}

    def pooled_features_of_head(self, trunk_maps: dict[int, torch.Tensor], stride: int) -> torch.Tensor:
        """Pooled features (N, D) from the trunk's maps up to ``stride``, through the later stages."""
        return self._pool(self.head_maps(trunk_maps, stride))

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (N, D) and patch features (N, C, g, g) of model inputs (N, 3, S, S)."""
        return self.embed_maps(self.backbone(images))  # maps: {stride: (N, C_s, S/s, S/s)}

    def embed_maps(self, maps: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (N, D) and patch features (N, C, g, g) of the backbone's maps {stride: map}."""
        return self._pool(maps), self.patch_features(maps, self.config.features.patch_grid)

    def patch_features(self, maps: dict[int, torch.Tensor], grid: int) -> torch.Tensor:
        """{stride: (N, C_s, h, w)} -> (N, C, grid, grid): the patch features of ``patch_strides``."""
        # A patch sees its 3x3 neighbourhood (PatchCore's local aggregation); every stride is
        # brought to one grid so that a location's features line up.
        return torch.cat(
            [
                to_grid(F.avg_pool2d(maps[stride].float(), 3, 1, 1), grid)
                for stride in self.config.features.patch_strides
            ],
            dim=1,
        )  # (N, C, g, g)

    def pooled_scores(self, pooled: torch.Tensor) -> PooledScores:
        """The ``gaussian`` and ``pooled_knn`` components of pooled features (N, D), in fp32.

        They run in fp32 under bf16 autocast too. Their products are small (a batch against a bank
        of a few thousand normals), and in bf16 a cosine similarity near 1 moves in steps of
        2^-8, so whole groups of films tied on the worklist (see
        docs/results.md#pooled-scores-in-fp32). The patch search stays under autocast: it is most
        of the heads' cost, and its distances, though less precise in bf16, do not collapse into ties.
        """
        with inference.without_autocast(pooled.device):
            centred = pooled - self.gaussian_mean  # (N, D)
            gaussian = ((centred @ self.gaussian_precision) * centred).sum(dim=1).clamp_min(0.0).sqrt()
            unit = pooled / pooled.norm(dim=1, keepdim=True).clamp_min(1e-12)
            similarity = unit @ self.pooled_bank.T  # (N, K)
            neighbours = min(self.config.features.neighbours, max(len(self.pooled_bank), 1))
            pooled_knn = 1.0 - similarity.topk(neighbours, dim=1).values.mean(dim=1)
        return PooledScores(gaussian, pooled_knn)

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        """Score model inputs (N, 3, S, S); every component is computed, the score is the chosen one."""
        pooled, patches = self.embed(images)
        pooled, patches = pooled.float(), patches.float()
        pooled_scores = self.pooled_scores(pooled)
        count, channels, grid, _ = patches.shape
        flat = patches.permute(0, 2, 3, 1).reshape(-1, channels)  # (N*g*g, C)
        nearest = nearest_distances(flat, self.patch_bank)  # (N*g*g,)
        anomaly_map = nearest.reshape(count, 1, grid, grid)
        patch_knn = anomaly_map.flatten(1).max(dim=1).values
        components = {
            "gaussian": pooled_scores.gaussian,
            "pooled_knn": pooled_scores.pooled_knn,
            "patch_knn": patch_knn,
        }
        return AnomalyOutput(
            score=components[self.config.features.score], components=components, anomaly_map=anomaly_map
        )
