"""The pixel 5-NN baseline as a detector family: the mean distance of a film's pixels to those of
its nearest training normals."""

from importlib import import_module
from typing import Any

from .config import NAME, SETTINGS

# Where each export lives, imported on first use: the detectors import torch, which reading a
# configuration (and `cxr-anomaly --help`) does not need.
_EXPORTS: dict[str, str] = {"FAMILY": "family", "PixelKNNDetector": "torch_model"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["NAME", "SETTINGS", "FAMILY", "PixelKNNDetector"]
