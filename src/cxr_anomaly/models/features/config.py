"""The features family's configuration section, ``features``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ...config import Config, FamilySettings
from ...errors import ConfigError

NAME = "features"

FeatureScore = Literal["gaussian", "patch_knn", "pooled_knn"]
FEATURE_SCORES: tuple[str, ...] = get_args(FeatureScore)
# The scores every fit stores, in the order a detector returns them.
COMPONENTS: tuple[str, ...] = ("gaussian", "pooled_knn", "patch_knn")


@dataclass(frozen=True)
class FeatureConfig:
    """The pretrained-feature detector (``method = "features"``, :mod:`cxr_anomaly.models.features`).

    An ImageNet CNN, fine-tuned on the normals for ``finetune_epochs`` (0: left frozen; by default
    only its stages after stride ``finetune_trunk_stride``, on ``finetune_films`` of them), turns
    each film into feature maps at strides 8, 16 and 32. Three one-class models are fitted on the
    normals' features in one pass:

    - a bank of the normals' pooled ``pooled_strides`` features for a k-nearest-neighbour cosine
      distance (``neighbours``, at most ``pooled_bank_size`` normals);
    - a Gaussian on the globally average-pooled maps of ``pooled_strides`` (mean and a
      Ledoit-Wolf shrinkage covariance); its score is the Mahalanobis distance;
    - a PatchCore-style memory bank of local patch features (maps of ``patch_strides``, each
      averaged over 3x3 neighbours and resized to a ``patch_grid`` x ``patch_grid`` grid),
      subsampled to ``memory_bank_size`` patches by greedy coreset selection; a patch's score is
      the distance to its nearest bank patch, the film's is its worst patch, and the map of
      patch scores is the heatmap.

    ``score`` picks the film's raw score: ``gaussian``, ``patch_knn`` or ``pooled_knn`` (mean
    cosine distance of the pooled features to the ``neighbours`` nearest training normals).
    All three are computed and reported as components.
    """

    backbone: str = "efficientnet_lite0"  # efficientnet_lite0/1/2 (pip packages), or "timm:NAME"
    weights_path: str = ""  # a local state_dict file; empty: the packaged ImageNet weights
    # Deep (stride-32) pooled features: shallower maps see how a film was exported more than what
    # it shows (see docs/results.md#preprocessing-and-score).
    score: FeatureScore = "pooled_knn"
    pooled_strides: tuple[int, ...] = (32,)
    patch_strides: tuple[int, ...] = (16, 32)
    patch_grid: int = 14
    # Patches kept by the coreset: a smaller bank searches faster for little loss in the patch
    # component, which the raw score does not read (see docs/results.md#the-patch-memory-bank).
    memory_bank_size: int = 4096
    coreset_projection_dim: int = 128  # random projection that speeds up coreset selection
    neighbours: int = 5  # k of the pooled-feature kNN
    pooled_bank_size: int = 8192  # normals kept for the pooled kNN (all when fewer)
    batch_size: int = 32
    seed: int = 0  # coreset start and projection; fine-tuning's batch order and augmentations
    # Mean-shifted contrastive fine-tuning of the backbone on the normals before the fit
    # (models/features/finetune.py); it raises the worst validation view, and 0 keeps the ImageNet
    # backbone frozen (see docs/results.md#fitting-in-minutes).
    finetune_epochs: int = 2
    finetune_learning_rate: float = 3e-5
    finetune_temperature: float = 0.25
    # 0 fine-tunes the whole backbone on augmented films. 8 or 16 keeps the backbone up to that
    # stride frozen, passes the films through it once and fine-tunes the later stages on its
    # cached maps, augmented there: a fit in minutes that scored the validation films better
    # (see docs/results.md#fitting-in-minutes).
    finetune_trunk_stride: int = 16
    finetune_map_jitter: float = 0.1  # per-channel gain noise of the cached maps' augmentation
    # films fine-tuning sees: 0 every normal, N a seeded N of them (the banks hold all); 1,000 won
    # on validation against every normal at a quarter of the time
    finetune_films: int = 1000

    def __post_init__(self) -> None:
        if self.finetune_epochs < 0:
            raise ConfigError(f"features.finetune_epochs={self.finetune_epochs}; must be >= 0")
        for name in ("finetune_learning_rate", "finetune_temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"features.{name}={getattr(self, name)}; must be > 0")
        if self.finetune_trunk_stride not in (0, 8, 16):
            raise ConfigError(f"features.finetune_trunk_stride={self.finetune_trunk_stride}; expected 0, 8 or 16")
        if self.finetune_trunk_stride and self.backbone.startswith("timm:"):
            raise ConfigError(
                f"features.finetune_trunk_stride={self.finetune_trunk_stride} needs an EfficientNet-Lite "
                f"backbone, not {self.backbone!r}; set it to 0"
            )
        if self.finetune_films < 0:
            raise ConfigError(f"features.finetune_films={self.finetune_films}; must be >= 0 (0: every normal)")
        if self.finetune_map_jitter < 0:
            raise ConfigError(f"features.finetune_map_jitter={self.finetune_map_jitter}; must be >= 0")
        for name in ("pooled_strides", "patch_strides"):
            value = tuple(getattr(self, name))  # TOML and JSON give lists
            object.__setattr__(self, name, value)
            if not value or any(stride not in (8, 16, 32) for stride in value):
                raise ConfigError(f"features.{name}={list(value)}; expected a non-empty subset of [8, 16, 32]")
        if self.score not in FEATURE_SCORES:
            raise ConfigError(f"features.score={self.score!r}; expected one of {FEATURE_SCORES}")
        for name in (
            "patch_grid",
            "memory_bank_size",
            "coreset_projection_dim",
            "neighbours",
            "pooled_bank_size",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"features.{name}={getattr(self, name)}; must be >= 1")


def check_config(config: Config) -> None:
    """The backbone's strides need a film side that is a multiple of 32.

    Raises:
        ConfigError: ``data.image_size`` is not a multiple of 32 of at least 64.
    """
    if config.data.image_size < 64 or config.data.image_size % 32:
        raise ConfigError(
            f"data.image_size={config.data.image_size}; the {NAME} method needs a "
            "multiple of 32, at least 64 (224 by default)"
        )


SETTINGS = FamilySettings(
    sections={NAME: FeatureConfig},
    # makes the backbone see the chest rather than the exporter (see docs/results.md#preprocessing-and-score)
    data_defaults={"image_size": 224, "intensity": "equalize", "border_crop": 0.2, "detail_size": 64},
    # a checkpoint fitted before fine-tuning existed holds ImageNet's weights, whatever the default is now
    stored_key_defaults={NAME: {"finetune_epochs": 0, "finetune_trunk_stride": 0, "finetune_films": 0}},
    check=check_config,
    help="an ImageNet CNN, its later stages fine-tuned on the normals, with one-class models of its features",
    raw_score="the configured feature score",
    components=COMPONENTS,
    benchmark_rows=(
        f"{NAME} (the configured feature score)",
        *(f"{NAME}:{score}" for score in COMPONENTS[:-1]),
        f"{NAME}:{COMPONENTS[-1]} (the three come from one fit)",
    ),
)
