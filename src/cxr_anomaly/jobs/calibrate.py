"""``cxr-anomaly calibrate``: refit a checkpoint's operating point on chosen films."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..calibration import Calibration
from ..checkpoint import load_checkpoint
from ..data.dataset import OnBadFile, load_images
from ..data.manifest import load_inputs
from ..data.selection import choose_evaluation_rows
from ..errors import NoNormalImagesError
from ..files import atomic_torch_save, read_checkpoint_payload
from ..scoring import fit_calibration

logger = logging.getLogger(__name__)


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
    images = load_images(
        manifest[manifest["label"].notna()],
        model.config.data,
        on_bad_file=on_bad_file,
        cache_dir=cache_dir,
        progress=progress,
    )
    labels = images.manifest["label"].to_numpy().astype(int)
    if int((labels == 0).sum()) < 2:
        raise NoNormalImagesError(
            f"{', '.join(map(str, data))}: calibration needs at least 2 normal "
            f"(label 0) films in split {split!r}, found {int((labels == 0).sum())}"
        )
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
        f"recalibrated on split {split!r} of {', '.join(map(str, data))}"
    )
    destination = Path(out_path) if out_path is not None else Path(model_path)
    atomic_torch_save(payload, destination)
    logger.info(
        "stored operating point %s (threshold %.4g) in %s",
        calibration.operating_point,
        calibration.threshold,
        destination,
    )
    return CalibrationOutcome(calibration, destination, split, int((labels == 0).sum()), int((labels == 1).sum()))
