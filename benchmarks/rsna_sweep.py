"""Issue 33's sweep: settings of the features detector judged on films radiologists labelled.

Each setting is fitted on the training normals of ``rsna_normal224`` (the 4,500 that ``train``
keeps after holding out its calibration films) and scored on the validation films that choose
(the ``val`` half of ``rsna_dev256``, both tasks; NIH1000's ``val`` split; the ``val`` half of
``nih_pneumonia256``) and on the matching test films that report. The rule (docs/results.md,
"Choosing on clean labels"): the setting with the largest *worst* of the four within-view AUCs of
``rsna_dev256`` val (lung opacity and any abnormality, within PA and within AP) wins, provided the
worst within-view AUC of the two NIH validation sets stays at or above :data:`NIH_FLOOR`. Test
columns are printed beside, never used.

Every score a fit gives is a row: the raw score and each component; the pixel baselines (PCA(5)
and 5-NN at 64 px) and the view alone are rows too. Each setting's scores and metrics go to
``OUT/NAME/`` (``scores.npz``, ``result.json``); a rerun skips settings already there, so a
killed sweep continues where it stopped, and ``--table`` alone prints what is there.

    python -m benchmarks.rsna_sweep --out runs/sweep --settings default-frozen trunk16
    python -m benchmarks.rsna_sweep --out runs/sweep --model default=runs/demo/run/model.pt
    python -m benchmarks.rsna_sweep --out runs/sweep --device cuda --settings all   # a lent GPU

Data from ``$CXR_ANOMALY_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_anomaly.baselines import BASELINE_IMAGE_SIZE, named_baseline_scores
from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.config import Config, DataConfig, preset_config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.data.rsna_dev import TASKS, validation_and_test_halves
from cxr_anomaly.data.selection import read_label_column, select_training_rows
from cxr_anomaly.data.splits import split_patients_in_halves
from cxr_anomaly.evaluation import compute_metrics
from cxr_anomaly.files import atomic_write_text
from cxr_anomaly.inference import resolve_device
from cxr_anomaly.models.features import fitting
from cxr_anomaly.models.registry import fit_detector
from cxr_anomaly.scoring import score_films

logger = logging.getLogger(__name__)

DATA_ROOT = Path(os.environ.get("CXR_ANOMALY_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
VIEWS = ("PA", "AP")
# today's worst NIH validation view (0.626, docs/results.md#fine-tuning-the-backbone) less 0.02
NIH_FLOOR = 0.606
FROZEN = {"finetune_epochs": 0}
NO_NIH_PREPROCESSING = {"intensity": "none", "border_crop": 0.0, "detail_size": 0}

# name -> {config section: {key: value}} on top of the default configuration
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    # the default before the sweep: the whole backbone fine-tuned on every normal
    "whole-backbone": {"features": {"finetune_trunk_stride": 0, "finetune_films": 0}},
    "default-frozen": {"features": FROZEN},
    "trunk16": {"features": {"finetune_trunk_stride": 16}},
    "trunk8": {"features": {"finetune_trunk_stride": 8}},
    "trunk16-1epoch": {"features": {"finetune_trunk_stride": 16, "finetune_epochs": 1}},
    "trunk16-1epoch-lr1e-4": {
        "features": {"finetune_trunk_stride": 16, "finetune_epochs": 1, "finetune_learning_rate": 1e-4}
    },
    "trunk16-4epochs": {"features": {"finetune_trunk_stride": 16, "finetune_epochs": 4}},
    "trunk16-1000films": {"features": {"finetune_trunk_stride": 16, "finetune_films": 1000}},
    "trunk16-2000films-1epoch": {
        "features": {"finetune_trunk_stride": 16, "finetune_films": 2000, "finetune_epochs": 1}
    },
    "trunk16-nojitter": {"features": {"finetune_trunk_stride": 16, "finetune_map_jitter": 0.0}},
    "frozen-plain": {"features": FROZEN, "data": NO_NIH_PREPROCESSING},
    "frozen-equalize": {"features": FROZEN, "data": {**NO_NIH_PREPROCESSING, "intensity": "equalize"}},
    "frozen-equalize-crop10": {
        "features": FROZEN,
        "data": {**NO_NIH_PREPROCESSING, "intensity": "equalize", "border_crop": 0.1},
    },
    "frozen-equalize-crop10-detail64": {
        "features": FROZEN,
        "data": {"intensity": "equalize", "border_crop": 0.1, "detail_size": 64},
    },
    "frozen-crop25": {"features": FROZEN, "data": {"border_crop": 0.25}},
    "frozen-crop30": {"features": FROZEN, "data": {"border_crop": 0.3}},
    "frozen-detail48": {"features": FROZEN, "data": {"detail_size": 48}},
    "frozen-detail96": {"features": FROZEN, "data": {"detail_size": 96}},
    "frozen-256": {"features": FROZEN, "data": {"image_size": 256, "detail_size": 0}},
    "frozen-320": {"features": FROZEN, "data": {"image_size": 320, "detail_size": 0}},
    "frozen-lite1": {"features": {**FROZEN, "backbone": "efficientnet_lite1"}},
    "frozen-lite2": {"features": {**FROZEN, "backbone": "efficientnet_lite2"}},
    # the paper's model (U-Net autoencoder + discriminator + encoder) at its preset: hours on a CPU
    "paper-tang2019": {"method": "tang2019"},
}


@dataclass
class Collection:
    """Films scored by every setting: which of them choose (``val``) and which report (``test``)."""

    name: str
    manifest: pd.DataFrame
    tasks: tuple[tuple[str, str], ...]  # (task name, label column)


def collections(data_root: Path) -> list[Collection]:
    """The validation and test parts of rsna_dev256, NIH1000 and nih_pneumonia256."""
    found = []
    rsna = validation_and_test_halves(load_inputs(data_root / "rsna_dev256" / "manifest.csv"))
    nih = load_inputs(data_root / "nih1000" / "manifest.csv")
    pneumonia = split_patients_in_halves(load_inputs(data_root / "nih_pneumonia256" / "manifest.csv"), seed=0)
    rsna_tasks = tuple((task.name, task.label_column) for task in TASKS)
    for part in ("val", "test"):
        found.append(Collection(f"rsna_dev256 {part}", rsna[rsna["split"] == part], rsna_tasks))
        found.append(Collection(f"nih1000 {part}", nih[nih["split"] == part], (("abnormal", "label"),)))
        found.append(
            Collection(f"nih_pneumonia256 {part}", pneumonia[pneumonia["split"] == part], (("pneumonia", "label"),))
        )
    return found


def setting_config(name: str, device: str) -> Config:
    """The preset's configuration (``method``: another family's preset) with the setting's changes,
    fitted and scored in fp32 on a CPU."""
    changes = dict(SETTINGS[name])
    preset = str(changes.pop("method", "default"))
    precision = "fp32" if device == "cpu" else "auto"
    config = with_overrides(preset_config(preset), "train", device=device, precision=precision)
    for section, values in changes.items():
        config = with_overrides(config, section, **values)
    return config


def auc_rows(scores: dict[str, np.ndarray], collection: Collection) -> dict[str, float | None]:
    """``collection|task|view`` -> AUC of one score, overall (``all``) and within each view."""
    row: dict[str, float | None] = {}
    for task, column in collection.tasks:
        films = read_label_column(collection.manifest, column, collection.name)
        known = films["label"].notna().to_numpy()
        metrics = compute_metrics(
            films["label"].to_numpy()[known].astype(int),
            scores[collection.name][known],
            views=films["view"].to_numpy()[known],
            num_resamples=0,
        )
        row[f"{collection.name}|{task}|all"] = metrics.auc
        for view in VIEWS:
            row[f"{collection.name}|{task}|{view}"] = metrics.auc_per_view.get(view)
    return row


def judged(row: dict[str, float | None], part: str) -> dict[str, float]:
    """The rule's two figures for one part (``val`` or ``test``): the worst RSNA view and the worst NIH view."""
    rsna = [value for key, value in row.items() if key.startswith(f"rsna_dev256 {part}|") and not key.endswith("|all")]
    nih = [
        value
        for key, value in row.items()
        if key.startswith((f"nih1000 {part}|", f"nih_pneumonia256 {part}|")) and not key.endswith("|all")
    ]
    return {
        f"rsna worst view {part}": min(v for v in rsna if v is not None),
        f"nih worst view {part}": min(v for v in nih if v is not None),
    }


class TrunkMapsMemo:
    """Settings that differ only after the frozen trunk (fine-tuning length, learning rate, jitter)
    share its maps: the sweep wraps :func:`fitting.trunk_pass` with this memo of the last call."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.maps: dict[int, torch.Tensor] = {}
        self.compute = fitting.trunk_pass

    def __call__(
        self, detector: Any, train_pixels: np.ndarray, stride: int, device: Any, precision: str, progress: bool
    ) -> dict[int, torch.Tensor]:
        settings = detector.config.features
        key = (
            hashlib.sha1(train_pixels.tobytes()).hexdigest(),
            detector.config.data,
            settings.backbone,
            settings.pooled_strides,
            settings.patch_strides,
            stride,
            str(device),
            precision,
        )
        if key != self.key:
            self.key, self.maps = None, {}  # free the old maps before computing the new ones
            self.maps = self.compute(detector, train_pixels, stride, device, precision, progress)
            self.key = key
        return self.maps


def score_setting(
    config: Config, model_path: Path | None, sets: list[Collection], data_root: Path, normals: int | None = None
) -> dict[str, Any]:
    """Fit the setting on the training normals (the first ``normals`` of them when given) or load
    ``model_path``, and score every collection; scores by score name."""
    started = time.perf_counter()
    if model_path is not None:
        model = load_checkpoint(model_path)
        detector, config, fit_seconds = model.detector, model.config, 0.0
    else:
        manifest = load_inputs(data_root / "rsna_normal224" / "manifest.csv")
        chosen = select_training_rows(manifest, config, "rsna_normal224")
        pixels = load_images(chosen.train.iloc[:normals], config.data, workers=2).pixels
        fit = fit_detector(config, pixels, device=resolve_device(config.train.device))
        detector, fit_seconds = fit.detector, float(fit.record.get("seconds", 0.0))
    scores: dict[str, dict[str, np.ndarray]] = {}
    for collection in sets:
        pixels = load_images(collection.manifest, config.data, workers=2).pixels
        result = score_films(detector, pixels, precision=config.train.precision)
        for score_name, values in {"raw": result.raw, **result.components}.items():
            scores.setdefault(score_name, {})[collection.name] = np.asarray(values, dtype=np.float64)
    return {
        "scores": scores,
        "fit_seconds": fit_seconds,
        "seconds": time.perf_counter() - started,
        "description": detector.description,
    }


def reference_rows(sets: list[Collection], data_root: Path) -> dict[str, dict[str, np.ndarray]]:
    """The pixel baselines (fitted on the same training normals) and the view alone, per collection."""
    manifest = load_inputs(data_root / "rsna_normal224" / "manifest.csv")
    chosen = select_training_rows(manifest, preset_config("default"), "rsna_normal224")
    config = DataConfig(image_size=BASELINE_IMAGE_SIZE)
    normals = load_images(chosen.train, config, workers=2).pixels
    films = {collection.name: load_images(collection.manifest, config, workers=2).pixels for collection in sets}
    rows: dict[str, dict[str, np.ndarray]] = {}
    for collection_name, named in named_baseline_scores(normals, films).items():
        for score_name, values in named.items():
            rows.setdefault(score_name, {})[collection_name] = np.asarray(values, dtype=np.float64)
    rows["view only (AP = 1)"] = {
        collection.name: (collection.manifest["view"].astype(str) == "AP").to_numpy(dtype=np.float64)
        for collection in sets
    }
    return rows


def write_setting(folder: Path, scored: dict[str, Any], sets: list[Collection]) -> dict[str, Any]:
    """Write one setting's scores and AUC rows; return the result written."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "scores.npz",
        **{f"{score}|{name}": values for score, by_set in scored["scores"].items() for name, values in by_set.items()},
    )
    rows = {}
    for score_name, by_set in scored["scores"].items():
        row: dict[str, float | None] = {}
        for collection in sets:
            row.update(auc_rows(by_set, collection))
        rows[score_name] = {**row, **judged(row, "val"), **judged(row, "test")}
    result = {key: value for key, value in scored.items() if key != "scores"} | {"rows": rows}
    atomic_write_text(folder / "result.json", json.dumps(result, indent=2))
    return result


def table(out_dir: Path, scores: tuple[str, ...] = ()) -> str:
    """Markdown of every finished setting's rows (only the score names in ``scores`` when given;
    the reference rows always): the rule's figures on val, then test, then each view."""
    lines = [
        "| setting | score | RSNA worst view val | NIH worst view val | opacity PA / AP val | any PA / AP val "
        "| RSNA worst view test | NIH worst view test | opacity all / PA / AP test | any all / PA / AP test | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(row: dict[str, Any], *keys: str) -> str:
        return " / ".join("-" if row.get(key) is None else f"{row[key]:.3f}" for key in keys)

    for path in sorted(out_dir.glob("*/result.json")):
        result = json.loads(path.read_text())
        for score_name, row in result["rows"].items():
            if scores and score_name not in scores and path.parent.name != "references":
                continue
            lines.append(
                f"| {path.parent.name} | {score_name} | {cell(row, 'rsna worst view val')} | {cell(row, 'nih worst view val')} "
                f"| {cell(row, 'rsna_dev256 val|lung_opacity|PA', 'rsna_dev256 val|lung_opacity|AP')} "
                f"| {cell(row, 'rsna_dev256 val|any_abnormality|PA', 'rsna_dev256 val|any_abnormality|AP')} "
                f"| {cell(row, 'rsna worst view test')} | {cell(row, 'nih worst view test')} "
                f"| {cell(row, *(f'rsna_dev256 test|lung_opacity|{v}' for v in ('all', 'PA', 'AP')))} "
                f"| {cell(row, *(f'rsna_dev256 test|any_abnormality|{v}' for v in ('all', 'PA', 'AP')))} "
                f"| {result.get('fit_seconds', 0):.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Fit and score the named settings (and checkpoints), then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the sweep's results")
    parser.add_argument("--settings", nargs="*", default=[], help=f"'all' or names of {sorted(SETTINGS)}")
    parser.add_argument(
        "--model", nargs="*", default=[], metavar="NAME=CKPT", help="fitted checkpoints to score as rows"
    )
    parser.add_argument("--references", action="store_true", help="score the pixel baselines and the view alone")
    parser.add_argument("--device", default="cpu", help="cpu (fp32) or cuda (auto precision)")
    parser.add_argument("--normals", type=int, default=None, help="fit on the first N training normals only")
    parser.add_argument("--data", type=Path, default=DATA_ROOT)
    parser.add_argument("--table", action="store_true", help="only print the table of what is there")
    parser.add_argument("--scores", nargs="*", default=[], help="table rows of these scores only (e.g. raw)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.table:
        sets = collections(args.data)
        names = sorted(SETTINGS) if args.settings == ["all"] else args.settings
        unknown = [name for name in names if name not in SETTINGS]
        if unknown:
            parser.error(f"unknown settings {unknown}; known: {sorted(SETTINGS)}")
        fitting.trunk_pass = TrunkMapsMemo()  # type: ignore[assignment]
        jobs = [(name, setting_config(name, args.device), None) for name in names]
        for text in args.model:
            name, _, path = text.partition("=")
            jobs.append((name, preset_config("default"), Path(path)))
        for name, config, model_path in jobs:
            if (args.out / name / "result.json").is_file():
                logger.info("%s: already scored, skipped", name)
                continue
            logger.info("%s: fitting and scoring", name)
            write_setting(args.out / name, score_setting(config, model_path, sets, args.data, args.normals), sets)
        if args.references and not (args.out / "references" / "result.json").is_file():
            write_setting(
                args.out / "references", {"scores": reference_rows(sets, args.data), "fit_seconds": 0.0}, sets
            )
    print(table(args.out, tuple(args.scores)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
