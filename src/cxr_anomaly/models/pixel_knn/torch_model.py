"""The pixel k-NN detector: how far a film's pixels lie from those of the nearest normal films.

The films are preprocessed as the data section says (by default: 64 px, plain grey levels in
[0, 1]) and compared whole, pixel by pixel. The score is the mean Euclidean distance to the
``NEIGHBOURS`` nearest training normals, as :class:`cxr_anomaly.baselines.KNNBaseline`
computes it in float64 with scikit-learn; here in float32 on torch, so that it exports to ONNX
and scores on any device. The anomaly map is the absolute difference between the film and the
mean of its nearest normals.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...config import Config
from ...data.dataset import preprocess_films
from ...inference import to_device, without_autocast
from ..base import AnomalyDetector, AnomalyOutput
from .config import COMPONENTS, NAME

NEIGHBOURS = 5  # k of the distance, the baselines' 5-NN


class PixelKNNDetector(AnomalyDetector):
    """The training normals' preprocessed pixels and a k-nearest-neighbour distance to them.

    Filled by :func:`cxr_anomaly.models.pixel_knn.family.fit` (empty before): ``bank``
    (M, S*S), the training films in [0, 1], one row each.
    """

    family = NAME
    component_names = COMPONENTS

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        side = config.data.image_size
        # A frozen parameter rather than a buffer: the package finds a detector's device from its parameters.
        self.bank = nn.Parameter(torch.zeros(0, side * side), requires_grad=False)

    def _load_from_state_dict(
        self, state_dict: dict[str, torch.Tensor], prefix: str, *args: object, **kwargs: object
    ) -> None:
        # The bank holds as many rows as the fit had films: take the stored shape.
        key = prefix + "bank"
        if key in state_dict:
            self.bank = nn.Parameter(torch.empty_like(state_dict[key], device=self.bank.device), requires_grad=False)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    @property
    def description(self) -> str:
        """Family, neighbours and input size."""
        return f"{NAME} ({NEIGHBOURS}-NN, {self.config.data.image_size} px)"

    def model_input(self, pixels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 films (N, S, S) -> (N, 1, S, S) in [0, 1] on ``device``, preprocessed on the CPU."""
        return to_device(torch.from_numpy(preprocess_films(pixels, self.config.data)).unsqueeze(1), device)

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        """Score images (N, 1, S, S) in [0, 1]."""
        # Distances of 4,096-pixel vectors lose their digits in bf16: always fp32.
        with without_autocast(images.device):
            flat = images.float().flatten(1)  # (N, S*S)
            squared = (
                (flat * flat).sum(1, keepdim=True) - 2.0 * flat @ self.bank.T + (self.bank * self.bank).sum(1)[None, :]
            )  # (N, M)
            nearest_squared, nearest = torch.topk(squared, min(NEIGHBOURS, self.bank.shape[0]), dim=1, largest=False)
            score = nearest_squared.clamp_min(0.0).sqrt().mean(1)  # (N,)
            neighbours = self.bank[nearest].mean(1).reshape(images.shape)  # (N, 1, S, S)
            anomaly_map = (images.float() - neighbours).abs()
        return AnomalyOutput(score=score, components={COMPONENTS[0]: score}, anomaly_map=anomaly_map)
