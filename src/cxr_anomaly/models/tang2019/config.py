"""The tang2019 family's configuration sections: ``model``, ``loss`` and its ``score``.

Symbols of the paper (Tang et al., ICASSP 2019) appear only in comments next to the field that
holds them: λ1, λ2 and λ3 are the weights of eq. 5 and eq. 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from ...config import Config, FamilySettings, check_target_specificity, config_from_dict
from ...errors import ConfigError

NAME = "tang2019"

Variant = Literal["u", "u+e", "u+d", "u+d+e"]
VARIANTS: tuple[str, ...] = get_args(Variant)
# Sides (px) of the encoder maps of the 64 px networks, each a possible skip into the decoder.
SKIP_SIDES: tuple[int, ...] = (32, 16, 8, 4)

InitScheme = Literal["dcgan", "standard_normal"]
ScoreMethod = Literal["eq6", "code_knn"]
# The parts of the score a detector returns, in order.
COMPONENTS: tuple[str, ...] = ("reconstruction", "adversarial", "latent", "code_distance")


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
        check_target_specificity(self.target_specificity)


def check_config(config: Config) -> None:
    """The networks read films of ``model.image_size`` (64 px).

    Raises:
        ConfigError: ``data.image_size`` differs from ``model.image_size``.
    """
    if config.data.image_size != config.model.image_size:
        raise ConfigError(
            f"data.image_size={config.data.image_size} differs from "
            f"model.image_size={config.model.image_size}; the {NAME} networks read 64 px films"
        )


# The paper's method as literally as this package can run it: eq. 6, and BatchNorm keeps the
# running statistics gathered during training.
PAPER_VALUES: dict[str, Any] = {
    "method": NAME,
    "score": {"method": "eq6"},
    "train": {"recalibrate_batchnorm": False},
}


def paper_config() -> Config:
    """The paper's method (``method = "tang2019"``) as literally as this package can run it.

    The score is eq. 6 and BatchNorm keeps the running statistics gathered during training;
    everything else is the default (which follows the paper: 15 epochs, batches of 64, Adam
    5e-4 with betas (0.5, 0.999), loss weights 20/4/8/1). The default ``Config()`` differs only
    where a run gave a reason to (see docs/notebook/2026-11-results-history.md#what-moves-the-auc-issue-4-research).
    """
    return config_from_dict(PAPER_VALUES)


def tang2019_config() -> Config:
    """The tang2019 family with this package's defaults (64 px films, eq. 6, BatchNorm re-estimated)."""
    return config_from_dict({"method": NAME})


SETTINGS = FamilySettings(
    sections={"model": ModelConfig, "loss": LossConfig, "score": ScoreConfig},
    # the paper's plain 64 px films
    data_defaults={"image_size": 64},
    presets={"paper": PAPER_VALUES},
    check=check_config,
    linked_keys=(("model.image_size", "data.image_size"),),
    help="the paper's GAN (Tang et al., ICASSP 2019: a U-Net autoencoder, a discriminator, a second encoder)",
    raw_score="eq. 6",
    components=COMPONENTS,
    variants=VARIANTS,
    benchmark_rows=tuple(f"{NAME}:{variant}" for variant in VARIANTS),
    paper=True,
)
