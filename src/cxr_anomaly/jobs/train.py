"""``cxr-anomaly train``: fit a detector on the normal films of a data set and write its checkpoint."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .. import distributed
from ..checkpoint import save_checkpoint
from ..config import Config, config_to_dict
from ..data.copies import film_signatures
from ..data.dataset import OnBadFile, SkippedFile, load_images
from ..data.manifest import load_inputs
from ..data.selection import report_skipped, select_training_rows, warn_on_patient_overlap
from ..files import atomic_write_text
from ..inference import resolve_device
from ..models.registry import family_of, fit_detector
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
    device = resolve_device(config.train.device)
    result = fit_detector(config, train_images.pixels, device=device, progress=progress, run_dir=out_dir, resume=resume)
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
    checkpoint = save_checkpoint(
        checkpoint_path,
        result.detector,
        config,
        calibration=calibration,
        training=record,
        training_signatures=film_signatures(train_images.pixels),
    )
    # Written atomically too, so that a run killed at any moment leaves no truncated file.
    atomic_write_text(out_dir / "config.json", json.dumps(config_to_dict(config), indent=2))
    atomic_write_text(out_dir / "training_log.json", json.dumps(record, indent=2))
    return TrainOutcome(checkpoint, len(train_images.pixels), len(calibration_images.pixels), skipped)
