"""Networks of Tang et al., ICASSP 2019.

- :class:`Encoder` (UE, E, and the trunk of D): five 4x4 convolutions taking a 64x64 grey image
  through 32, 16, 8 and 4 pixels to a 1x1 code. The first convolution is followed by LeakyReLU
  only; the next three by BatchNorm and LeakyReLU; the last produces the code.
- :class:`UNet` (U): UE followed by a decoder UD of five 4x4 transposed convolutions. Each of
  the first four decoder outputs is concatenated with the encoder feature map of the same size
  (the skips; ``model.skip_connections`` can leave out any of them), and the last one ends in
  Tanh, since images live in [-1, 1].
- :class:`Discriminator` (D): an encoder whose code has one channel, the real/fake logit.
- :class:`OneClassDetector`: U plus D and E as the variant asks, and the three score components
  of eq. 6.
- :class:`Tang2019Detector`: the family's face to the rest of the package
  (:class:`~cxr_anomaly.models.base.AnomalyDetector`): the networks, the score of
  ``config.score.method`` and the residual |x - x'| as anomaly map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ...config import Config
from ...data.dataset import to_model_tensor
from ...inference import to_device
from ..base import AnomalyDetector, AnomalyOutput
from .config import COMPONENTS, SKIP_SIDES, ModelConfig, ScoreConfig

LEAKY_SLOPE = 0.2
# Sides of the maps U's decoder reads, in order: three blocks (4, 8, 16) and the output layer (32).
DECODER_SIDES: tuple[int, ...] = (4, 8, 16, 32)


@dataclass
class EncoderOutput:
    """Code and intermediate feature maps of an encoder.

    Attributes:
        code: (N, code_dim, 1, 1).
        features: four maps of shapes (N, C, 32, 32), (N, 2C, 16, 16), (N, 4C, 8, 8), (N, 8C, 4, 4)
            with C = base_channels.
    """

    code: torch.Tensor
    features: list[torch.Tensor]


class Encoder(nn.Module):
    """Five 4x4 convolutions: (N, 1, 64, 64) -> (N, code_dim, 1, 1)."""

    def __init__(self, code_dim: int, base_channels: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        widths = [base_channels, base_channels * 2, base_channels * 4, base_channels * 8]
        blocks: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 4, 2, 1, bias=False),
                nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            )
        ]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(width_in, width_out, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(width_out),
                    nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.to_code = nn.Conv2d(widths[-1], code_dim, 4, 1, 0, bias=False)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        """Encode images (N, 1, 64, 64)."""
        features = []
        hidden = images
        for block in self.blocks:
            hidden = block(hidden)  # halves the side: 64 -> 32 -> 16 -> 8 -> 4
            features.append(hidden)
        return EncoderOutput(code=self.to_code(hidden), features=features)  # (N, code_dim, 1, 1)


class Decoder(nn.Module):
    """Five 4x4 transposed convolutions with concatenated skips: code -> (N, 1, 64, 64).

    ``skip_sides`` names the encoder maps (by side: 4, 8, 16, 32) concatenated into the decoder
    before the convolution that reads that side; the others are not passed on.
    """

    def __init__(self, latent_dim: int, base_channels: int = 64, skip_sides: tuple[int, ...] = SKIP_SIDES) -> None:
        super().__init__()
        widths = [base_channels * 8, base_channels * 4, base_channels * 2, base_channels]
        self.skip_sides = tuple(skip_sides)
        self.from_code = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )
        # A skip at a side doubles the input width there: the encoder map of the same width is
        # concatenated.
        blocks = []
        for width_in, width_out, side in zip(widths[:-1], widths[1:], DECODER_SIDES):
            blocks.append(
                nn.Sequential(
                    nn.ConvTranspose2d(width_in * self._widening(side), width_out, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(width_out),
                    nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.to_image = nn.Sequential(
            nn.ConvTranspose2d(widths[-1] * self._widening(DECODER_SIDES[-1]), 1, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def _widening(self, side: int) -> int:
        return 2 if side in self.skip_sides else 1

    def _join(self, hidden: torch.Tensor, skip: torch.Tensor, side: int) -> torch.Tensor:
        if side not in self.skip_sides:
            return hidden
        return torch.cat([hidden, skip], dim=1)  # (N, C', s, s) -> (N, 2C', s, s)

    def forward(self, code: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decode a code (N, latent_dim, 1, 1) with the encoder's four feature maps (sides 32, 16, 8, 4)."""
        hidden = self.from_code(code)  # (N, 8C, 4, 4)
        for block, skip, side in zip(self.blocks, reversed(skips[1:]), DECODER_SIDES):
            hidden = block(self._join(hidden, skip, side))  # 4 -> 8 -> 16 -> 32
        return self.to_image(self._join(hidden, skips[0], DECODER_SIDES[-1]))  # (N, 1, 64, 64)


@dataclass
class UNetOutput:
    """Reconstruction and the encoder's code and features."""

    reconstruction: torch.Tensor  # (N, 1, 64, 64)
    encoding: EncoderOutput


class UNet(nn.Module):
    """U = UD(UE(x)), the U-Net-like autoencoder."""

    def __init__(self, latent_dim: int, base_channels: int = 64, skip_sides: tuple[int, ...] = SKIP_SIDES) -> None:
        super().__init__()
        self.encoder = Encoder(latent_dim, base_channels)
        self.decoder = Decoder(latent_dim, base_channels, skip_sides)

    def forward(self, images: torch.Tensor) -> UNetOutput:
        """Reconstruct images (N, 1, 64, 64)."""
        encoding = self.encoder(images)
        return UNetOutput(self.decoder(encoding.code, encoding.features), encoding)


@dataclass
class DiscriminatorOutput:
    """Real/fake logit and the last feature map."""

    logit: torch.Tensor  # (N,)
    features: torch.Tensor  # (N, 8C, 4, 4)


class Discriminator(nn.Module):
    """D: an encoder with a one-channel code, read as the logit of "real"."""

    def __init__(self, base_channels: int = 64) -> None:
        super().__init__()
        self.encoder = Encoder(1, base_channels)

    def forward(self, images: torch.Tensor) -> DiscriminatorOutput:
        """Classify images (N, 1, 64, 64) as real (logit > 0) or reconstructed."""
        encoding = self.encoder(images)
        return DiscriminatorOutput(encoding.code.flatten(), encoding.features[-1])  # (N,1,1,1) -> (N,)


@dataclass
class DetectorOutput:
    """Everything one forward pass of the detector produces.

    Fields of networks the variant lacks are None.
    """

    reconstruction: torch.Tensor  # x', (N, 1, 64, 64)
    latent: torch.Tensor  # z = UE(x), (N, latent_dim, 1, 1)
    encoder_features: list[torch.Tensor]  # F_l(UE(x))
    second_latent: torch.Tensor | None = None  # z' = E(x'), (N, latent_dim, 1, 1)
    second_features: list[torch.Tensor] | None = None  # F_l(E(x'))


@dataclass
class ScoreComponents:
    """Per-image components of eq. 6, unweighted; None where the variant lacks the network.

    Attributes:
        reconstruction: mean |x - x'| over pixels, shape (N,).
        adversarial: 1 - D(x'), shape (N,).
        latent: mean (z - z')² over code entries, shape (N,).
        code_distance: mean Euclidean distance from z = UE(x) to its nearest codes of training
            normals (see :meth:`OneClassDetector.store_normal_codes`), shape (N,); None when no
            codes are stored.
    """

    reconstruction: torch.Tensor
    adversarial: torch.Tensor | None
    latent: torch.Tensor | None
    reconstruction_image: torch.Tensor  # x', (N, 1, 64, 64)
    code_distance: torch.Tensor | None = None


class OneClassDetector(nn.Module):
    """U, with D and E as ``config.variant`` asks. D and E are absent, not unused, when off."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(config.latent_dim, config.base_channels, config.skip_connections)
        self.discriminator = Discriminator(config.base_channels) if config.has_discriminator else None
        self.second_encoder = Encoder(config.latent_dim, config.base_channels) if config.has_second_encoder else None
        # Codes z of the training normals and the k of the kNN code distance; buffers, so they
        # travel in the state_dict (and an exported graph) with the weights. Empty until stored.
        self.register_buffer("normal_codes", torch.zeros(0, config.latent_dim))
        self.register_buffer("code_neighbours", torch.tensor(0, dtype=torch.long))

    def store_normal_codes(self, codes: torch.Tensor, neighbours: int) -> None:
        """Keep the codes (M, latent_dim) of training normals for the kNN code distance."""
        if codes.ndim != 2 or codes.shape[1] != self.config.latent_dim or len(codes) == 0:
            raise ValueError(f"normal codes of shape {tuple(codes.shape)}; expected (M>0, {self.config.latent_dim})")
        if neighbours < 1:
            raise ValueError(f"neighbours={neighbours}; must be >= 1")
        self.normal_codes = codes.detach().float().to(self.normal_codes.device)
        self.code_neighbours = torch.tensor(
            min(neighbours, len(codes)), dtype=torch.long, device=self.normal_codes.device
        )

    def _load_from_state_dict(
        self, state_dict: dict[str, torch.Tensor], prefix: str, *args: object, **kwargs: object
    ) -> None:
        # The number of stored codes varies between checkpoints: take the stored shape, and
        # accept checkpoints written before codes were stored (no code distance then).
        for name, empty in (
            ("normal_codes", torch.zeros(0, self.config.latent_dim)),
            ("code_neighbours", torch.tensor(0, dtype=torch.long)),
        ):
            key = prefix + name
            if key not in state_dict:
                state_dict[key] = empty
            setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters updated by the generator step: U and, when present, E."""
        parameters = list(self.unet.parameters())
        if self.second_encoder is not None:
            parameters += list(self.second_encoder.parameters())
        return parameters

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        """Reconstruct images (N, 1, 64, 64) and, with E, re-encode the reconstruction."""
        unet_output = self.unet(images)
        output = DetectorOutput(
            reconstruction=unet_output.reconstruction,
            latent=unet_output.encoding.code,
            encoder_features=unet_output.encoding.features,
        )
        if self.second_encoder is not None:
            second = self.second_encoder(unet_output.reconstruction)
            output.second_latent = second.code
            output.second_features = second.features
        return output

    @torch.no_grad()
    def score_components(self, images: torch.Tensor) -> ScoreComponents:
        """The unweighted components of eq. 6 for images (N, 1, 64, 64), without input noise."""
        output = self(images)
        # Components in fp32 from the networks' outputs: taken in bf16 they collapse films into
        # ties (see docs/results.md#pooled-scores-in-fp32).
        reconstruction = (images.float() - output.reconstruction.float()).abs().flatten(1).mean(dim=1)
        adversarial = None
        if self.discriminator is not None:
            adversarial = 1.0 - torch.sigmoid(self.discriminator(output.reconstruction).logit.float())
        latent = None
        if output.second_latent is not None:
            latent = (output.latent.float() - output.second_latent.float()).pow(2).flatten(1).mean(dim=1)
        code_distance = None
        if len(self.normal_codes) > 0:
            codes = output.latent.flatten(1).float()  # (N, latent_dim, 1, 1) -> (N, latent_dim)
            distances = torch.cdist(codes, self.normal_codes)  # (N, M)
            nearest = distances.topk(int(self.code_neighbours), dim=1, largest=False).values  # (N, k)
            code_distance = nearest.mean(dim=1)
        return ScoreComponents(
            reconstruction.float(),
            None if adversarial is None else adversarial.float(),
            None if latent is None else latent.float(),
            output.reconstruction.float(),
            code_distance,
        )


Array = TypeVar("Array", torch.Tensor, np.ndarray)


def weighted_score(
    score_config: ScoreConfig,
    reconstruction: Array,
    adversarial: Array | None,
    latent: Array | None,
    code_distance: Array | None,
) -> Array:
    """The raw score of ``score_config.method`` from the unweighted components (tensors or arrays).

    ``eq6``: λ1·reconstruction + λ2·adversarial + λ3·latent (eq. 6); a component the variant
    lacks (None) contributes nothing. ``code_knn``: the code distance itself.

    Raises:
        ValueError: ``code_knn`` asked for but no training codes are stored (``code_distance`` None).
    """
    if score_config.method == "code_knn":
        if code_distance is None:
            raise ValueError(
                "score.method='code_knn' but the detector stores no codes of training normals "
                "(a checkpoint from an older version?); retrain, or set score.method='eq6'"
            )
        return code_distance
    total = score_config.weight_reconstruction * reconstruction
    if adversarial is not None:
        total = total + score_config.weight_adversarial * adversarial
    if latent is not None:
        total = total + score_config.weight_latent * latent
    return total


class Tang2019Detector(AnomalyDetector):
    """The paper's networks behind the common detector contract.

    Components: ``reconstruction`` (mean |x - x'|), ``adversarial`` (1 - D(x')), ``latent``
    (mean (z - z')²) and ``code_distance`` (kNN distance of z to the training normals' codes);
    NaN where the variant lacks the network or no codes are stored. The anomaly map is
    |x - x'| / 2, the residual in units of the [0, 1] grey range.
    """

    family = "tang2019"
    component_names = COMPONENTS

    def __init__(self, config: Config, networks: OneClassDetector | None = None) -> None:
        super().__init__(config)
        self.networks = networks if networks is not None else OneClassDetector(config.model)

    @property
    def description(self) -> str:
        """Family and variant."""
        return f"tang2019 ({self.config.model.variant}, {self.config.score.method})"

    def model_input(self, pixels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 films (N, 64, 64) -> (N, 1, 64, 64) in [-1, 1] on ``device``, preprocessed on the CPU."""
        return to_device(to_model_tensor(pixels, self.config.data), device)

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        """Score images (N, 1, 64, 64) without input noise."""
        parts = self.networks.score_components(images)
        missing = torch.full_like(parts.reconstruction, float("nan"))
        score = weighted_score(
            self.config.score, parts.reconstruction, parts.adversarial, parts.latent, parts.code_distance
        )
        components = {
            "reconstruction": parts.reconstruction,
            "adversarial": missing if parts.adversarial is None else parts.adversarial,
            "latent": missing if parts.latent is None else parts.latent,
            "code_distance": missing if parts.code_distance is None else parts.code_distance,
        }
        anomaly_map = (images - parts.reconstruction_image).abs() / 2.0  # (N, 1, 64, 64) in [0, 1]
        return AnomalyOutput(
            score=score.float(),
            components=components,
            anomaly_map=anomaly_map,
            reconstruction=parts.reconstruction_image,
        )


def initialise_weights(module: nn.Module, scheme: str, generator: torch.Generator) -> None:
    """Initialise convolutions and BatchNorm layers in place.

    ``dcgan``: weights N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0 (Radford et al. 2016).
    ``standard_normal``: weights N(0, 1), the paper's literal wording; BatchNorm as for dcgan.
    """
    std = {"dcgan": 0.02, "standard_normal": 1.0}.get(scheme)
    if std is None:
        raise ValueError(f"initialisation scheme {scheme!r}; expected 'dcgan' or 'standard_normal'")
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
        elif isinstance(layer, nn.BatchNorm2d):
            with torch.no_grad():
                layer.weight.copy_(1.0 + 0.02 * torch.randn(layer.weight.shape, generator=generator))
                layer.bias.zero_()
