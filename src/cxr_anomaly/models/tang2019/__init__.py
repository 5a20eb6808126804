"""Tang et al., ICASSP 2019: U-Net autoencoder U, discriminator D and second encoder E."""

from .family import FAMILY
from .loss import DiscriminatorLoss, GeneratorLoss, GeneratorLossOutput, discriminator_loss_from_logits
from .torch_model import (
    DetectorOutput,
    Discriminator,
    Encoder,
    OneClassDetector,
    Tang2019Detector,
    UNet,
    weighted_score,
)

__all__ = [
    "FAMILY",
    "DetectorOutput",
    "Discriminator",
    "DiscriminatorLoss",
    "Encoder",
    "GeneratorLoss",
    "GeneratorLossOutput",
    "OneClassDetector",
    "Tang2019Detector",
    "UNet",
    "discriminator_loss_from_logits",
    "weighted_score",
]
