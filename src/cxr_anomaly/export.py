"""ONNX export of a detector's whole scoring graph, and scoring with onnxruntime.

The exported graph takes the model tensor ``images`` (N, C, S, S), float32 (what the detector's
:meth:`~cxr_anomaly.models.base.AnomalyDetector.model_input` makes of uint8 films), and
returns the fields of :class:`~cxr_anomaly.models.base.AnomalyOutput` flattened: ``score``
(N,), one (N,) output per component of the family (its detector's ``component_names``) and
``anomaly_map`` (N, 1, h, w). The names come from the detector
(:func:`~cxr_anomaly.models.base.output_names`), never from a list kept here, so the export
does not ask which family it holds.

The model's configuration and calibration travel in the ONNX file's metadata (JSON under the keys
``cxr_anomaly.config`` and ``cxr_anomaly.calibration``), so a consumer without this package can
reproduce the preprocessing and the calibrated score; ``cxr_anomaly.anomaly_map_scale`` holds the
fitted heatmap scale of an uncalibrated model and ``cxr_anomaly.training`` the checkpoint's
training record. ``cxr-anomaly score --model model.onnx`` and ``serve --model model.onnx`` score
through :class:`OnnxScorer`.

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

from .checkpoint import load_checkpoint
from .config import Config, config_to_dict, stored_config_from_dict
from .errors import CxrAnomalyError
from .files import atomic_write
from .models.base import AnomalyDetector, flat_outputs, output_names
from .models.registry import build_detector
from .scoring import Calibration, ScoreResult
from .version import __version__

logger = logging.getLogger(__name__)

OPSET_VERSION = 17
INPUT_NAME = "images"
CONFIG_METADATA_KEY = "cxr_anomaly.config"
CALIBRATION_METADATA_KEY = "cxr_anomaly.calibration"
VERSION_METADATA_KEY = "cxr_anomaly.version"
ANOMALY_MAP_SCALE_METADATA_KEY = "cxr_anomaly.anomaly_map_scale"
TRAINING_METADATA_KEY = "cxr_anomaly.training"  # the checkpoint's training record (counts, sources)
# The features graph holds a (batch x patches, memory bank) distance matrix and its intermediates:
# several GB at a batch of 64 films, a few hundred MB at 16, where onnxruntime was also fastest.
ONNX_BATCH_SIZE = 16


class ExportError(CxrAnomalyError):
    """The scoring graph could not be exported or read back; the message names the file."""


class ScoringGraph(nn.Module):
    """A detector with its output flattened to positional tensors, as ONNX outputs are.

    images (N, C, S, S) -> score (N,), each component (N,), anomaly_map (N, 1, h, w), named by
    :func:`~cxr_anomaly.models.base.output_names`.
    """

    def __init__(self, detector: AnomalyDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The detector's output as a tuple in :func:`output_names` order."""
        return flat_outputs(self.detector, self.detector(images))


@dataclass
class ExportResult:
    """Where the ONNX file went and what it holds."""

    path: Path
    opset_version: int
    detector: str
    output_names: tuple[str, ...]
    size_bytes: int


def _graph_metadata(
    detector: AnomalyDetector, calibration: Calibration | None, training: dict[str, object] | None
) -> dict[str, str]:
    """The graph's metadata: configuration, version, map scale, and calibration and training where given."""
    metadata = {
        CONFIG_METADATA_KEY: json.dumps(config_to_dict(detector.config)),
        VERSION_METADATA_KEY: __version__,
        ANOMALY_MAP_SCALE_METADATA_KEY: json.dumps(float(detector.anomaly_map_scale)),
    }
    if calibration is not None:
        metadata[CALIBRATION_METADATA_KEY] = json.dumps(calibration.to_dict())
    if training is not None:
        metadata[TRAINING_METADATA_KEY] = json.dumps(training, default=str)
    return metadata


def export_onnx(
    detector: AnomalyDetector,
    config: Config | None,
    out_path: str | Path,
    *,
    calibration: Calibration | None = None,
    training: dict[str, object] | None = None,
    opset_version: int = OPSET_VERSION,
) -> ExportResult:
    """Export the scoring graph of ``detector`` to ``out_path`` (written atomically).

    The configuration written to the metadata is the detector's own (the graph computes with
    it); a ``config`` given here must be the same. The batch dimension is dynamic. The detector
    is put in eval mode, as scoring uses it, and left there. ``calibration`` and ``training`` (the
    checkpoint's record) travel in the metadata, so that a service of the graph reports what a
    service of the checkpoint does.

    Raises:
        ExportError: ``config`` differs from the detector's, the exporter failed, or it wrote a
            file that onnx cannot read.
    """
    import onnx

    out_path = Path(out_path)
    if config is not None and config != detector.config:
        raise ExportError(
            f"{out_path}: the configuration given differs from the detector's own; the "
            "graph would compute with one and the metadata describe the other"
        )
    config = detector.config
    detector = detector.to("cpu").eval()
    graph = ScoringGraph(detector).eval()
    size = config.data.image_size
    channels = detector.model_input(np.zeros((1, size, size), np.uint8)).shape[1]
    example = torch.zeros(2, channels, size, size)  # N = 2 so that no dimension is specialised to 1
    names = output_names(detector)
    temporary = out_path.with_name(f".{out_path.name}.export")
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of one that needs onnxscript
            warnings.simplefilter("ignore", DeprecationWarning)
            # k of a kNN is read from the config as a Python int: a constant of the model, as intended
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(temporary),
                dynamo=False,
                opset_version=opset_version,
                input_names=[INPUT_NAME],
                output_names=list(names),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *names)},
            )
        model = onnx.load(str(temporary))
        onnx.checker.check_model(model)
    except Exception as error:  # the exporter raises many unrelated types
        raise ExportError(f"{out_path}: ONNX export failed: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)
    for key, value in _graph_metadata(detector, calibration, training).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    payload = model.SerializeToString()
    atomic_write(out_path, lambda stream: stream.write(payload))
    logger.info(
        "exported the %s scoring graph to %s (%d bytes, opset %d)",
        detector.description,
        out_path,
        len(payload),
        opset_version,
    )
    return ExportResult(out_path, opset_version, detector.description, names, len(payload))


def export_checkpoint(
    model_path: str | Path, out_path: str | Path, *, opset_version: int = OPSET_VERSION
) -> ExportResult:
    """Export the scoring graph of a checkpoint (``cxr-anomaly export``).

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        ExportError: the export failed.
    """
    loaded = load_checkpoint(model_path)
    return export_onnx(
        loaded.detector,
        loaded.config,
        out_path,
        calibration=loaded.calibration,
        training=loaded.training,
        opset_version=opset_version,
    )


class OnnxScorer:
    """Scores films with an exported graph under onnxruntime's CPU provider."""

    def __init__(self, path: str | Path, *, num_threads: int | None = None) -> None:
        """Open ``path``; ``num_threads`` sets onnxruntime's intra-op threads (None: its default).

        Raises:
            ExportError: the file is missing or not a scoring graph of this package.
        """
        try:
            import onnxruntime
        except ImportError as error:
            raise ExportError(
                f"{path}: scoring an ONNX graph needs onnxruntime: pip install 'cxr-anomaly[onnx]'"
            ) from error

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: no such ONNX file")
        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own unrelated types
            raise ExportError(f"{self.path}: onnxruntime cannot open it: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CONFIG_METADATA_KEY not in metadata:
            raise ExportError(f"{self.path}: not a cxr-anomaly scoring graph (no {CONFIG_METADATA_KEY})")
        self.config = stored_config_from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
        # The graph holds the weights; the detector here only lends its preprocessing.
        self.preprocessor = build_detector(self.config, pretrained=False)
        self.output_names = tuple(output.name for output in self.session.get_outputs())
        self.calibration = (
            Calibration.from_dict(json.loads(metadata[CALIBRATION_METADATA_KEY]))
            if CALIBRATION_METADATA_KEY in metadata
            else None
        )
        self.package_version = metadata.get(VERSION_METADATA_KEY, "unknown")
        self.training: dict[str, object] = json.loads(metadata.get(TRAINING_METADATA_KEY, "{}"))
        self.description = f"{self.preprocessor.description}, onnxruntime"
        if ANOMALY_MAP_SCALE_METADATA_KEY in metadata:
            self.anomaly_map_scale = float(json.loads(metadata[ANOMALY_MAP_SCALE_METADATA_KEY]))
        else:  # exported before the key existed: the unfitted detector's default scale
            self.anomaly_map_scale = float(self.preprocessor.anomaly_map_scale)
            logger.warning(
                "%s has no %s; heatmaps of uncalibrated films use the default scale %g",
                self.path,
                ANOMALY_MAP_SCALE_METADATA_KEY,
                self.anomaly_map_scale,
            )

    def score_tensor(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on a model tensor (N, C, S, S) float32; outputs by name."""
        values = self.session.run(list(self.output_names), {INPUT_NAME: np.ascontiguousarray(images, np.float32)})
        return dict(zip(self.output_names, values))

    def score_films(
        self, pixels: np.ndarray, *, batch_size: int = ONNX_BATCH_SIZE, keep_maps: bool = False
    ) -> ScoreResult:
        """Score uint8 films (N, S, S) as :func:`cxr_anomaly.scoring.score_films` does.

        With ``keep_maps`` the anomaly maps come back too, float32 (N, h, w).
        """
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, len(pixels), batch_size):
            batch = self.preprocessor.model_input(pixels[start : start + batch_size])  # (B, C, S, S)
            for name, value in self.score_tensor(batch.numpy()).items():
                parts[name].append(value)

        def join(name: str) -> np.ndarray:
            return np.concatenate(parts[name]).astype(np.float64) if parts[name] else np.zeros(0)

        components = [name for name in self.output_names if name not in ("score", "anomaly_map")]
        maps = None
        if keep_maps:
            maps = (
                np.concatenate(parts["anomaly_map"])[:, 0].astype(np.float32)
                if parts["anomaly_map"]
                else np.zeros((0, 1, 1), np.float32)
            )  # (N, 1, h, w) -> (N, h, w)
        return ScoreResult(raw=join("score"), components={name: join(name) for name in components}, anomaly_maps=maps)
