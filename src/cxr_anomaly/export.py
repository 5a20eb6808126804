"""ONNX export of the whole scoring graph, and scoring with onnxruntime.

The exported graph takes the model tensor ``images`` (N, 1, 64, 64), float32 in [-1, 1] (what
:func:`cxr_anomaly.data.dataset.to_model_tensor` makes of uint8 films), and returns four (N,)
float32 outputs: ``raw`` (the score of ``config.score.method``: eq. 6, or the code-space kNN
distance) and the unweighted components ``reconstruction``, ``adversarial``, ``latent`` and
``code_distance``. A component the detector lacks (a network the variant does not build, or no
stored training codes) is NaN and left out of ``raw``, as in
:func:`cxr_anomaly.scoring.score_pixels`.

The model's configuration and calibration travel in the ONNX file's metadata (JSON under the keys
``cxr_anomaly.config`` and ``cxr_anomaly.calibration``), so a consumer without this package can
reproduce the preprocessing and the calibrated score.

Export uses torch's TorchScript-based exporter (``dynamo=False``): the newer exporter needs the
``onnxscript`` package, which this project does not depend on.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .checkpoint import atomic_write, load_checkpoint
from .config import Config, ScoreConfig, config_to_dict
from .data.dataset import to_model_tensor
from .errors import CxrAnomalyError
from .models.tang2019 import OneClassDetector
from .scoring import Calibration, ScoreResult

logger = logging.getLogger(__name__)

OPSET_VERSION = 17
INPUT_NAME = "images"
OUTPUT_NAMES: tuple[str, ...] = ("raw", "reconstruction", "adversarial", "latent", "code_distance")
CONFIG_METADATA_KEY = "cxr_anomaly.config"
CALIBRATION_METADATA_KEY = "cxr_anomaly.calibration"
VERSION_METADATA_KEY = "cxr_anomaly.version"


class ExportError(CxrAnomalyError):
    """The scoring graph could not be exported or read back; the message names the file."""


class ScoringGraph(nn.Module):
    """The detector and its raw score as one module: images (N, 1, 64, 64) -> five (N,) tensors.

    The outputs are a tuple because ONNX outputs are positional; their names are
    :data:`OUTPUT_NAMES`, in that order.
    """

    def __init__(self, detector: OneClassDetector, score_config: ScoreConfig) -> None:
        super().__init__()
        self.detector = detector
        self.weight_reconstruction = score_config.weight_reconstruction  # λ1 in eq. 6
        self.weight_adversarial = score_config.weight_adversarial  # λ2 in eq. 6
        self.weight_latent = score_config.weight_latent  # λ3 in eq. 6
        self.method = score_config.method

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Raw score and its components for images (N, 1, 64, 64), each (N,)."""
        components = self.detector.score_components(images)
        reconstruction = components.reconstruction  # (N,)
        missing = torch.full_like(reconstruction, float("nan"))
        adversarial = missing if components.adversarial is None else components.adversarial
        latent = missing if components.latent is None else components.latent
        code_distance = missing if components.code_distance is None else components.code_distance
        if self.method == "code_knn":
            raw = code_distance
        else:
            raw = self.weight_reconstruction * reconstruction
            if components.adversarial is not None:
                raw = raw + self.weight_adversarial * adversarial
            if components.latent is not None:
                raw = raw + self.weight_latent * latent
        return raw, reconstruction, adversarial, latent, code_distance


@dataclass
class ExportResult:
    """Where the ONNX file went and what it holds."""

    path: Path
    opset_version: int
    variant: str
    size_bytes: int


def export_onnx(detector: OneClassDetector, config: Config, out_path: str | Path, *,
                calibration: Calibration | None = None,
                opset_version: int = OPSET_VERSION) -> ExportResult:
    """Export the scoring graph of ``detector`` to ``out_path`` (written atomically).

    The batch dimension is dynamic. The detector is put in eval mode (BatchNorm running
    statistics, no input noise), as scoring uses it, and left there.

    Raises:
        ExportError: ``score.method`` is ``code_knn`` but the detector stores no training codes,
            or the exporter failed, or wrote a file that onnx cannot read.
    """
    import onnx

    out_path = Path(out_path)
    detector = detector.to("cpu").eval()
    if config.score.method == "code_knn" and len(detector.normal_codes) == 0:
        raise ExportError(f"{out_path}: score.method='code_knn' but the detector stores no codes of "
                          "training normals to measure distances to")
    graph = ScoringGraph(detector, config.score).eval()
    size = config.data.image_size
    example = torch.zeros(2, 1, size, size)  # (N, 1, H, W); N = 2 so that no dimension is specialised to 1
    temporary = out_path.with_name(f".{out_path.name}.export")
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of one that needs onnxscript
            warnings.simplefilter("ignore", DeprecationWarning)
            # the kNN's k is read from a buffer as a Python int: a constant of the model, as intended
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                graph, (example,), str(temporary), dynamo=False, opset_version=opset_version,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            )
        model = onnx.load(str(temporary))
        onnx.checker.check_model(model)
    except Exception as error:  # the exporter raises many unrelated types
        raise ExportError(f"{out_path}: ONNX export failed: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)
    metadata = {
        CONFIG_METADATA_KEY: json.dumps(config_to_dict(config)),
        VERSION_METADATA_KEY: __version__,
    }
    if calibration is not None:
        metadata[CALIBRATION_METADATA_KEY] = json.dumps(calibration.to_dict())
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    payload = model.SerializeToString()
    atomic_write(out_path, lambda stream: stream.write(payload))
    logger.info("exported the %s scoring graph to %s (%d bytes, opset %d)",
                config.model.variant, out_path, len(payload), opset_version)
    return ExportResult(out_path, opset_version, config.model.variant, len(payload))


def export_checkpoint(model_path: str | Path, out_path: str | Path, *,
                      opset_version: int = OPSET_VERSION) -> ExportResult:
    """Export the scoring graph of a checkpoint (``cxr-anomaly export``).

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        ExportError: the export failed.
    """
    loaded = load_checkpoint(model_path)
    return export_onnx(loaded.detector, loaded.config, out_path, calibration=loaded.calibration,
                       opset_version=opset_version)


class OnnxScorer:
    """Scores films with an exported graph under onnxruntime's CPU provider."""

    def __init__(self, path: str | Path, *, num_threads: int | None = None) -> None:
        """Open ``path``; ``num_threads`` sets onnxruntime's intra-op threads (None: its default).

        Raises:
            ExportError: the file is missing or not a scoring graph of this package.
        """
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: no such ONNX file")
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own unrelated types
            raise ExportError(f"{self.path}: onnxruntime cannot open it: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_METADATA_KEY not in metadata:
            raise ExportError(f"{self.path}: not a cxr-anomaly scoring graph (no {CONFIG_METADATA_KEY})")
        from .config import config_from_dict

        self.config = config_from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
        self.calibration = (Calibration.from_dict(json.loads(metadata[CALIBRATION_METADATA_KEY]))
                            if CALIBRATION_METADATA_KEY in metadata else None)

    def score_tensor(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on a model tensor (N, 1, 64, 64) float32; outputs by name, each (N,)."""
        values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images, np.float32)})
        return dict(zip(OUTPUT_NAMES, values))

    def score_pixels(self, pixels: np.ndarray, *, batch_size: int = 256) -> ScoreResult:
        """Score uint8 films (N, H, W) as :func:`cxr_anomaly.scoring.score_pixels` does."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUT_NAMES}
        for start in range(0, len(pixels), batch_size):
            batch = to_model_tensor(pixels[start:start + batch_size], self.config.data)  # (B, 1, H, W)
            for name, value in self.score_tensor(batch.numpy()).items():
                parts[name].append(value)

        def join(name: str) -> np.ndarray:
            return np.concatenate(parts[name]).astype(np.float64) if parts[name] else np.zeros(0)

        return ScoreResult(raw=join("raw"), reconstruction=join("reconstruction"),
                           adversarial=join("adversarial"), latent=join("latent"),
                           code_distance=join("code_distance"))
