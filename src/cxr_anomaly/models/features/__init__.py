"""A pretrained CNN (fine-tuned on the normals, then frozen) and one-class models of its features
(PaDiM/PatchCore family)."""

from importlib import import_module
from typing import Any

from .config import NAME, SETTINGS

# Where each export lives, imported on first use: the detectors import torch, which reading a
# configuration (and `cxr-anomaly --help`) does not need.
_EXPORTS: dict[str, str] = {
    "FAMILY": "family",
    "FeatureDetector": "torch_model",
    "FeatureFitResult": "fitting",
    "build_backbone": "backbone",
    "fit_features": "fitting",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NAME", "SETTINGS", "FAMILY", "FeatureDetector", "FeatureFitResult", "build_backbone", "fit_features"]
