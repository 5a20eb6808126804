"""``cxr-anomaly train``: fit a detector on the normal films of a data set and write its checkpoint,
or add a data set's normal films to a fitted detector (``train --resume-from``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import Config, config_to_dict, with_overrides
from ..data.copies import film_signatures, matching_signatures
from ..data.dataset import LoadedImages, OnBadFile, SkippedFile, load_images
from ..data.manifest import load_inputs
from ..data.selection import TrainingData, report_skipped, select_training_rows, warn_on_patient_overlap
from ..errors import ConfigError
from ..files import atomic_write_text
from ..inference import resolve_device, resolve_precision
from ..models.base import AnomalyDetector
from ..models.family import REFIT_RECORD_KEYS
from ..models.registry import add_normals, family_of, fit_detector, refit_of
from ..scope import training_age_record
from ..scoring import fit_calibration, score_films

logger = logging.getLogger(__name__)


CHECKPOINT_NAME = "model.pt"


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
        outcome = _train_job(
            data,
            out_dir,
            config,
            on_bad_file=on_bad_file,
            cache_dir=cache_dir,
            progress=progress,
            resume=resume,
            context=context,
        )
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
    films = _load_training_films(
        data, out_dir, config, on_bad_file=on_bad_file, cache_dir=cache_dir, progress=progress, context=context
    )
    device = resolve_device(config.train.device)
    result = fit_detector(config, films.train.pixels, device=device, progress=progress, run_dir=out_dir, resume=resume)
    outcome = TrainOutcome(
        out_dir / CHECKPOINT_NAME, len(films.train.pixels), len(films.calibration.pixels), films.skipped
    )
    if not context.is_main:  # rank 0 alone calibrates and writes
        return outcome
    record = {**result.record, **_run_record(films, data)}
    signatures = film_signatures(films.train.pixels)
    _calibrate_and_write(out_dir, result.detector, config, films.calibration.pixels, device, record, signatures)
    return outcome


@dataclass
class TrainingFilms:
    """The rows a training run chose and their decoded films."""

    chosen: TrainingData
    train: LoadedImages
    calibration: LoadedImages
    skipped: list[SkippedFile]


def _load_training_films(
    data: list[str | Path],
    out_dir: Path,
    config: Config,
    *,
    on_bad_file: OnBadFile,
    cache_dir: str | Path | None,
    progress: bool,
    context: distributed.DistributedContext,
) -> TrainingFilms:
    """The normal training and calibration films of ``data`` (warning about patients in two
    splits), with unreadable ones listed in ``out_dir/skipped_files.csv``."""
    manifest = load_inputs(data)
    origin = ", ".join(str(source) for source in data)
    warn_on_patient_overlap(manifest)
    chosen = select_training_rows(manifest, config, origin)
    if not context.is_main:
        distributed.barrier(context)  # rank 0 fills the preprocessing cache first
    train_images = load_images(
        chosen.train, config.data, on_bad_file=on_bad_file, cache_dir=cache_dir, progress=progress
    )
    calibration_images = load_images(
        chosen.calibration, config.data, on_bad_file=on_bad_file, cache_dir=cache_dir, progress=progress
    )
    if context.is_main:
        distributed.barrier(context)
    skipped = train_images.skipped + calibration_images.skipped
    if context.is_main:
        report_skipped(skipped, out_dir / "skipped_files.csv")
    logger.info(
        "training on %d normal images (ignored: %s); calibrating on %d (%s)",
        len(train_images.pixels),
        chosen.ignored_counts,
        len(calibration_images.pixels),
        chosen.calibration_source,
    )
    return TrainingFilms(chosen, train_images, calibration_images, skipped)


def _run_record(films: TrainingFilms, data: list[str | Path]) -> dict[str, Any]:
    """What the training record says about the films of ``data`` a run read."""
    return {
        "num_calibration_images": len(films.calibration.pixels),
        "calibration_source": films.chosen.calibration_source,
        "ignored_rows": films.chosen.ignored_counts,
        "skipped_files": len(films.skipped),
        "training_ages": training_age_record(films.chosen.train),
        "data": [str(Path(source).resolve()) for source in data],  # absolute: evaluate reads it from anywhere
    }


def _calibrate_and_write(
    out_dir: Path,
    detector: AnomalyDetector,
    config: Config,
    calibration_pixels: np.ndarray,
    device: torch.device,
    record: dict[str, Any],
    training_signatures: np.ndarray | None,
) -> Path:
    """Calibrate a fitted detector on normal films and write ``out_dir/model.pt``, ``config.json``
    and ``training_log.json``."""
    calibration_scores = score_films(detector, calibration_pixels, device=device, keep_maps=True)
    calibration = fit_calibration(calibration_scores.raw, config.score.target_specificity)
    calibration = calibration.with_map_range(calibration_scores.anomaly_maps)
    checkpoint = save_checkpoint(
        out_dir / CHECKPOINT_NAME,
        detector,
        config,
        calibration=calibration,
        training=record,
        training_signatures=training_signatures,
    )
    # Written atomically too, so that a run killed at any moment leaves no truncated file.
    atomic_write_text(out_dir / "config.json", json.dumps(config_to_dict(config), indent=2))
    atomic_write_text(out_dir / "training_log.json", json.dumps(record, indent=2))
    return checkpoint


@dataclass
class RefitOutcome:
    """What :func:`add_normals_job` produced."""

    checkpoint: Path
    films_added: int
    previous_num_train_images: int
    num_calibration_images: int
    seconds: float  # the refit's, without loading films or calibrating
    skipped: list[SkippedFile]


def add_normals_job(
    model_path: str | Path,
    data: list[str | Path],
    out_dir: str | Path,
    *,
    device: str | None = None,
    precision: str | None = None,
    on_bad_file: OnBadFile = "error",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> RefitOutcome:
    """Add the normal training films of ``data`` to the fitted model ``model_path`` without
    fitting it from scratch (its family's ``add_normals``), calibrate on ``data``'s calibration
    films as :func:`train_job` does, and write ``out_dir/model.pt``.

    The stored configuration is kept; ``device`` and ``precision`` (``train.device``,
    ``train.precision``) may say where and how the refit computes. The record is the model's,
    updated for the union of its normals and these, with the refit appended to ``refits``.

    Raises:
        RefitError: the model's family cannot add normals, or the model predates it.
        ConfigError: started by torchrun with several processes.
    """
    if distributed.launched_by_torchrun():
        raise ConfigError("train --resume-from adds films in one process: start it without torchrun")
    model = load_checkpoint(model_path, device="cpu")
    config = model.config
    overrides = {key: value for key, value in (("device", device), ("precision", precision)) if value is not None}
    if overrides:
        config = with_overrides(config, "train", **overrides)
    refit_of(config.method)  # before reading films: a family that cannot refit says so at once
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    films = _load_training_films(
        data,
        out_dir,
        config,
        on_bad_file=on_bad_file,
        cache_dir=cache_dir,
        progress=progress,
        context=distributed.DistributedContext(),
    )
    torch_device = resolve_device(config.train.device)
    _warn_on_mixed_precision(model.training, resolve_precision(config.train.precision, torch_device))
    signatures = _union_signatures(model.training_signatures, film_signatures(films.train.pixels))
    result = add_normals(model.detector, config, films.train.pixels, device=torch_device, progress=progress)
    facts = dict(result.record)
    refit = {key: facts.pop(key) for key in REFIT_RECORD_KEYS}
    run = _run_record(films, data)
    record = {
        **model.training,
        **facts,
        **run,
        "training_ages": _summed_ages(model.training.get("training_ages"), run["training_ages"]),
        "data": list(dict.fromkeys([*(model.training.get("data") or []), *run["data"]])),
        "refits": [*(model.training.get("refits") or []), {**refit, "data": run["data"]}],
    }
    checkpoint = _calibrate_and_write(
        out_dir, result.detector, config, films.calibration.pixels, torch_device, record, signatures
    )
    return RefitOutcome(
        checkpoint,
        int(refit["films_added"]),
        int(refit["previous_num_train_images"]),
        len(films.calibration.pixels),
        float(refit["seconds"]),
        films.skipped,
    )


def _warn_on_mixed_precision(previous_record: dict[str, Any], precision: str) -> None:
    """Warn when the added films' features are computed in another precision than the model's were."""
    previous = previous_record.get("precision")
    if previous is not None and previous != precision:
        logger.warning(
            "the model was fitted in %s and the films are added in %s: the refitted model reads features "
            "of both (pass --precision %s for one)",
            previous,
            precision,
            previous,
        )


def _union_signatures(previous: np.ndarray | None, added: np.ndarray) -> np.ndarray | None:
    """The signatures of every training film after a refit, warning about added films that copy a
    film the model already trained on (they would count twice); None when the model kept none."""
    if previous is None:
        logger.warning(
            "the model holds no signatures of its training films: the refitted model holds none either, "
            "so evaluate cannot look for copies of training films among its films"
        )
        return None
    copies = matching_signatures(added, previous)
    if copies:
        logger.warning(
            "%d of the %d films added are copies of films the model already trained on (the same film, "
            "perhaps through another pipeline): they count twice",
            len(copies),
            len(added),
        )
    return np.concatenate([previous, added])


def _summed_ages(previous: object, added: dict[str, int]) -> dict[str, int]:
    """The training-age counts of a model's films and of the films added to it."""
    known = previous if isinstance(previous, dict) else {}
    return {key: int(known.get(key, 0)) + value for key, value in added.items()}
