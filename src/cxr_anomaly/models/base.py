"""The contract every detector family implements, so nothing downstream asks which one it holds.

A family is a folder under :mod:`cxr_anomaly.models` with a ``torch_model.py`` (an
:class:`AnomalyDetector`) and a fitting routine, registered in :mod:`cxr_anomaly.models.registry`.

- **Input.** :meth:`AnomalyDetector.model_input` turns films' codes (N, S, S), decoded at the
  family's input size (``config.data.image_size``), into the tensor its ``forward`` takes: uint8,
  or uint16 when a film has more than 256 grey levels (a family that preprocesses with
  :func:`~cxr_anomaly.data.dataset.preprocess_films` takes both).
- **Output.** ``forward(images)`` returns an :class:`AnomalyOutput`: the raw score (higher means
  more abnormal), named components, and an anomaly map for heatmaps. Pipelines, calibration,
  the worklist, the service and the ONNX export read only these fields.
- **State.** Everything a fitted detector needs is in its ``state_dict``: tensors only, so a
  checkpoint loads with ``torch.load(weights_only=True)``. Fitted buffers whose shape depends on
  the data (a memory bank, stored codes) take the stored shape on load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import Config

DEFAULT_SCORING_BATCH_SIZE = 64


@dataclass
class AnomalyOutput:
    """What a detector says about a batch of N films.

    Attributes:
        score: the raw anomaly score of the configured method, (N,); higher is more abnormal.
        components: the parts the score is made of, each (N,), in the order of
            :attr:`AnomalyDetector.component_names`; NaN where a part does not exist for this
            detector (a network its variant lacks).
        anomaly_map: (N, 1, h, w) per-location anomaly, at most the input's resolution; in the
            units given by :attr:`AnomalyDetector.anomaly_map_scale`.
        reconstruction: the film as an autoencoder reconstructs it, (N, 1, S, S) in [-1, 1]; None
            for families that do not reconstruct.
    """

    score: torch.Tensor
    components: dict[str, torch.Tensor]
    anomaly_map: torch.Tensor
    reconstruction: torch.Tensor | None = None


class AnomalyDetector(nn.Module):
    """Base class of the detector families; see the module docstring for the contract.

    Subclasses set :attr:`family` and :attr:`component_names`, and implement
    :meth:`model_input` and ``forward``.
    """

    family: str = ""
    component_names: tuple[str, ...] = ()

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    @property
    def anomaly_map_scale(self) -> float:
        """The anomaly-map value a heatmap paints at full colour (a "clearly abnormal" patch)."""
        return 0.5

    def scoring_batch_size(self, device: torch.device) -> int:
        """Films per forward pass when scoring on ``device``: ``score_films``' default."""
        return DEFAULT_SCORING_BATCH_SIZE

    def model_input(self, pixels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Films' codes (N, S, S), uint8 or uint16 (:func:`~cxr_anomaly.image_base.stack_films`) ->
        the float tensor ``forward`` takes, on ``device``.

        A family may preprocess on the device itself (the features family does, bit for bit as
        on the CPU: :func:`~cxr_anomaly.data.resample.preprocess_on`).
        """
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> AnomalyOutput:  # noqa: D102 - documented above
        raise NotImplementedError

    @property
    def description(self) -> str:
        """A short human description: family and its main setting."""
        return self.family


def output_names(detector: AnomalyDetector) -> tuple[str, ...]:
    """Names of the flat outputs of an exported graph: ``score``, the components, ``anomaly_map``."""
    return ("score", *detector.component_names, "anomaly_map")


def flat_outputs(detector: AnomalyDetector, output: AnomalyOutput) -> tuple[torch.Tensor, ...]:
    """An :class:`AnomalyOutput` as positional tensors in :func:`output_names` order (for ONNX)."""
    return (output.score, *(output.components[name] for name in detector.component_names), output.anomaly_map)


__all__ = ["AnomalyDetector", "AnomalyOutput", "flat_outputs", "output_names"]
