"""``cxr-anomaly evaluate``: score labelled films, compute metrics beside the pixel baselines, draw
the figures and write the worklist.

metrics.json holds the overall AUC beside the AUC within each view, the view-balanced AUC, the
view-only AUC and how well the score predicts AP among normal films (and the same for adults
where ages are known), each with a 95% stratified-bootstrap interval (see
:func:`cxr_anomaly.evaluation.compute_metrics`). With a calibrated checkpoint it also holds
sensitivity and specificity at the stored threshold with their intervals.

With baselines, metrics.json also holds the pixel baselines' metrics on the same films
(``baselines``: name -> metrics), fitted on the checkpoint's training normals (:func:`training_rows`).
With those films at hand it also lists the patients that evaluated and training films share
(``patients_shared_with_training``; null when the training films are not at hand or either side
has no patient ids), and, from the checkpoint's signatures, the evaluated films that copy one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..baselines import BASELINE_IMAGE_SIZE, named_baseline_scores
from ..calibration import BootstrapIntervals, Calibration, bootstrap_intervals
from ..checkpoint import LoadedModel, load_checkpoint
from ..config import DataConfig
from ..data.copies import film_signatures, matching_signatures
from ..data.dataset import LoadedImages, OnBadFile, load_images
from ..data.manifest import fill_from_dicom_headers, load_inputs
from ..data.selection import (
    choose_evaluation_rows,
    read_label_column,
    report_skipped,
    require_both_classes,
    select_training_rows,
)
from ..evaluation import FilmGroup, Metrics, compute_metrics, explanation_grid, metrics_by_name, plot_roc
from ..explain import heatmap_range
from ..files import atomic_write_text
from .score import ScoredTable, score_table

logger = logging.getLogger(__name__)


@dataclass
class EvaluationOutcome:
    """What :func:`evaluate_job` wrote and measured."""

    metrics: Metrics
    split: str
    metrics_path: Path
    roc_path: Path
    grid_path: Path
    scores_path: Path
    intervals: BootstrapIntervals | None = None  # at the stored threshold; None without calibration


def plot_evaluation_roc(
    description: str,
    labels: np.ndarray,
    raw: np.ndarray,
    views: np.ndarray | None,
    metrics: Metrics,
    split: str,
    path: Path,
    baseline_scores: dict[str, np.ndarray] | None = None,
) -> Path:
    """``roc.png``: the detector over all films, within each view, the pixel baselines over all
    films (when given) and the view-only score."""
    curves = {description: (labels, raw)}
    for name, scores in (baseline_scores or {}).items():
        curves[name] = (labels, scores)
    if views is not None:
        view_array = np.asarray(views, dtype=object)
        for view in metrics.auc_per_view:
            mask = view_array == view
            curves[f"{view} films only"] = (labels[mask], raw[mask])
        curves["view only (AP = 1)"] = (labels, (view_array == "AP").astype(float))
    return plot_roc(curves, path, title=f"ROC, {split} split")


def plot_film_groups(
    model: LoadedModel, images: LoadedImages, raw: np.ndarray, scored: ScoredTable, path: Path
) -> Path:
    """``films.png``: normal, abnormal and unlabelled films (all rows, labelled or not) with their heatmaps."""
    assert scored.anomaly_maps is not None  # the caller scored with keep_maps=True
    label_column = images.manifest["label"]
    groups = []
    for name, mask in (
        ("normal", (label_column == 0).fillna(False).to_numpy(bool)),
        ("abnormal", (label_column == 1).fillna(False).to_numpy(bool)),
        ("unlabelled", label_column.isna().to_numpy()),
    ):
        if mask.any():
            groups.append(
                FilmGroup(
                    name,
                    images.pixels[mask],
                    scored.anomaly_maps[mask],
                    raw[mask],
                    None if scored.reconstructions is None else scored.reconstructions[mask],
                )
            )
    heat = heatmap_range(model.calibration, model.detector.anomaly_map_scale)
    return explanation_grid(groups, path, scale=heat.scale, floor=heat.floor, border_crop=model.config.data.border_crop)


def copies_of_training_films(model: LoadedModel, images: LoadedImages) -> list[str] | None:
    """Paths of the evaluated films that are copies of the checkpoint's training films (the same
    film through another pipeline, :mod:`cxr_anomaly.data.copies`), with a warning naming them;
    None when the checkpoint holds no training signatures (written by an older version)."""
    training_signatures = model.training_signatures
    if training_signatures is None:
        logger.info(
            "the checkpoint holds no signatures of its training films: copies of them among the "
            "evaluated films are not checked (retrain with this version to check)"
        )
        return None
    found = matching_signatures(film_signatures(images.pixels), training_signatures)
    paths = [str(images.manifest["path"].iloc[copy.film]) for copy in found]
    if paths:
        logger.warning(
            "%d evaluated film(s) are copies of training films (the same film through another "
            "pipeline); a normal one makes the results optimistic: %s",
            len(paths),
            paths,
        )
    return paths


def training_rows(model: LoadedModel, train_data: list[str | Path] | None) -> pd.DataFrame | None:
    """The normal films the checkpoint trained on: those of ``train_data``, else of the sources it
    recorded, chosen as at training (:func:`select_training_rows`). None, with a warning saying how
    to supply them, when no source is known or a source is not here."""
    sources = list(train_data or model.training.get("data") or [])
    if not sources:
        logger.warning(
            "the checkpoint records no training data: no pixel baselines and no check for training "
            "patients among the evaluated films; pass --baseline-train DATA"
        )
        return None
    missing = [str(source) for source in sources if not Path(source).exists()]
    if missing:
        logger.warning(
            "the training data %s is not here (moved, or another machine?): no pixel baselines and no "
            "check for training patients among the evaluated films; pass --baseline-train DATA",
            missing,
        )
        return None
    return select_training_rows(load_inputs(sources), model.config, ", ".join(map(str, sources))).train


def patients_shared_with_training(films: pd.DataFrame, training: pd.DataFrame) -> list[str] | None:
    """Patient ids that both the evaluated films and the training films carry, with a warning;
    None when either side carries no patient id, so that nothing could be checked."""
    film_patients = set(films["patient_id"].dropna().astype(str))
    training_patients = set(training["patient_id"].dropna().astype(str))
    if not film_patients or not training_patients:
        logger.info(
            "no check for training patients among the evaluated films: the %s carry no patient id",
            "evaluated films" if not film_patients else "training films",
        )
        return None
    shared = sorted(film_patients & training_patients)
    if shared:
        logger.warning(
            "%d patient(s) of the evaluated films also have training films (e.g. %s): the results "
            "will be optimistic; evaluate on patients the model never saw",
            len(shared),
            shared[:5],
        )
    return shared


@dataclass
class PixelBaselines:
    """The pixel baselines on the evaluated films.

    Attributes:
        scores: baseline name -> scores (N,) of the labelled films, in their order.
        metrics: baseline name -> :meth:`Metrics.to_dict` values, as the detector's.
    """

    scores: dict[str, np.ndarray]
    metrics: dict[str, dict[str, object]]


def pixel_baselines(
    training: pd.DataFrame, films: pd.DataFrame, labels: np.ndarray, *, num_resamples: int, seed: int
) -> PixelBaselines:
    """The pixel baselines (PCA(5) reconstruction error and 5-NN distance at 64 px) fitted on the
    normal ``training`` films, scored on ``films`` (:func:`cxr_anomaly.evaluation.compute_metrics`)."""
    baseline_data = DataConfig(image_size=BASELINE_IMAGE_SIZE)
    normals = load_images(training, baseline_data).pixels
    scores = named_baseline_scores(normals, {"films": load_images(films, baseline_data).pixels})["films"]
    return PixelBaselines(scores, metrics_by_name(labels, scores, films, num_resamples=num_resamples, seed=seed))


@dataclass
class EvaluatedFilms:
    """The films an evaluation scores, decoded, and how many of them carry no label."""

    images: LoadedImages
    split: str
    num_unlabelled: int


def load_evaluated_films(
    model: LoadedModel,
    data: list[str | Path],
    split: str,
    label_column: str,
    out_dir: Path,
    *,
    on_bad_file: OnBadFile,
    cache_dir: str | Path | None,
    progress: bool,
) -> EvaluatedFilms:
    """The films of ``split`` (``auto``: :func:`choose_evaluation_rows`) with their labels from
    ``label_column``, decoded for ``model``; unreadable files listed in ``out_dir/skipped_files.csv``.

    Raises:
        ManifestError: no film of the split has a label, or the labelled films are all of one class.
    """
    origin = ", ".join(str(source) for source in data)
    chosen = choose_evaluation_rows(load_inputs(data), split)
    manifest, split = read_label_column(chosen.manifest, label_column, origin), chosen.split
    require_both_classes(manifest, origin, label_column, split)  # before minutes of scoring
    manifest = fill_from_dicom_headers(manifest)  # per-view and adult AUCs for DICOM films
    unlabelled = int(manifest["label"].isna().sum())
    if unlabelled:
        logger.warning("%d films have no label and are scored but left out of the metrics", unlabelled)
    images = load_images(manifest, model.config.data, on_bad_file=on_bad_file, cache_dir=cache_dir, progress=progress)
    report_skipped(images.skipped, out_dir / "skipped_files.csv")
    require_both_classes(images.manifest, origin, label_column, split)  # skipped files may leave one class
    return EvaluatedFilms(images, split, unlabelled)


def evaluation_facts(
    model: LoadedModel, films: EvaluatedFilms, num_images: int, training: pd.DataFrame | None
) -> dict[str, object]:
    """metrics.json's record of what was evaluated, with what, and its overlap with the training films."""
    return {
        "method": model.config.method,
        "detector": model.detector.description,
        "device": str(model.device),
        "precision": model.computes_in,
        "split": films.split,
        "num_images": num_images,
        "num_unlabelled": films.num_unlabelled,
        "num_skipped": len(films.images.skipped),
        "copies_of_training_films": copies_of_training_films(model, films.images),
        "patients_shared_with_training": (
            None if training is None else patients_shared_with_training(films.images.manifest, training)
        ),
    }


def threshold_facts(calibration: Calibration, intervals: BootstrapIntervals) -> dict[str, object]:
    """metrics.json's operating point: the stored threshold, sensitivity and specificity there, intervals."""
    return {
        "threshold": calibration.threshold,
        "operating_point": calibration.summary(),
        "sensitivity_at_threshold": intervals.sensitivity.estimate,
        "specificity_at_threshold": intervals.specificity.estimate,
        "bootstrap_95ci": intervals.to_dict(),
    }


@dataclass(frozen=True)
class LabelledScores:
    """The labelled films' labels and scores (raw and per component), with their views and ages where known."""

    mask: np.ndarray  # (N,) bool: which films of the score table carry a label
    labels: np.ndarray
    raw: np.ndarray
    views: np.ndarray | None
    ages: np.ndarray | None
    components: dict[str, np.ndarray]

    def metrics(self, *, num_resamples: int, seed: int) -> Metrics:
        """:func:`compute_metrics` of the raw score, with the views, ages and components."""
        return compute_metrics(
            self.labels,
            self.raw,
            views=self.views,
            components=self.components,
            ages=self.ages,
            num_resamples=num_resamples,
            seed=seed,
        )


def labelled_scores(manifest: pd.DataFrame, table: pd.DataFrame, component_names: Sequence[str]) -> LabelledScores:
    """The rows of ``table`` (scores of ``manifest``'s films) whose film has a label."""
    labelled = manifest["label"].notna().to_numpy()
    return LabelledScores(
        labelled,
        manifest["label"].to_numpy()[labelled].astype(int),
        table["score_raw"].to_numpy()[labelled],
        manifest["view"].to_numpy()[labelled] if manifest["view"].notna().any() else None,
        manifest["age"].to_numpy()[labelled] if "age" in manifest else None,
        {name: table[name].to_numpy()[labelled] for name in component_names},
    )


def metrics_summary(
    model_path: str | Path,
    model: LoadedModel,
    films: EvaluatedFilms,
    num_images: int,
    training: pd.DataFrame | None,
    metrics: Metrics,
    baseline_results: PixelBaselines | None,
) -> dict[str, object]:
    """metrics.json's values before the operating point: what was evaluated, the metrics, the baselines'."""
    return {
        "model": str(model_path),
        **evaluation_facts(model, films, num_images, training),
        **metrics.to_dict(),
        "baselines": None if baseline_results is None else baseline_results.metrics,
    }


def calibrated_intervals(
    calibration: Calibration | None, labelled: LabelledScores, *, num_resamples: int, seed: int
) -> BootstrapIntervals | None:
    """Sensitivity and specificity at the stored threshold with their intervals; None without calibration or labels."""
    if calibration is None or not labelled.mask.any():
        return None
    return bootstrap_intervals(
        labelled.labels, labelled.raw, calibration.threshold, seed=seed, num_resamples=num_resamples
    )


def evaluate_job(
    model_path: str | Path,
    data: list[str | Path],
    out_dir: str | Path,
    *,
    split: str = "auto",
    on_bad_file: OnBadFile = "error",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    bootstrap_resamples: int = 1000,
    bootstrap_seed: int = 0,
    label_column: str = "label",
    baselines: bool = True,
    baseline_train: list[str | Path] | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> EvaluationOutcome:
    """Score labelled films and write metrics.json, roc.png, films.png and scores.csv; see the module
    docstring for what metrics.json holds.

    ``bootstrap_resamples`` resamples seeded by ``bootstrap_seed`` give the 95% intervals.
    ``label_column`` names the column that holds the labels (0 normal, 1 abnormal, empty unknown).
    The detector scores on ``device`` (``auto``: CUDA where there is one) in ``precision``
    (:func:`load_scoring_model`); metrics.json records both. With ``baselines``, the pixel
    baselines are fitted on the training normals read from ``baseline_train`` or from the sources
    the checkpoint recorded (:func:`training_rows`).

    Raises:
        ManifestError: no film of the chosen split has a label, or the labelled films are all of
            one class: such a run would measure nothing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(model_path, device=device, precision=precision)
    films = load_evaluated_films(
        model, data, split, label_column, out_dir, on_bad_file=on_bad_file, cache_dir=cache_dir, progress=progress
    )
    images, split = films.images, films.split
    scored = score_table(model, images, keep_maps=True, normalisation="calibrated" if model.calibration else "raw")
    table = scored.table
    scores_path = out_dir / "scores.csv"
    table.to_csv(scores_path, index=False)
    labelled = labelled_scores(images.manifest, table, model.detector.component_names)
    training = training_rows(model, baseline_train)  # for the baselines and the patient check
    baseline_results = None
    if baselines and training is not None:
        baseline_results = pixel_baselines(
            training,
            images.manifest[labelled.mask],
            labelled.labels,
            num_resamples=bootstrap_resamples,
            seed=bootstrap_seed,
        )
    metrics = labelled.metrics(num_resamples=bootstrap_resamples, seed=bootstrap_seed)
    summary = metrics_summary(model_path, model, films, len(table), training, metrics, baseline_results)
    intervals = calibrated_intervals(
        model.calibration, labelled, num_resamples=bootstrap_resamples, seed=bootstrap_seed
    )
    if intervals is not None and model.calibration is not None:
        summary.update(threshold_facts(model.calibration, intervals))
    metrics_path = out_dir / "metrics.json"
    atomic_write_text(metrics_path, json.dumps(summary, indent=2))
    roc_path = plot_evaluation_roc(
        model.detector.description,
        labelled.labels,
        labelled.raw,
        labelled.views,
        metrics,
        split,
        out_dir / "roc.png",
        None if baseline_results is None else baseline_results.scores,
    )
    grid_path = plot_film_groups(model, images, table["score_raw"].to_numpy(), scored, out_dir / "films.png")
    logger.info(
        "evaluated %d films on split %s: AUC %s",
        len(table),
        split,
        "n/a" if metrics.auc is None else f"{metrics.auc:.3f}",
    )
    return EvaluationOutcome(metrics, split, metrics_path, roc_path, grid_path, scores_path, intervals)
