"""The pixel 5-NN baseline as a detector family: the mean distance of a film's pixels to those of
its nearest training normals."""

from .family import FAMILY
from .torch_model import PixelKNNDetector

__all__ = ["FAMILY", "PixelKNNDetector"]
