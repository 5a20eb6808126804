"""``cxr-anomaly score``: load a checkpoint or an ONNX graph and score films into a table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..checkpoint import LoadedModel, load_checkpoint
from ..data.dataset import LoadedImages, OnBadFile, load_images
from ..data.manifest import fill_from_dicom_headers, load_inputs
from ..data.selection import report_skipped
from ..explain import heatmap_range
from ..report import add_dicom_links, explain_rows, rank_table, write_html_report
from ..scope import fitted_on_adults, scope_column
from ..scoring import min_max_normalise

if TYPE_CHECKING:  # onnxruntime is optional: imported only to score an .onnx model
    from ..export import OnnxScorer

logger = logging.getLogger(__name__)


@dataclass
class ScoredTable:
    """Per-film scores and, when asked for, the anomaly maps and reconstructions.

    Attributes:
        table: path, score, the family's components, raw/min-max/calibrated scores, ...
        anomaly_maps: float32 (N, h, w) when asked for, else None.
        reconstructions: uint8 (N, S, S) when asked for and the family reconstructs, else None.
    """

    table: pd.DataFrame
    anomaly_maps: np.ndarray | None = None
    reconstructions: np.ndarray | None = None


def load_scoring_model(
    model_path: str | Path, *, device: str = "cpu", precision: str = "auto", onnx_threads: int | None = None
) -> LoadedModel | OnnxScorer:
    """A checkpoint (``model.pt``), or an exported graph (``*.onnx``) scored with onnxruntime.

    Both give the configuration, calibration, training record, description, heatmap scale and
    ``score_films`` that scoring, the worklist report and the service use.

    Args:
        device: where a checkpoint's detector runs (``auto``: CUDA when available, else the
            CPU); an ONNX graph runs on the CPU only (``auto`` means the CPU for it).
        precision: what a checkpoint's detector scores in: ``auto`` (bf16 autocast where the
            device computes bf16 natively, else fp32), ``fp32`` or ``bf16``. An ONNX graph
            scores in fp32, so ``fp32`` gives a checkpoint the scores of its exported graph.
        onnx_threads: onnxruntime's intra-op threads for an ONNX graph (None: its default).

    Raises:
        ValueError: an ONNX graph asked to run on another device than the CPU, or in bf16.
    """
    if Path(model_path).suffix.lower() == ".onnx":
        from ..export import OnnxScorer

        if device not in ("cpu", "auto"):
            raise ValueError(
                f"{model_path}: an ONNX graph is scored on the CPU (onnxruntime's CPU "
                f"provider), not on device={device!r}; use the checkpoint (model.pt) instead"
            )
        if precision == "bf16":
            raise ValueError(
                f"{model_path}: an ONNX graph is scored in fp32, not precision='bf16'; "
                "score the checkpoint (model.pt) for bf16"
            )
        return OnnxScorer(model_path, num_threads=onnx_threads)
    return load_checkpoint(model_path, device=device, precision=precision)


def score_table(
    model: LoadedModel | OnnxScorer, images: LoadedImages, *, normalisation: str = "calibrated", keep_maps: bool = False
) -> ScoredTable:
    """Score loaded images into a table (path, score, components, ...) with maps when asked for.

    ``normalisation`` picks the ``score`` column: ``calibrated`` (robust z-score against normal
    validation films, stored in the checkpoint), ``minmax`` (the paper's, over this set) or
    ``raw`` (the detector's own scale). The other two are kept as columns too.
    """
    result = model.score_films(images.pixels, keep_maps=keep_maps)
    table = pd.DataFrame({"path": images.manifest["path"].to_numpy()})
    minmax = min_max_normalise(result.raw)
    calibrated = percentile = decision = None
    if model.calibration is not None:
        calibrated = model.calibration.standardise(result.raw)
        percentile = model.calibration.percentile(result.raw)
        decision = np.where(model.calibration.flag(result.raw), "flag", "normal")
    if normalisation == "calibrated" and calibrated is None:
        raise ValueError(f"{model.path}: checkpoint has no calibration; use --normalisation raw or minmax")
    chosen = {"calibrated": calibrated, "minmax": minmax, "raw": result.raw}
    if normalisation not in chosen:
        raise ValueError(f"normalisation={normalisation!r}; expected calibrated, minmax or raw")
    table["score"] = chosen[normalisation]
    for name, values in result.components.items():
        table[name] = values
    table["score_raw"] = result.raw
    table["score_minmax"] = minmax
    if calibrated is not None:
        table["score_calibrated"] = calibrated
        table["percentile"] = percentile
        table["decision"] = decision
    for column in ("label", "split", "view", "patient_id", "age"):
        if column in images.manifest and images.manifest[column].notna().any():
            table[column] = images.manifest[column].to_numpy()
    table["scope"] = scope_column(images.manifest, images.pixels, fitted_on_adults=fitted_on_adults(model.training))
    return ScoredTable(table, result.anomaly_maps, result.reconstructions)


def score_job(
    model_path: str | Path,
    inputs: list[str | Path],
    out_csv: str | Path,
    *,
    normalisation: str = "calibrated",
    on_bad_file: OnBadFile = "error",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    report: str | Path | None = None,
    keep_patient_identifiers: bool = False,
    precision: str = "auto",
    device: str = "auto",
) -> pd.DataFrame:
    """Score files, folders or manifests and write a CSV (path, score, components, ...).

    DICOM inputs get their StudyInstanceUID and SOPInstanceUID for linking; patient name, ID and
    birth date only with ``keep_patient_identifiers``. With ``report`` (an HTML path) the CSV is
    a worklist ranked by score, most suspicious first, and a self-contained HTML report with
    thumbnails, reconstructions and heatmaps is written too (see :mod:`cxr_anomaly.report`).
    ``model_path`` is a checkpoint or an exported ONNX graph (:func:`load_scoring_model`, which
    takes ``precision`` and ``device``; by default a checkpoint scores on CUDA where there is one).
    """
    model = load_scoring_model(model_path, device=device, precision=precision)
    if isinstance(model, LoadedModel):
        logger.info("scoring with %s on %s in %s", model.description, model.device, model.computes_in)
    else:
        logger.info("scoring with %s through onnxruntime on the CPU in fp32", model.description)
    # the worklist's view column; not the age, a patient attribute the worklist does not need
    manifest = fill_from_dicom_headers(load_inputs(inputs), ages=False)
    images = load_images(manifest, model.config.data, on_bad_file=on_bad_file, cache_dir=cache_dir, progress=progress)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    report_skipped(images.skipped, out_csv.with_name(out_csv.stem + "_skipped.csv"))
    scored = score_table(model, images, normalisation=normalisation, keep_maps=report is not None)
    table = add_dicom_links(scored.table, keep_patient_identifiers=keep_patient_identifiers)
    if report is not None:
        assert scored.anomaly_maps is not None  # asked for above
        ranked = rank_table(table)
        order = ranked.order
        heat = heatmap_range(model.calibration, model.anomaly_map_scale)
        explanations = explain_rows(
            ranked.table,
            images.pixels[order],
            scored.anomaly_maps[order],
            heat.scale,
            floor=heat.floor,
            border_crop=model.config.data.border_crop,
            reconstructions=None if scored.reconstructions is None else scored.reconstructions[order],
            max_image_pixels=model.config.data.max_image_pixels,
        )
        write_html_report(
            report,
            ranked.table,
            explanations,
            calibration=model.calibration,
            model_description=f"{Path(model_path).name} ({model.description}, cxr-anomaly {model.package_version})",
        )
        table = ranked.table
    table.to_csv(out_csv, index=False)
    logger.info("scored %d images -> %s", len(table), out_csv)
    return table
