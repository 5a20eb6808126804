"""A pretrained CNN (fine-tuned on the normals, then frozen) and one-class models of its features
(PaDiM/PatchCore family)."""

from .backbone import build_backbone
from .family import FAMILY
from .fitting import FeatureFitResult, fit_features
from .torch_model import FeatureDetector

__all__ = ["FAMILY", "FeatureDetector", "FeatureFitResult", "build_backbone", "fit_features"]
