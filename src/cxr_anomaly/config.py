"""Frozen configuration dataclasses, saved in full with every checkpoint.

A configuration is a tree of frozen dataclasses. It round-trips through plain dictionaries
(:func:`config_to_dict` / :func:`config_from_dict`) so that it can live in a JSON or TOML file
(``--config FILE``) and inside a checkpoint without pickling any code.

Symbols of the paper (Tang et al., ICASSP 2019) appear only in comments next to the field that
holds them: λ1, λ2 and λ3 are the weights of eq. 5 and eq. 6.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tomllib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import ConfigError

logger = logging.getLogger(__name__)

Variant = Literal["u", "u+e", "u+d", "u+d+e"]
VARIANTS: tuple[str, ...] = get_args(Variant)
# Sides (px) of the encoder maps of the 64 px networks, each a possible skip into the decoder.
SKIP_SIDES: tuple[int, ...] = (32, 16, 8, 4)

InitScheme = Literal["dcgan", "standard_normal"]
Intensity = Literal["none", "per_image", "equalize"]
Precision = Literal["auto", "fp32", "bf16"]
ScoreMethod = Literal["eq6", "code_knn"]
Method = Literal["features", "tang2019", "pixel_knn"]
METHODS: tuple[str, ...] = get_args(Method)
DEFAULT_METHOD: Method = "features"  # the family of Config() and of `--method` left out
FeatureScore = Literal["gaussian", "patch_knn", "pooled_knn"]
FEATURE_SCORES: tuple[str, ...] = get_args(FeatureScore)
# Preprocessing of each family when the data section does not say: the features family's makes
# the backbone see the chest rather than the exporter (see docs/results.md#preprocessing-and-score);
# tang2019 keeps the paper's plain films.
METHOD_DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "features": {"image_size": 224, "intensity": "equalize", "border_crop": 0.2, "detail_size": 64},
    "tang2019": {"image_size": 64},
}


@dataclass(frozen=True)
class ModelConfig:
    """Network shapes and the ablation switch.

    ``variant`` selects which networks exist: ``u`` (the U-Net alone), ``u+e`` (plus the second
    encoder E), ``u+d`` (plus the discriminator D) and ``u+d+e`` (the full model of the paper).

    ``init`` chooses the weight initialisation. The paper says "standard normal"; we default to
    DCGAN practice, N(0, 0.02) for convolutions and N(1, 0.02) for BatchNorm scales, because
    N(0, 1) weights in a 5-layer network without fan-in scaling saturate the Tanh output and the
    LeakyReLUs at the first step. ``standard_normal`` is available to reproduce the text literally.

    ``skip_connections`` lists the sides (in pixels) of the encoder maps that U's decoder
    concatenates: the paper's U-Net has all four, 32, 16, 8 and 4. Leaving out 32 keeps the
    decoder from copying the film's fine detail around the code; an empty tuple makes U a plain
    autoencoder, whose only path from input to output is the ``latent_dim``-dimensional code.
    """

    variant: Variant = "u+d+e"
    image_size: int = 64
    latent_dim: int = 100
    base_channels: int = 64
    skip_connections: tuple[int, ...] = SKIP_SIDES
    init: InitScheme = "dcgan"
    input_noise_std: float = 0.05  # std of the Gaussian noise added to U's input while training

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"model.variant={self.variant!r}; expected one of {VARIANTS}")
        skips = tuple(self.skip_connections)  # TOML and JSON give lists
        object.__setattr__(self, "skip_connections", skips)
        if any(side not in SKIP_SIDES for side in skips) or len(set(skips)) != len(skips):
            raise ConfigError(
                f"model.skip_connections={list(skips)}; expected distinct sides out of "
                f"{list(SKIP_SIDES)} (empty: no skips)"
            )
        if self.image_size != 64:
            raise ConfigError(f"model.image_size={self.image_size}; the paper's 5-layer networks need 64")
        if self.latent_dim < 1 or self.base_channels < 1:
            raise ConfigError(
                f"model.latent_dim={self.latent_dim}, model.base_channels={self.base_channels}; both must be positive"
            )
        if self.init not in get_args(InitScheme):
            raise ConfigError(f"model.init={self.init!r}; expected one of {get_args(InitScheme)}")
        if self.input_noise_std < 0:
            raise ConfigError(f"model.input_noise_std={self.input_noise_std}; must be >= 0")

    def describe(self) -> str:
        """The network shape in a few words, for table headers: ``base_channels 64, latent 100, skips 32/16/8/4``."""
        skips = "/".join(map(str, self.skip_connections)) or "none"
        return f"base_channels {self.base_channels}, latent {self.latent_dim}, skips {skips}"

    @property
    def has_discriminator(self) -> bool:
        """Whether the variant builds D."""
        return "d" in self.variant.split("+")

    @property
    def has_second_encoder(self) -> bool:
        """Whether the variant builds E."""
        return "e" in self.variant.split("+")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the training objective L = λ1·L_R + λ2·L_A + λ3·L_E + L_F (eq. 5)."""

    weight_reconstruction: float = 20.0  # λ1 in eq. 5
    weight_adversarial: float = 4.0  # λ2 in eq. 5
    weight_latent: float = 8.0  # λ3 in eq. 5
    weight_feature: float = 1.0  # weight of L_F, 1 in the paper

    def __post_init__(self) -> None:
        for name in ("weight_reconstruction", "weight_adversarial", "weight_latent", "weight_feature"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name}={getattr(self, name)}; weights must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults are the paper's."""

    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    # "auto": bf16 autocast where the device computes bf16 natively (AVX512-BF16, AMX, most
    # CUDA GPUs), fp32 elsewhere, where bf16 is emulated and slower; the record names the one used.
    precision: Precision = "auto"
    calibration_fraction: float = 0.1  # normals held out by patient when no val split exists
    # Robustness (issue 7). A training state is written to the run folder after every epoch and,
    # when checkpoint_every_steps > 0, also every that many optimisation steps.
    checkpoint_every_steps: int = 0
    # Under DDP, BatchNorm normalises with each rank's own batch statistics unless this is set:
    # SyncBatchNorm then pools them over the global batch, as a single-process run would (CUDA only).
    sync_batchnorm: bool = False
    # GAN guard: stop when D(x') stays below collapse_threshold for every image of the global
    # batch for collapse_patience_steps consecutive steps (0 disables the guard).
    collapse_patience_steps: int = 500
    collapse_threshold: float = 1e-3
    # Re-estimate BatchNorm running statistics over the training normals after training: after
    # few steps they still remember their initial values and eval-mode reconstructions come out
    # flat grey (see docs/notebook/2026-11-results-history.md#what-moves-the-auc-issue-4-research).
    recalibrate_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs={self.epochs}; must be >= 1")
        if self.batch_size < 2:
            raise ConfigError(f"train.batch_size={self.batch_size}; BatchNorm needs >= 2")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate={self.learning_rate}; must be > 0")
        if self.precision not in get_args(Precision):
            raise ConfigError(f"train.precision={self.precision!r}; expected {get_args(Precision)}")
        if not 0.0 <= self.calibration_fraction < 1.0:
            raise ConfigError(f"train.calibration_fraction={self.calibration_fraction}; must be in [0, 1)")
        if self.checkpoint_every_steps < 0 or self.collapse_patience_steps < 0:
            raise ConfigError(
                f"train.checkpoint_every_steps={self.checkpoint_every_steps}, "
                f"train.collapse_patience_steps={self.collapse_patience_steps}; both must be >= 0"
            )
        if not 0.0 < self.collapse_threshold < 1.0:
            raise ConfigError(f"train.collapse_threshold={self.collapse_threshold}; must be in (0, 1)")


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing applied identically at training and scoring time."""

    image_size: int = 64
    intensity: Intensity = "none"  # per-film normalisation before the model sees it
    max_image_pixels: int = 100_000_000  # larger images are refused as decompression bombs
    # Fraction of each side cut away before the model sees the film (exporters differ in their
    # borders, labels and collimation; the lungs are in the middle). 0 keeps the whole film.
    border_crop: float = 0.0
    # Shrink every film to this side and back before the model sees it, so that films from a
    # 64 px exporter and a 1024 px one carry the same detail. 0 keeps the input's detail.
    detail_size: int = 0

    def __post_init__(self) -> None:
        if self.intensity not in get_args(Intensity):
            raise ConfigError(f"data.intensity={self.intensity!r}; expected {get_args(Intensity)}")
        if self.image_size < 8:
            raise ConfigError(f"data.image_size={self.image_size}; must be >= 8")
        if not 0.0 <= self.border_crop < 0.5:
            raise ConfigError(f"data.border_crop={self.border_crop}; must be in [0, 0.5)")
        if self.detail_size < 0 or (0 < self.detail_size < 8):
            raise ConfigError(f"data.detail_size={self.detail_size}; must be 0 (off) or >= 8")


@dataclass(frozen=True)
class ScoreConfig:
    """Which anomaly score a film gets.

    ``method="eq6"`` is the paper's A(x) = λ1·|x - x'|_1 + λ2·(1 - D(x')) + λ3·||z - z'||_2 (eq. 6);
    components of networks the variant lacks are left out of the sum.
    ``method="code_knn"`` is the mean Euclidean distance from the code z = UE(x) to the
    ``neighbours`` nearest codes of the training normals, stored with the model after training.
    It is a one-class score too (only normal films are stored). It exists because reconstruction
    error can rank abnormal films as *easier* to reconstruct, while the learnt code separates them
    on some collections (see docs/notebook/2026-11-results-history.md#what-moves-the-auc-issue-4-research).
    """

    method: ScoreMethod = "eq6"
    neighbours: int = 5  # k of the code-space kNN distance
    weight_reconstruction: float = 20.0  # λ1 in eq. 6
    weight_adversarial: float = 4.0  # λ2 in eq. 6
    weight_latent: float = 8.0  # λ3 in eq. 6
    target_specificity: float = 0.95  # operating point fitted on normal validation films

    def __post_init__(self) -> None:
        if self.method not in get_args(ScoreMethod):
            raise ConfigError(f"score.method={self.method!r}; expected one of {get_args(ScoreMethod)}")
        if self.neighbours < 1:
            raise ConfigError(f"score.neighbours={self.neighbours}; must be >= 1")
        if not 0.0 < self.target_specificity < 1.0:
            raise ConfigError(f"score.target_specificity={self.target_specificity}; must be in (0, 1)")


@dataclass(frozen=True)
class FeatureConfig:
    """The pretrained-feature detector (``method = "features"``, :mod:`cxr_anomaly.models.features`).

    An ImageNet CNN, fine-tuned on the normals for ``finetune_epochs`` (0: left frozen), turns
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
    # backbone frozen (see docs/results.md#fine-tuning-the-backbone).
    finetune_epochs: int = 2
    finetune_learning_rate: float = 3e-5
    finetune_temperature: float = 0.25

    def __post_init__(self) -> None:
        if self.finetune_epochs < 0:
            raise ConfigError(f"features.finetune_epochs={self.finetune_epochs}; must be >= 0")
        for name in ("finetune_learning_rate", "finetune_temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"features.{name}={getattr(self, name)}; must be > 0")
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


@dataclass(frozen=True)
class Config:
    """The whole configuration of one run.

    ``method`` names the detector family: ``features`` (the default, a pretrained CNN fine-tuned on
    the normals, with one-class models of its features; section ``features``) or ``tang2019``
    (the paper's GAN; sections ``model``, ``loss`` and ``train``). ``data`` and ``score`` apply
    to both, and so do ``train.device`` and ``train.precision``, where either family fits.
    """

    method: Method = "features"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(**METHOD_DATA_DEFAULTS["features"]))
    score: ScoreConfig = field(default_factory=ScoreConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}; expected one of {METHODS}")
        if self.method == "tang2019" and self.data.image_size != self.model.image_size:
            raise ConfigError(
                f"data.image_size={self.data.image_size} differs from "
                f"model.image_size={self.model.image_size}; the tang2019 networks read 64 px films"
            )
        if self.method == "features" and (self.data.image_size < 64 or self.data.image_size % 32):
            raise ConfigError(
                f"data.image_size={self.data.image_size}; the features method needs a "
                "multiple of 32, at least 64 (224 by default)"
            )


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "score": ScoreConfig,
    "features": FeatureConfig,
}


def config_to_dict(config: Config) -> dict[str, Any]:
    """Return the configuration as plain values: ``method`` and one dictionary per section.

    Tuples become lists, so the result is JSON- and TOML-serialisable and loads with
    ``torch.load(weights_only=True)`` inside a checkpoint.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def _check_field_types(section_type: type, values: dict[str, Any], section_name: str) -> None:
    """Check each value of ``values`` against the declared type of its field in ``section_type``.

    Driven by :func:`dataclasses.fields` and :func:`typing.get_type_hints`, so sections and fields
    added later are checked without changes here. TOML and JSON give the right Python types, so
    nothing is coerced: ``"false"`` is not a bool (it would be true), ``2.5`` and ``"3"`` are not
    ints. A bool is neither an int nor a float; an int is accepted where a float is declared.
    Literal types accept only their listed values; tuples and lists are checked item by item.
    Keys that are not fields of ``section_type`` are left to the caller's unknown-key check.

    Raises:
        ConfigError: naming the key (``section.key``, or ``key`` at the top level), the value,
            its type and the declared type.
    """
    import numbers
    import types
    import typing

    def matches(value: Any, hint: Any) -> bool:
        origin = typing.get_origin(hint)
        arguments = typing.get_args(hint)
        if hint is Any:
            return True
        if origin is Literal:  # 1 == True, so the type must match as well as the value
            return any(type(value) is type(option) and value == option for option in arguments)
        if origin in (typing.Union, types.UnionType):
            return any(matches(value, option) for option in arguments)
        if hint is type(None):
            return value is None
        if hint is bool:
            return isinstance(value, bool)
        if hint is int:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if hint is float:
            return isinstance(value, numbers.Real) and not isinstance(value, bool)
        if origin in (tuple, list):
            if not isinstance(value, (tuple, list)):
                return False
            if origin is tuple and arguments and arguments[-1] is not Ellipsis:
                return len(value) == len(arguments) and all(map(matches, value, arguments))
            return all(matches(item, arguments[0]) for item in value) if arguments else True
        if origin is dict:
            return isinstance(value, dict) and (
                not arguments
                or all(matches(key, arguments[0]) and matches(item, arguments[1]) for key, item in value.items())
            )
        if isinstance(hint, type):
            return isinstance(value, hint)
        return True  # a typing construct not used in the config yet: accept rather than refuse

    def describe(hint: Any) -> str:
        origin = typing.get_origin(hint)
        arguments = typing.get_args(hint)
        if origin is Literal:
            return "one of " + ", ".join(repr(option) for option in arguments)
        if origin in (typing.Union, types.UnionType):
            return " or ".join(describe(option) for option in arguments)
        if hint is float:
            return "float (or int)"
        if origin in (tuple, list):
            return f"a list of {describe(arguments[0])}" if arguments else "a list"
        if hint is type(None):
            return "None"
        return getattr(hint, "__name__", str(hint))

    hints = typing.get_type_hints(section_type)
    for item in dataclasses.fields(section_type):
        if item.name not in values:
            continue
        value, hint = values[item.name], hints[item.name]
        if not matches(value, hint):
            key = f"{section_name}.{item.name}" if section_name else item.name
            raise ConfigError(f"{key}={value!r} has type {type(value).__name__}; expected {describe(hint)}")


# Keys that configurations and checkpoints written by earlier versions hold but that no longer
# change anything, with why: read and ignored, so that those files still load.
RETIRED_KEYS: dict[str, dict[str, str]] = {
    "train": {"num_workers": "films are decoded in threads (data.cache), not by DataLoader workers"},
}


def drop_retired_keys(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` without the keys of :data:`RETIRED_KEYS`, each one dropped logged."""
    values = dict(values)
    for section, retired in RETIRED_KEYS.items():
        if isinstance(values.get(section), dict) and set(retired) & set(values[section]):
            kept = dict(values[section])
            for key in set(retired) & set(kept):
                logger.info(
                    "ignoring %s.%s=%r: it is no longer a setting (%s)", section, key, kept.pop(key), retired[key]
                )
            values[section] = kept
    return values


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dictionaries; unknown keys raise :class:`ConfigError`.

    The top-level ``method`` picks the family; without it the configuration is the default
    family's. Keys missing from the ``data`` section take the family's defaults
    (:data:`METHOD_DATA_DEFAULTS`: input size and preprocessing).
    """
    values = drop_retired_keys(values)
    _check_field_types(Config, {key: value for key, value in values.items() if key not in _SECTIONS}, "")
    method = values.pop("method", DEFAULT_METHOD)
    if method not in METHODS:
        raise ConfigError(f"method={method!r}; expected one of {METHODS}")
    data_values = dict(values.get("data") or {}) if isinstance(values.get("data", {}), dict) else values["data"]
    if isinstance(data_values, dict):
        for key, value in METHOD_DATA_DEFAULTS.get(method, {}).items():
            data_values.setdefault(key, value)
        values["data"] = data_values
    sections: dict[str, Any] = {"method": method}
    for section_name, section_values in values.items():
        if section_name not in _SECTIONS:
            raise ConfigError(f"unknown config section {section_name!r}; expected {list(_SECTIONS)}")
        if not isinstance(section_values, dict):
            raise ConfigError(f"config section {section_name!r} must be a table, got {section_values!r}")
        section_type = _SECTIONS[section_name]
        known = {f.name for f in dataclasses.fields(section_type)}
        unknown = set(section_values) - known
        if unknown:
            raise ConfigError(
                f"unknown key(s) {sorted(unknown)} in config section {section_name!r}; expected some of {sorted(known)}"
            )
        _check_field_types(section_type, section_values, section_name)
        sections[section_name] = section_type(**section_values)
    return Config(**sections)


# Keys added to a section after files were already being written, with the value every file
# written before them was made with. A stored configuration (checkpoint, exported graph,
# training state) lacking one of them gets that value, not today's default: a checkpoint
# fitted before fine-tuning existed holds ImageNet's weights, whatever the default is now.
STORED_KEY_DEFAULTS: dict[str, dict[str, Any]] = {"features": {"finetune_epochs": 0}}


def stored_config_from_dict(values: dict[str, Any]) -> Config:
    """:func:`config_from_dict` for a configuration written by the package, possibly an older one.

    Keys of :data:`STORED_KEY_DEFAULTS` missing from a stored section take the value they had
    before they existed; anything else as :func:`config_from_dict`.
    """
    values = dict(values)
    for section, defaults in STORED_KEY_DEFAULTS.items():
        if isinstance(values.get(section), dict):
            values[section] = {**defaults, **values[section]}
    return config_from_dict(values)


def config_differences(
    stored: Config, requested: Config, *, ignore: Collection[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """``section.key -> (stored, requested)`` for every setting that differs (``method`` by its
    own name), leaving out the ``section.key`` names in ``ignore``."""
    stored_values, requested_values = config_to_dict(stored), config_to_dict(requested)
    differences = {}
    for section, values in stored_values.items():
        if not isinstance(values, dict):  # a top-level key (method), not a section
            if requested_values.get(section) != values:
                differences[section] = (values, requested_values.get(section))
            continue
        for key, value in values.items():
            if f"{section}.{key}" not in ignore and requested_values[section][key] != value:
                differences[f"{section}.{key}"] = (value, requested_values[section][key])
    return differences


def with_overrides(config: Config, section: str, **changes: Any) -> Config:
    """Return a copy of ``config`` with fields of one section replaced (validated again)."""
    if section not in _SECTIONS:
        raise ConfigError(f"unknown config section {section!r}")
    values = config_to_dict(config)
    values[section].update(changes)
    if section in ("model", "data") and "image_size" in changes and config.method == "tang2019":
        values["model"]["image_size"] = values["data"]["image_size"] = changes["image_size"]
    return config_from_dict(values)


def paper_config() -> Config:
    """The paper's method (``method = "tang2019"``) as literally as this package can run it.

    The score is eq. 6 and BatchNorm keeps the running statistics gathered during training;
    everything else is the default (which follows the paper: 15 epochs, batches of 64, Adam
    5e-4 with betas (0.5, 0.999), loss weights 20/4/8/1). The default ``Config()`` differs only
    where a run gave a reason to (see docs/notebook/2026-11-results-history.md#what-moves-the-auc-issue-4-research).
    """
    return config_from_dict(
        {"method": "tang2019", "score": {"method": "eq6"}, "train": {"recalibrate_batchnorm": False}}
    )


def tang2019_config() -> Config:
    """The tang2019 family with this package's defaults (64 px films, eq. 6, BatchNorm re-estimated)."""
    return config_from_dict({"method": "tang2019"})


PRESETS: dict[str, Callable[[], Config]] = {
    "default": Config,
    "features": Config,
    "tang2019": tang2019_config,
    "paper": paper_config,
}


def preset_config(name: str) -> Config:
    """The configuration of a named preset (``default``, ``paper``, or a family's name: its
    defaults)."""
    if name in PRESETS:
        return PRESETS[name]()
    if name in METHODS:
        return config_from_dict({"method": name})
    raise ConfigError(f"unknown preset {name!r}; expected one of {sorted({*PRESETS, *METHODS})}")


def load_config(path: str | Path, base: Config | None = None) -> Config:
    """Read a configuration from a ``.json`` or ``.toml`` file.

    Missing keys take the values of ``base`` (a preset), or the defaults when it is None.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: expected a .json or .toml suffix")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"config file {path} is not valid: {error}") from error
    if base is not None:
        if values.get("method", base.method) != base.method:
            base = preset_config(values["method"]) if values["method"] in METHODS else base
        merged = config_to_dict(base)
        for section, section_values in values.items():
            if section in merged and isinstance(section_values, dict):
                merged[section].update(section_values)
            else:
                merged[section] = section_values  # config_from_dict names the bad section
        values = merged
    return config_from_dict(values)
