"""The three jobs behind the CLI: train, score and evaluate, from files to files.

``cli.py`` only parses arguments and calls these functions, so every job can be run from Python
as well. Each job states what it used: how many normal films trained the model, which files
were skipped and why, which split was evaluated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import distributed
from .calibration import BootstrapIntervals, Calibration, bootstrap_intervals
from .checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from .baselines import BASELINE_IMAGE_SIZE, named_baseline_scores
from .config import Config, DataConfig, config_to_dict
from .data.copies import film_signatures, matching_signatures
from .data.dataset import LoadedImages, OnBadFile, SkippedFile, load_images
from .data.manifest import fill_from_dicom_headers, load_inputs
from .errors import ManifestError, NoNormalImagesError
from .files import atomic_torch_save, atomic_write_text, read_checkpoint_payload
from .evaluation import FilmGroup, Metrics, compute_metrics, explanation_grid, metrics_by_name, plot_roc
from .inference import resolve_device
from .models.registry import family_of, fit_detector
from .explain import heatmap_range
from .report import add_dicom_links, explain_rows, rank_table, write_html_report
from .scoring import fit_calibration, min_max_normalise, score_films
from .scope import fitted_on_adults, scope_column, training_age_record

if TYPE_CHECKING:  # onnxruntime is optional: imported only to score an .onnx model
    from .export import OnnxScorer

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.pt"


@dataclass
class TrainingData:
    """The normal films chosen for training and for calibration, and what was left out."""

    train: pd.DataFrame
    calibration: pd.DataFrame
    calibration_source: str
    ignored_counts: dict[str, int] = field(default_factory=dict)


def select_training_rows(manifest: pd.DataFrame, config: Config, origin: str) -> TrainingData:
    """Pick normal training films and normal calibration films from a manifest.

    With a ``split`` column, training uses label-0 rows of ``train`` and calibration uses label-0
    rows of ``val``. Without a split, or without validation normals, a ``calibration_fraction``
    of the training normals is held out by patient (seeded). Abnormal and unlabelled films never
    train the model.

    Raises:
        NoNormalImagesError: no training row is labelled normal.
    """
    has_split = manifest["split"].notna().any()
    candidates = manifest[manifest["split"] == "train"] if has_split else manifest
    normal = candidates[candidates["label"] == 0]
    ignored = {
        "abnormal": int((candidates["label"] == 1).sum()),
        "unlabelled": int(candidates["label"].isna().sum()),
        "not_train_split": int(len(manifest) - len(candidates)),
    }
    if normal.empty:
        raise NoNormalImagesError(
            f"{origin}: no normal (label 0) images to train on among {len(candidates)} "
            f"{'train-split ' if has_split else ''}rows ({ignored['abnormal']} abnormal, "
            f"{ignored['unlabelled']} unlabelled)"
        )
    validation = manifest[(manifest["split"] == "val") & (manifest["label"] == 0)] if has_split else normal.iloc[:0]
    if len(validation) >= 2:
        return TrainingData(normal, validation, "validation split normals", ignored)
    fraction = config.train.calibration_fraction
    if fraction == 0 or len(normal) < 10:
        logger.warning("calibrating on the training normals themselves: scores will look optimistic")
        return TrainingData(normal, normal, "training normals (no hold-out)", ignored)
    groups = normal["patient_id"].fillna(pd.Series(normal.index.astype(str), index=normal.index))
    unique_groups = np.array(sorted(groups.unique()))
    rng = np.random.default_rng(config.train.seed)
    held = set(rng.choice(unique_groups, size=max(1, round(fraction * len(unique_groups))), replace=False))
    mask = groups.isin(held)
    return TrainingData(normal[~mask], normal[mask], f"{mask.sum()} training normals held out by patient", ignored)


@dataclass
class PatientOverlap:
    """Patients found in more than one split of a manifest, per pair of splits.

    Attributes:
        patients: patients in more than one split (each counted once).
        train_test: patients in both train and test: the model has seen them.
        val_test: patients in both val and test: the operating point was fitted on them.
        train_val: patients in both train and val: only the calibration is affected.
    """

    patients: int = 0
    train_test: int = 0
    val_test: int = 0
    train_val: int = 0


def _patients(count: int) -> str:
    """``1 patient``, ``3 patients``."""
    return f"{count} patient" if count == 1 else f"{count} patients"


def warn_on_patient_overlap(manifest: pd.DataFrame) -> PatientOverlap:
    """Warn about patients shared between splits, saying which splits share them and what it costs.

    Overlaps with test make the test results optimistic. An overlap of train and val alone leaves
    the test results honest: it only fits the operating point on normals of patients the model
    trained on, so that scores of new patients sit higher than calibrated.
    """
    known = manifest.dropna(subset=["patient_id", "split"])
    splits_of = known.groupby("patient_id")["split"].agg(frozenset)

    def both(first: str, second: str) -> int:
        """Patients with films in both splits."""
        # sum() of an empty object Series is "", not 0: count explicitly
        return sum(1 for splits in splits_of if first in splits and second in splits)

    overlap = PatientOverlap(patients=sum(1 for splits in splits_of if len(splits) > 1),
                             train_test=both("train", "test"),
                             val_test=both("val", "test"), train_val=both("train", "val"))
    if overlap.train_test or overlap.val_test:
        logger.warning(
            "%s in both train and test and %d in both val and test: the test results will be optimistic "
            "(the model or its operating point has seen these patients). Use `cxr-anomaly split` for a "
            "patient-disjoint split.", _patients(overlap.train_test), overlap.val_test,
        )
    if overlap.train_val:
        logger.warning(
            "%s in both train and val: this affects only the calibration (the operating point is fitted "
            "on normals of patients the model trained on, so it may flag more new films than intended); "
            "the test results are not affected.", _patients(overlap.train_val),
        )
    return overlap


def report_skipped(skipped: list[SkippedFile], path: Path) -> None:
    """Write every skipped file with its reason to a CSV beside the job's outputs."""
    if skipped:
        pd.DataFrame([{"path": s.path, "reason": s.reason} for s in skipped]).to_csv(path, index=False)
        logger.warning("%d files were skipped; see %s", len(skipped), path)


@dataclass
class TrainOutcome:
    """What :func:`train_job` produced."""

    checkpoint: Path
    num_train_images: int
    num_calibration_images: int
    skipped: list[SkippedFile]


def train_job(
    data: list[str | Path],
    out_dir: str | Path,
    config: Config,
    *,
    on_bad_file: OnBadFile = "error",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
) -> TrainOutcome:
    """Train on the normal films of ``data``, calibrate, and write ``out_dir/model.pt``.

    Training states go to ``out_dir/training_state.pt`` (every epoch, and every
    ``train.checkpoint_every_steps`` steps); ``resume`` continues from the last one with its
    stored settings. Started by ``torchrun`` with several processes, every rank trains
    (DistributedDataParallel) and only rank 0 calibrates and writes files.
    """
    context = distributed.initialise_from_environment(config.train.device)
    try:
        outcome = _train_job(data, out_dir, config, on_bad_file=on_bad_file, cache_dir=cache_dir,
                             progress=progress, resume=resume, context=context)
    except BaseException:
        distributed.shutdown(context, wait=False)  # the other ranks may be gone already
        raise
    distributed.shutdown(context)
    return outcome


def _train_job(
    data: list[str | Path],
    out_dir: str | Path,
    config: Config,
    *,
    on_bad_file: OnBadFile,
    cache_dir: str | Path | None,
    progress: bool,
    resume: bool,
    context: distributed.DistributedContext,
) -> TrainOutcome:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:  # a family fitted in one pass has nothing to resume: its config is kept
        config = family_of(config.method).resume_config(out_dir, config)
    progress = progress and context.is_main
    manifest = load_inputs(data)
    origin = ", ".join(str(source) for source in data)
    warn_on_patient_overlap(manifest)
    chosen = select_training_rows(manifest, config, origin)
    if not context.is_main:
        distributed.barrier(context)  # rank 0 fills the preprocessing cache first
    train_images = load_images(chosen.train, config.data, on_bad_file=on_bad_file,
                               cache_dir=cache_dir, progress=progress)
    calibration_images = load_images(chosen.calibration, config.data, on_bad_file=on_bad_file,
                                     cache_dir=cache_dir, progress=progress)
    if context.is_main:
        distributed.barrier(context)
    skipped = train_images.skipped + calibration_images.skipped
    if context.is_main:
        report_skipped(skipped, out_dir / "skipped_files.csv")
    logger.info(
        "training on %d normal images (ignored: %s); calibrating on %d (%s)",
        len(train_images.pixels), chosen.ignored_counts, len(calibration_images.pixels),
        chosen.calibration_source,
    )
    device = resolve_device(config.train.device)
    result = fit_detector(config, train_images.pixels, device=device, progress=progress, run_dir=out_dir,
                          resume=resume)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if not context.is_main:  # rank 0 alone calibrates and writes
        return TrainOutcome(checkpoint_path, len(train_images.pixels), len(calibration_images.pixels), skipped)
    calibration_scores = score_films(result.detector, calibration_images.pixels, device=device, keep_maps=True)
    calibration = fit_calibration(calibration_scores.raw, config.score.target_specificity)
    calibration = calibration.with_map_range(calibration_scores.anomaly_maps)
    record = {
        **result.record,
        "num_calibration_images": len(calibration_images.pixels),
        "calibration_source": chosen.calibration_source,
        "ignored_rows": chosen.ignored_counts,
        "skipped_files": len(skipped),
        "training_ages": training_age_record(chosen.train),
        "data": [str(Path(source).resolve()) for source in data],  # absolute: evaluate reads it from anywhere
    }
    checkpoint = save_checkpoint(checkpoint_path, result.detector, config, calibration=calibration, training=record,
                                 training_signatures=film_signatures(train_images.pixels))
    # Written atomically too, so that a run killed at any moment leaves no truncated file.
    atomic_write_text(out_dir / "config.json", json.dumps(config_to_dict(config), indent=2))
    atomic_write_text(out_dir / "training_log.json", json.dumps(record, indent=2))
    return TrainOutcome(checkpoint, len(train_images.pixels), len(calibration_images.pixels), skipped)


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


def load_scoring_model(model_path: str | Path, *, device: str = "cpu", precision: str = "auto",
                       onnx_threads: int | None = None) -> LoadedModel | OnnxScorer:
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
        from .export import OnnxScorer

        if device not in ("cpu", "auto"):
            raise ValueError(f"{model_path}: an ONNX graph is scored on the CPU (onnxruntime's CPU "
                             f"provider), not on device={device!r}; use the checkpoint (model.pt) instead")
        if precision == "bf16":
            raise ValueError(f"{model_path}: an ONNX graph is scored in fp32, not precision='bf16'; "
                             "score the checkpoint (model.pt) for bf16")
        return OnnxScorer(model_path, num_threads=onnx_threads)
    return load_checkpoint(model_path, device=device, precision=precision)


def score_table(model: LoadedModel | OnnxScorer, images: LoadedImages, *, normalisation: str = "calibrated",
                keep_maps: bool = False) -> ScoredTable:
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
    images = load_images(manifest, model.config.data, on_bad_file=on_bad_file,
                         cache_dir=cache_dir, progress=progress)
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
            ranked.table, images.pixels[order], scored.anomaly_maps[order], heat.scale, floor=heat.floor,
            border_crop=model.config.data.border_crop,
            reconstructions=None if scored.reconstructions is None else scored.reconstructions[order],
            max_image_pixels=model.config.data.max_image_pixels)
        write_html_report(report, ranked.table, explanations, calibration=model.calibration,
                          model_description=f"{Path(model_path).name} ({model.description}, "
                                            f"cxr-anomaly {model.package_version})")
        table = ranked.table
    table.to_csv(out_csv, index=False)
    logger.info("scored %d images -> %s", len(table), out_csv)
    return table


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


@dataclass
class ChosenRows:
    """The manifest rows a job works on and the split they came from (``all`` for every row)."""

    manifest: pd.DataFrame
    split: str


def columns_with_values(manifest: pd.DataFrame) -> list[str]:
    """The manifest's columns that hold at least one value (the standard ones are added empty)."""
    return [str(column) for column in manifest.columns
            if manifest[column].astype("string").str.strip().replace("", pd.NA).notna().any()]


def read_label_column(manifest: pd.DataFrame, label_column: str, origin: str) -> pd.DataFrame:
    """Take the labels (0 normal, 1 abnormal, empty unknown) from ``label_column`` instead of ``label``.

    Raises:
        ManifestError: the column is absent (the message lists the columns there) or holds a
            value other than 0, 1 or empty.
    """
    if label_column == "label":
        return manifest
    if label_column not in manifest.columns:
        raise ManifestError(origin, f"no column {label_column!r} to read labels from (--label-column); "
                                    f"columns found: {', '.join(columns_with_values(manifest))}")
    text = manifest[label_column].astype("string").str.strip()
    text = text.mask(text == "")
    numbers = pd.to_numeric(text, errors="coerce")
    bad = (text.notna() & ~numbers.isin([0, 1])).to_numpy(dtype=bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ManifestError(origin, f"{manifest['path'].iloc[row]}: {label_column} {text.iloc[row]!r} is not "
                                    "0 (normal), 1 (abnormal) or empty")
    return manifest.assign(label=numbers.astype("Int64"))


def require_both_classes(manifest: pd.DataFrame, origin: str, label_column: str, split: str) -> None:
    """Refuse an evaluation that could measure nothing: no labels at all, or one class only.

    Raises:
        ManifestError: no film has a label (the message names the columns found and the one
            needed), or every labelled film is of one class (AUC needs both).
    """
    labels = manifest["label"]
    where = "" if split == "all" else f" of the {split} split"
    if labels.isna().all():
        raise ManifestError(
            origin, f"none of the {len(manifest)} films{where} has a label, so there is nothing to measure: "
                    f"evaluate needs column {label_column!r} holding 0 (normal) or 1 (abnormal); columns "
                    f"found: {', '.join(columns_with_values(manifest))} (--label-column NAME reads the "
                    "labels from another column)")
    normal, abnormal = int((labels == 0).sum()), int((labels == 1).sum())
    if normal == 0 or abnormal == 0:
        raise ManifestError(
            origin, f"AUC needs both classes, but the labelled films{where} are {normal} normal and "
                    f"{abnormal} abnormal (column {label_column!r})")


def choose_evaluation_rows(manifest: pd.DataFrame, split: str) -> ChosenRows:
    """Rows to evaluate: ``auto`` means the test split when one exists, else every row."""
    if split == "auto":
        split = "test" if (manifest["split"] == "test").any() else "all"
    if split == "all":
        return ChosenRows(manifest, split)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"no rows with split {split!r} in the data")
    return ChosenRows(rows, split)


def plot_evaluation_roc(description: str, labels: np.ndarray, raw: np.ndarray, views: np.ndarray | None,
                        metrics: Metrics, split: str, path: Path,
                        baseline_scores: dict[str, np.ndarray] | None = None) -> Path:
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


def plot_film_groups(model: LoadedModel, images: LoadedImages, raw: np.ndarray, scored: ScoredTable,
                     path: Path) -> Path:
    """``films.png``: normal, abnormal and unlabelled films (all rows, labelled or not) with their heatmaps."""
    assert scored.anomaly_maps is not None  # the caller scored with keep_maps=True
    label_column = images.manifest["label"]
    groups = []
    for name, mask in (("normal", (label_column == 0).fillna(False).to_numpy(bool)),
                       ("abnormal", (label_column == 1).fillna(False).to_numpy(bool)),
                       ("unlabelled", label_column.isna().to_numpy())):
        if mask.any():
            groups.append(FilmGroup(name, images.pixels[mask], scored.anomaly_maps[mask], raw[mask],
                                    None if scored.reconstructions is None else scored.reconstructions[mask]))
    heat = heatmap_range(model.calibration, model.detector.anomaly_map_scale)
    return explanation_grid(groups, path, scale=heat.scale, floor=heat.floor,
                            border_crop=model.config.data.border_crop)


def copies_of_training_films(model: LoadedModel, images: LoadedImages) -> list[str] | None:
    """Paths of the evaluated films that are copies of the checkpoint's training films (the same
    film through another pipeline, :mod:`cxr_anomaly.data.copies`), with a warning naming them;
    None when the checkpoint holds no training signatures (written by an older version)."""
    training_signatures = model.training_signatures
    if training_signatures is None:
        logger.info("the checkpoint holds no signatures of its training films: copies of them among the "
                    "evaluated films are not checked (retrain with this version to check)")
        return None
    found = matching_signatures(film_signatures(images.pixels), training_signatures)
    paths = [str(images.manifest["path"].iloc[copy.film]) for copy in found]
    if paths:
        logger.warning("%d evaluated film(s) are copies of training films (the same film through another "
                       "pipeline); a normal one makes the results optimistic: %s", len(paths), paths)
    return paths


def training_rows(model: LoadedModel, train_data: list[str | Path] | None) -> pd.DataFrame | None:
    """The normal films the checkpoint trained on: those of ``train_data``, else of the sources it
    recorded, chosen as at training (:func:`select_training_rows`). None, with a warning saying how
    to supply them, when no source is known or a source is not here."""
    sources = list(train_data or model.training.get("data") or [])
    if not sources:
        logger.warning("the checkpoint records no training data: no pixel baselines and no check for training "
                       "patients among the evaluated films; pass --baseline-train DATA")
        return None
    missing = [str(source) for source in sources if not Path(source).exists()]
    if missing:
        logger.warning("the training data %s is not here (moved, or another machine?): no pixel baselines and no "
                       "check for training patients among the evaluated films; pass --baseline-train DATA", missing)
        return None
    return select_training_rows(load_inputs(sources), model.config, ", ".join(map(str, sources))).train


def patients_shared_with_training(films: pd.DataFrame, training: pd.DataFrame) -> list[str] | None:
    """Patient ids that both the evaluated films and the training films carry, with a warning;
    None when either side carries no patient id, so that nothing could be checked."""
    film_patients = set(films["patient_id"].dropna().astype(str))
    training_patients = set(training["patient_id"].dropna().astype(str))
    if not film_patients or not training_patients:
        logger.info("no check for training patients among the evaluated films: the %s carry no patient id",
                    "evaluated films" if not film_patients else "training films")
        return None
    shared = sorted(film_patients & training_patients)
    if shared:
        logger.warning("%d patient(s) of the evaluated films also have training films (e.g. %s): the results "
                       "will be optimistic; evaluate on patients the model never saw", len(shared), shared[:5])
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


def pixel_baselines(training: pd.DataFrame, films: pd.DataFrame, labels: np.ndarray, *, num_resamples: int,
                    seed: int) -> PixelBaselines:
    """The pixel baselines (PCA(5) reconstruction error and 5-NN distance at 64 px) fitted on the
    normal ``training`` films, scored on ``films`` (:func:`cxr_anomaly.evaluation.compute_metrics`)."""
    baseline_data = DataConfig(image_size=BASELINE_IMAGE_SIZE)
    normals = load_images(training, baseline_data).pixels
    scores = named_baseline_scores(normals, {"films": load_images(films, baseline_data).pixels})["films"]
    return PixelBaselines(scores, metrics_by_name(labels, scores, films, num_resamples=num_resamples, seed=seed))


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
    """Score labelled films and write metrics.json, roc.png, films.png and scores.csv.

    metrics.json holds the overall AUC beside the AUC within each view, the view-balanced AUC,
    the view-only AUC and how well the score predicts AP among normal films (and the same for
    adults where ages are known), each with a 95% stratified-bootstrap interval
    (``bootstrap_resamples`` resamples seeded by ``bootstrap_seed``; see
    :func:`cxr_anomaly.evaluation.compute_metrics`). With a calibrated checkpoint it also holds
    sensitivity and specificity at the stored threshold with their intervals.

    ``label_column`` names the column that holds the labels (0 normal, 1 abnormal, empty unknown).
    The detector scores on ``device`` (``auto``: CUDA where there is one) in ``precision``
    (:func:`load_scoring_model`); metrics.json records both.

    With ``baselines``, metrics.json also holds the pixel baselines' metrics on the same films
    (``baselines``: name -> metrics), fitted on the checkpoint's training normals, which are read
    from ``baseline_train`` or from the sources the checkpoint recorded (:func:`training_rows`).
    With those films at hand it also lists the patients that evaluated and training films share
    (``patients_shared_with_training``; null when the training films are not at hand or either
    side has no patient ids), and, from
    the checkpoint's signatures, the evaluated films that copy a training film.

    Raises:
        ManifestError: no film of the chosen split has a label, or the labelled films are all of
            one class: such a run would measure nothing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(model_path, device=device, precision=precision)
    origin = ", ".join(str(source) for source in data)
    chosen = choose_evaluation_rows(load_inputs(data), split)
    manifest, split = read_label_column(chosen.manifest, label_column, origin), chosen.split
    require_both_classes(manifest, origin, label_column, split)  # before minutes of scoring
    manifest = fill_from_dicom_headers(manifest)  # per-view and adult AUCs for DICOM films
    unlabelled = int(manifest["label"].isna().sum())
    if unlabelled:
        logger.warning("%d films have no label and are scored but left out of the metrics", unlabelled)
    images = load_images(manifest, model.config.data, on_bad_file=on_bad_file,
                         cache_dir=cache_dir, progress=progress)
    report_skipped(images.skipped, out_dir / "skipped_files.csv")
    require_both_classes(images.manifest, origin, label_column, split)  # skipped files may leave one class
    scored = score_table(model, images, keep_maps=True,
                         normalisation="calibrated" if model.calibration else "raw")
    table = scored.table
    scores_path = out_dir / "scores.csv"
    table.to_csv(scores_path, index=False)
    labelled = images.manifest["label"].notna().to_numpy()
    labels = images.manifest["label"].to_numpy()[labelled].astype(int)
    raw = table["score_raw"].to_numpy()[labelled]
    views = images.manifest["view"].to_numpy()[labelled] if images.manifest["view"].notna().any() else None
    ages = images.manifest["age"].to_numpy()[labelled] if "age" in images.manifest else None
    components = {name: table[name].to_numpy()[labelled] for name in model.detector.component_names}
    training = training_rows(model, baseline_train)  # for the baselines and the patient check
    baseline_results = (pixel_baselines(training, images.manifest[labelled], labels, num_resamples=bootstrap_resamples,
                                        seed=bootstrap_seed) if baselines and training is not None else None)
    metrics = compute_metrics(labels, raw, views=views, components=components, ages=ages,
                              num_resamples=bootstrap_resamples, seed=bootstrap_seed)
    summary = {
        "model": str(model_path),
        "method": model.config.method,
        "detector": model.detector.description,
        "device": str(model.device),
        "precision": model.computes_in,
        "split": split,
        "num_images": len(table),
        "num_unlabelled": unlabelled,
        "num_skipped": len(images.skipped),
        "copies_of_training_films": copies_of_training_films(model, images),
        "patients_shared_with_training": (None if training is None
                                          else patients_shared_with_training(images.manifest, training)),
        **metrics.to_dict(),
        "baselines": None if baseline_results is None else baseline_results.metrics,
    }
    intervals = None
    if model.calibration is not None and labelled.any():
        intervals = bootstrap_intervals(labels, raw, model.calibration.threshold, seed=bootstrap_seed,
                                        num_resamples=bootstrap_resamples)
        summary["threshold"] = model.calibration.threshold
        summary["operating_point"] = model.calibration.summary()
        summary["sensitivity_at_threshold"] = intervals.sensitivity.estimate
        summary["specificity_at_threshold"] = intervals.specificity.estimate
        summary["bootstrap_95ci"] = intervals.to_dict()
    metrics_path = out_dir / "metrics.json"
    atomic_write_text(metrics_path, json.dumps(summary, indent=2))
    roc_path = plot_evaluation_roc(model.detector.description, labels, raw, views, metrics, split,
                                   out_dir / "roc.png", None if baseline_results is None else baseline_results.scores)
    grid_path = plot_film_groups(model, images, table["score_raw"].to_numpy(), scored, out_dir / "films.png")
    logger.info("evaluated %d films on split %s: AUC %s", len(table), split,
                "n/a" if metrics.auc is None else f"{metrics.auc:.3f}")
    return EvaluationOutcome(metrics, split, metrics_path, roc_path, grid_path, scores_path, intervals)


@dataclass
class CalibrationOutcome:
    """What :func:`calibrate_job` stored in the checkpoint."""

    calibration: Calibration
    checkpoint: Path
    split: str
    num_normal: int
    num_abnormal: int


def calibrate_job(
    model_path: str | Path,
    data: list[str | Path],
    *,
    split: str = "val",
    target_specificity: float | None = None,
    target_sensitivity: float | None = None,
    out_path: str | Path | None = None,
    on_bad_file: OnBadFile = "error",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> CalibrationOutcome:
    """Refit a checkpoint's operating point on labelled validation films and store it.

    The normal films give the percentiles and the ``target_specificity`` threshold (default:
    the config's); with abnormal films and a ``target_sensitivity``, the threshold flags at
    least that fraction of them instead (see :func:`cxr_anomaly.calibration.fit_calibration`).
    Everything else in the checkpoint is kept; it is rewritten atomically at ``out_path``
    (default: in place).

    Raises:
        NoNormalImagesError: the chosen rows hold fewer than 2 normal films.
    """
    model = load_checkpoint(model_path)
    chosen = choose_evaluation_rows(load_inputs(data), split)
    manifest, split = chosen.manifest, chosen.split
    images = load_images(manifest[manifest["label"].notna()], model.config.data, on_bad_file=on_bad_file,
                         cache_dir=cache_dir, progress=progress)
    labels = images.manifest["label"].to_numpy().astype(int)
    if int((labels == 0).sum()) < 2:
        raise NoNormalImagesError(f"{', '.join(map(str, data))}: calibration needs at least 2 normal "
                                  f"(label 0) films in split {split!r}, found {int((labels == 0).sum())}")
    scored = model.score_films(images.pixels, keep_maps=True)
    raw = scored.raw
    calibration = fit_calibration(
        raw[labels == 0],
        target_specificity if target_specificity is not None else model.config.score.target_specificity,
        abnormal_raw_scores=raw[labels == 1],
        target_sensitivity=target_sensitivity,
    ).with_map_range(scored.anomaly_maps[labels == 0])
    payload = read_checkpoint_payload(model_path)
    payload["calibration"] = calibration.to_dict()
    payload.setdefault("training", {})["calibration_source"] = (
        f"recalibrated on split {split!r} of {', '.join(map(str, data))}")
    destination = Path(out_path) if out_path is not None else Path(model_path)
    atomic_torch_save(payload, destination)
    logger.info("stored operating point %s (threshold %.4g) in %s", calibration.operating_point,
                calibration.threshold, destination)
    return CalibrationOutcome(calibration, destination, split, int((labels == 0).sum()), int((labels == 1).sum()))
