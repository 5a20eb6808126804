"""Tang et al., ICASSP 2019: U-Net autoencoder U, discriminator D and second encoder E."""

from importlib import import_module
from typing import Any

from .config import NAME, SETTINGS

# Where each export lives, imported on first use: the detectors import torch, which reading a
# configuration (and `cxr-anomaly --help`) does not need.
_EXPORTS: dict[str, str] = {
    "FAMILY": "family",
    "DiscriminatorLoss": "loss",
    "GeneratorLoss": "loss",
    "GeneratorLossOutput": "loss",
    "discriminator_loss_from_logits": "loss",
    "DetectorOutput": "torch_model",
    "Discriminator": "torch_model",
    "Encoder": "torch_model",
    "OneClassDetector": "torch_model",
    "Tang2019Detector": "torch_model",
    "UNet": "torch_model",
    "weighted_score": "torch_model",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "NAME",
    "SETTINGS",
    "FAMILY",
    "DiscriminatorLoss",
    "GeneratorLoss",
    "GeneratorLossOutput",
    "discriminator_loss_from_logits",
    "DetectorOutput",
    "Discriminator",
    "Encoder",
    "OneClassDetector",
    "Tang2019Detector",
    "UNet",
    "weighted_score",
]
