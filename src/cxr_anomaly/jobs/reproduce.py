"""Table 1 and Figure 2 of Tang et al. (ICASSP 2019) on any labelled collection, with baselines.

:func:`reproduce_job` trains and scores every ablation variant (U, U+E, U+D, U+D+E) for every
seed on one patient-disjoint split, fits the pixel baselines (PCA reconstruction error and
k-nearest-neighbour distance, :mod:`cxr_anomaly.baselines`) on the same training normals and
the same preprocessed pixels, and writes:

- ``table.md`` and ``table.csv``: AUC mean ± std over seeds per variant and baseline, average
  precision, AUC per view (when views are known), the AUC of each score component, and the
  validation AUC (which a user may select on; the test AUC must not be selected on);
- ``roc.png``: one ROC curve per variant (first seed) and per baseline;
- ``figure2.png``: training, normal test and abnormal test films, each above its reconstruction;
- ``split.csv``: the manifest with the split used; ``cells/VARIANT-seedN/``: one finished
  (variant, seed) cell each.

A cell is written atomically once finished, with a fingerprint of its configuration and of the
split; a second run with the same settings skips finished cells, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..baselines import DEFAULT_NEIGHBOURS, DEFAULT_PCA_COMPONENTS, fit_and_score_baselines
from ..config import Config, config_to_dict, family_settings, paper_method, with_overrides
from ..data.dataset import OnBadFile, load_images
from ..data.manifest import load_inputs
from ..data.splits import patient_disjoint_split
from ..errors import ConfigError, NoNormalImagesError
from ..evaluation import compute_metrics, plot_roc, reconstruction_grid
from ..files import atomic_write
from ..inference import resolve_device
from ..models.registry import family_of, fit_detector
from ..scoring import ScoreResult, fit_calibration, score_films
from .cells import (
    describe_remaining,
    format_duration,
    mean_std,
    read_finished_cell,
    settings_fingerprint,
    write_cell_result,
)
from .reproduce_table import SCORE_LABELS, render_markdown

logger = logging.getLogger(__name__)

# AUCs of Table 1 of the paper (NIH ChestX-ray14, all views), shown beside ours for reference.
PAPER_TABLE1_AUC: dict[str, float] = {"u": 0.627, "u+e": 0.687, "u+d": 0.737, "u+d+e": 0.841}
COMPONENTS: tuple[str, ...] = ("reconstruction", "adversarial", "latent", "code_distance")
# Every cell is scored both ways: the training does not depend on the score, so the table shows
# what the score choice alone changes, on the same trained networks.
SCORE_METHODS: tuple[str, ...] = ("eq6", "code_knn")
FIGURE_FILMS_PER_ROW = 8


@dataclass(frozen=True)
class ReproduceOptions:
    """What to run and on which split.

    Attributes:
        variants: ablation variants to train, in table order.
        seeds: training seeds; every variant runs once per seed.
        split: ``resplit`` re-draws a patient-disjoint train/val/test split from ``split_seed``
            (the default: the given splits of NIH1000 and Kermany share patients); ``given``
            keeps the data's own ``split`` column.
        split_seed: seed of the patient-disjoint re-split.
        val_fraction: share of films (by patient) put in validation by the re-split.
        test_fraction: share of films (by patient) put in test by the re-split.
        view: keep only films of this view position (e.g. ``PA``); None keeps all.
        pca_components: components of the PCA baseline.
        neighbours: k of the kNN baseline.
        max_train_normals: keep at most this many training normals (seeded draw), for short runs.
    """

    variants: tuple[str, ...] = field(default_factory=lambda: family_settings(paper_method()).variants)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    split: str = "resplit"
    split_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    view: str | None = None
    pca_components: int = DEFAULT_PCA_COMPONENTS
    neighbours: int = DEFAULT_NEIGHBOURS
    max_train_normals: int | None = None

    def __post_init__(self) -> None:
        known = family_settings(paper_method()).variants
        unknown = [variant for variant in self.variants if variant not in known]
        if unknown or not self.variants:
            raise ConfigError(f"variants={list(self.variants)}; expected some of {known}")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants={list(self.variants)} lists a variant twice")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)}; need at least one, each once")
        if self.split not in ("resplit", "given"):
            raise ConfigError(f"split={self.split!r}; expected 'resplit' or 'given'")
        if self.max_train_normals is not None and self.max_train_normals < 2:
            raise ConfigError(f"max_train_normals={self.max_train_normals}; must be >= 2")


@dataclass
class SplitData:
    """Pixels of one split, ready for training and scoring.

    Attributes:
        manifest: every kept row, with the ``split`` column used.
        train_normals: uint8 (N, H, W) normal training films, the only films anything learns from.
        val_pixels: uint8 (V, H, W) labelled validation films; ``val_labels`` (V,) 0/1.
        test_pixels: uint8 (T, H, W) labelled test films; ``test_labels`` (T,) 0/1.
        test_views: view of each test film, or None when views are unknown.
        fingerprint: hash of the paths in each split, to tell whether a finished cell used it.
    """

    manifest: pd.DataFrame
    train_normals: np.ndarray
    val_pixels: np.ndarray
    val_labels: np.ndarray
    test_pixels: np.ndarray
    test_labels: np.ndarray
    test_views: np.ndarray | None
    fingerprint: str


@dataclass
class CellResult:
    """One finished (variant, seed) cell.

    Attributes:
        test: score method (``eq6``, ``code_knn``) -> metrics on the test split (AUC, AP, per
            view, AUC of each component).
        val: the same on the validation split (for model selection; never select on test).
        seconds: training and scoring wall time.
    """

    variant: str
    seed: int
    seconds: float
    test: dict[str, dict[str, object]]
    val: dict[str, dict[str, object]]
    final_reconstruction_loss: float
    fingerprint: str


@dataclass
class ReproduceOutcome:
    """What :func:`reproduce_job` wrote and measured."""

    table: pd.DataFrame
    table_md: Path
    table_csv: Path
    roc_path: Path
    figure2_path: Path | None
    cells_run: list[str] = field(default_factory=list)
    cells_skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def prepare_split(manifest: pd.DataFrame, pixels: np.ndarray, options: ReproduceOptions) -> SplitData:
    """Apply the view filter and the split, and gather pixels per split.

    Args:
        manifest: rows of loaded films; ``pixels`` (N, H, W) are in the same order.
        pixels: uint8 films.
        options: view, split strategy and fractions.

    Raises:
        NoNormalImagesError: no normal training film, or a split lacks one of the classes.
    """
    manifest = manifest.reset_index(drop=True)
    keep = manifest["label"].notna().to_numpy()
    if options.view is not None:
        # not in place: pandas may hand out read-only arrays
        keep = keep & (manifest["view"].astype("string").str.upper() == options.view.upper()).fillna(False).to_numpy()
    manifest, pixels = manifest[keep].reset_index(drop=True), pixels[keep]
    if options.split == "resplit":
        manifest = patient_disjoint_split(
            manifest, seed=options.split_seed, val_fraction=options.val_fraction, test_fraction=options.test_fraction
        )
    split = manifest["split"].astype("string").to_numpy()
    labels = manifest["label"].to_numpy().astype(int)
    train_mask = (split == "train") & (labels == 0)
    if options.max_train_normals is not None and train_mask.sum() > options.max_train_normals:
        chosen = np.random.default_rng(options.split_seed).choice(
            np.flatnonzero(train_mask), size=options.max_train_normals, replace=False
        )
        train_mask = np.zeros_like(train_mask)
        train_mask[chosen] = True
    val_mask, test_mask = split == "val", split == "test"
    for name, mask in (("validation", val_mask), ("test", test_mask)):
        if len(np.unique(labels[mask])) < 2:
            raise NoNormalImagesError(
                f"the {name} split holds {int((labels[mask] == 0).sum())} normal and "
                f"{int((labels[mask] == 1).sum())} abnormal films; AUC needs both"
            )
    if train_mask.sum() < 2:
        raise NoNormalImagesError(f"only {int(train_mask.sum())} normal training films")
    paths = manifest["path"].astype(str).to_numpy()
    digest = hashlib.sha256()
    for name, mask in (("train", train_mask), ("val", val_mask), ("test", test_mask)):
        digest.update(name.encode() + "\n".join(sorted(paths[mask])).encode())
    views = manifest["view"].to_numpy()[test_mask] if manifest["view"].notna().any() else None
    manifest = manifest.assign(
        used_for=np.select([train_mask, val_mask, test_mask], ["train_normal", "val", "test"], "unused")
    )
    return SplitData(
        manifest,
        pixels[train_mask],
        pixels[val_mask],
        labels[val_mask],
        pixels[test_mask],
        labels[test_mask],
        views,
        digest.hexdigest()[:16],
    )


def cell_name(variant: str, seed: int) -> str:
    """Folder name of a (variant, seed) cell."""
    return f"{variant}-seed{seed}"


def cell_fingerprint(config: Config, split: SplitData) -> str:
    """Hash of everything that determines a cell's result (every score method is stored)."""
    values = config_to_dict(config)
    values["score"].pop("method")
    return settings_fingerprint({"config": values, "split": split.fingerprint})


def combine(config: Config, components: dict[str, np.ndarray] | np.lib.npyio.NpzFile, prefix: str = "") -> np.ndarray:
    """The raw score of ``config.score.method`` from stored components; all-NaN ones are absent."""

    def part(name: str) -> np.ndarray | None:
        values = np.asarray(components[prefix + name], dtype=np.float64)
        return None if values.size and np.all(np.isnan(values)) else values

    combine_parts = family_of(config.method).score_from_components
    if combine_parts is None:
        raise ConfigError(f"method={config.method!r} cannot recompute its score from stored components")
    return combine_parts(config, {name: part(name) for name in COMPONENTS})


def _metrics_by_method(
    config: Config, labels: np.ndarray, scores: ScoreResult, views: np.ndarray | None
) -> dict[str, dict[str, object]]:
    """Metrics of each score method, with the AUC of each component."""
    results = {}
    for method in SCORE_METHODS:
        raw = combine(with_overrides(config, "score", method=method), scores.components)
        results[method] = compute_metrics(
            labels, raw, views=views, components=scores.components, num_resamples=0
        ).to_dict()
    return results


def run_cell(config: Config, split: SplitData, cell_dir: Path) -> CellResult:
    """Train one variant with one seed, score validation and test films, and store the cell.

    ``cell_dir`` receives ``scores.npz`` (test and validation scores and components, and films
    with their reconstructions for Figure 2) and, last, ``result.json``, whose presence marks
    the cell finished.
    """
    started = time.perf_counter()
    device = resolve_device(config.train.device)
    fitted = fit_detector(config, split.train_normals, progress=False)
    detector = fitted.detector
    test = score_films(detector, split.test_pixels, device=device, keep_maps=True)
    val = score_films(detector, split.val_pixels, device=device)
    train_shown = split.train_normals[:FIGURE_FILMS_PER_ROW]
    train_reconstructed = score_films(detector, train_shown, device=device, keep_maps=True).reconstructions
    assert test.reconstructions is not None and train_reconstructed is not None  # asked for above
    normal_index = np.flatnonzero(split.test_labels == 0)[:FIGURE_FILMS_PER_ROW]
    abnormal_index = np.flatnonzero(split.test_labels == 1)[:FIGURE_FILMS_PER_ROW]
    arrays = {
        "test_raw": test.raw,
        "val_raw": val.raw,
        **{f"test_{name}": test.components[name] for name in COMPONENTS},
        **{f"val_{name}": val.components[name] for name in COMPONENTS},
        "figure_train": train_shown,
        "figure_train_reconstruction": train_reconstructed,
        "figure_normal": split.test_pixels[normal_index],
        "figure_normal_reconstruction": test.reconstructions[normal_index],
        "figure_abnormal": split.test_pixels[abnormal_index],
        "figure_abnormal_reconstruction": test.reconstructions[abnormal_index],
    }
    # Temporary file, fsync, rename, fsync of the folder: a crash leaves the old file or the new.
    atomic_write(cell_dir / "scores.npz", lambda stream: np.savez(stream, **arrays))  # a stream: no ".npz" added
    result = CellResult(
        variant=config.model.variant,
        seed=config.train.seed,
        seconds=time.perf_counter() - started,
        test=_metrics_by_method(config, split.test_labels, test, split.test_views),
        val=_metrics_by_method(config, split.val_labels, val, None),
        final_reconstruction_loss=fitted.record["history"][-1]["reconstruction"],
        fingerprint=cell_fingerprint(config, split),
    )
    write_cell_result(cell_dir, result.__dict__)  # last: its presence marks the cell finished
    return result


def load_finished_cell(cell_dir: Path, fingerprint: str) -> CellResult | None:
    """The stored cell when it is finished and was made with the same settings, else None."""
    values = read_finished_cell(cell_dir, fingerprint, ("scores.npz",))
    if values is None:
        return None
    try:
        return CellResult(**values)
    except TypeError as error:
        logger.warning("%s is unreadable (%s); running the cell again", cell_dir / "result.json", error)
        return None


def seed_ensemble(
    config: Config, split: SplitData, out_dir: Path, variant: str, seeds: Sequence[int], method: str
) -> dict[str, dict[str, object]]:
    """Metrics of the mean over seeds of each seed's score, standardised on validation normals.

    Each seed's raw scores are turned into robust z-scores against the validation *normal*
    films only (:func:`~cxr_anomaly.scoring.fit_calibration`), so the ensemble stays one-class.
    """
    method_config = with_overrides(config, "score", method=method)
    standardised: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    for seed in seeds:
        stored = np.load(out_dir / "cells" / cell_name(variant, seed) / "scores.npz")
        raws = {part: combine(method_config, stored, prefix=f"{part}_") for part in ("val", "test")}
        calibration = fit_calibration(raws["val"][split.val_labels == 0], config.score.target_specificity)
        for part, raw in raws.items():
            standardised[part].append(calibration.standardise(raw))
    return {
        "test": compute_metrics(
            split.test_labels, np.mean(standardised["test"], axis=0), views=split.test_views
        ).to_dict(),
        "val": compute_metrics(split.val_labels, np.mean(standardised["val"], axis=0)).to_dict(),
    }


def summarise(
    cells: dict[str, list[CellResult]],
    baselines: dict[str, dict[str, dict[str, object]]],
    views: Sequence[str],
    ensembles: dict[tuple[str, str], dict[str, dict[str, object]]] | None = None,
) -> pd.DataFrame:
    """One row per variant and score (mean and std over seeds), per seed ensemble and per baseline.

    Baselines are deterministic and ensembles are one model each: their std is 0.
    """
    rows = []

    def add(method: str, kind: str, tests: list[dict], vals: list[dict], score: str = "") -> None:
        row: dict[str, object] = {"method": method, "score": score, "kind": kind, "runs": len(tests)}
        for prefix, metrics in (("", tests), ("val_", vals)):
            for key in ("auc", "average_precision"):
                mean, std, _ = mean_std([m.get(key) for m in metrics])  # type: ignore[misc]
                row[f"{prefix}{key}_mean"], row[f"{prefix}{key}_std"] = mean, std
        for view in views:
            mean, std, _ = mean_std([m["auc_per_view"].get(view) for m in tests])  # type: ignore[index]
            row[f"auc_{view}_mean"], row[f"auc_{view}_std"] = mean, std
        for component in COMPONENTS:
            mean, _, _ = mean_std([m["component_auc"].get(component) for m in tests])  # type: ignore[index]
            row[f"auc_{component}_only"] = mean
        row["paper_auc"] = PAPER_TABLE1_AUC.get(method, math.nan) if score == "eq6" else math.nan
        rows.append(row)

    for variant, results in cells.items():
        for method in SCORE_METHODS:
            add(variant, "model", [r.test[method] for r in results], [r.val[method] for r in results], method)
    for (variant, method), metrics in (ensembles or {}).items():
        add(f"{variant} ensemble", "ensemble", [metrics["test"]], [metrics["val"]], method)
    for name, metrics in baselines.items():
        add(name, "baseline", [metrics["test"]], [metrics["val"]])
    return pd.DataFrame(rows)


@dataclass
class CellRuns:
    """The finished cells of one reproduction, by variant, and which were run or reused."""

    cells: dict[str, list[CellResult]]
    run_names: list[str]
    skipped_names: list[str]


@dataclass
class BaselineRuns:
    """The pixel baselines of one reproduction.

    Attributes:
        test_scores: baseline name -> its scores of the test films, shape (N,).
        metrics: baseline name -> ``{"test": metrics, "val": metrics}`` (``baselines.json``).
    """

    test_scores: dict[str, np.ndarray]
    metrics: dict[str, dict[str, dict[str, object]]]


def score_baselines(split: SplitData, config: Config, options: ReproduceOptions, out_dir: Path) -> BaselineRuns:
    """Fit the pixel baselines on the training normals, score both held-out parts, write ``baselines.json``."""
    baseline_scores = fit_and_score_baselines(
        split.train_normals,
        {"val": split.val_pixels, "test": split.test_pixels},
        config.data,
        pca_components=options.pca_components,
        neighbours=options.neighbours,
    )
    metrics: dict[str, dict[str, dict[str, object]]] = {}
    for name in baseline_scores["test"].scores:
        metrics[name] = {
            "test": compute_metrics(
                split.test_labels, baseline_scores["test"].scores[name], views=split.test_views
            ).to_dict(),
            "val": compute_metrics(split.val_labels, baseline_scores["val"].scores[name]).to_dict(),
        }
    (out_dir / "baselines.json").write_text(json.dumps(metrics, indent=2))
    return BaselineRuns(dict(baseline_scores["test"].scores), metrics)


def run_cells(config: Config, split: SplitData, options: ReproduceOptions, out_dir: Path) -> CellRuns:
    """Train and score every (variant, seed) cell, reusing the finished ones with matching settings."""
    plan = [(variant, seed) for variant in options.variants for seed in options.seeds]
    runs = CellRuns({variant: [] for variant in options.variants}, [], [])
    durations: dict[str, list[float]] = {}
    for index, (variant, seed) in enumerate(plan, start=1):
        cell_config = with_overrides(with_overrides(config, "model", variant=variant), "train", seed=seed)
        name = cell_name(variant, seed)
        cell_dir = out_dir / "cells" / name
        finished = load_finished_cell(cell_dir, cell_fingerprint(cell_config, split))
        if finished is not None:
            logger.info("cell %d/%d %s: finished earlier, skipped", index, len(plan), name)
            runs.cells[variant].append(finished)
            runs.skipped_names.append(name)
            continue
        eta = describe_remaining(durations, [remaining for remaining, _ in plan[index - 1 :]])
        logger.info("cell %d/%d %s: training (%s)", index, len(plan), name, eta)
        result = run_cell(cell_config, split, cell_dir)
        durations.setdefault(variant, []).append(result.seconds)
        method = config.score.method
        logger.info(
            "cell %d/%d %s: %s score: test AUC %s, validation AUC %s (%s)",
            index,
            len(plan),
            name,
            method,
            _fmt(result.test[method]["auc"]),
            _fmt(result.val[method]["auc"]),
            format_duration(result.seconds),
        )
        runs.cells[variant].append(result)
        runs.run_names.append(name)
    return runs


def table_header(config: Config, split: SplitData, options: ReproduceOptions) -> str:
    """The sentence above Table 1: the split, its counts and the settings every cell shares."""
    return (
        f"Split {split.fingerprint} ({options.split}, view {options.view or 'all'}): "
        f"{len(split.train_normals)} training normals, validation "
        f"{int((split.val_labels == 0).sum())} N + {int((split.val_labels == 1).sum())} A, test "
        f"{int((split.test_labels == 0).sum())} N + {int((split.test_labels == 1).sum())} A. "
        f"{config.train.epochs} epochs, {config.model.describe()}, "
        f"intensity {config.data.intensity}, default score {SCORE_LABELS[config.score.method]}. "
        f"AUC mean ± sample std over seeds {list(options.seeds)}; each model row is the same "
        f"trained networks scored by eq. 6 or by the code kNN distance; an ensemble row averages "
        f"the seeds' scores, each standardised on the validation normals."
    )


def plot_test_roc(
    config: Config,
    split: SplitData,
    options: ReproduceOptions,
    out_dir: Path,
    baseline_test_scores: dict[str, np.ndarray],
) -> Path:
    """``roc.png``: each variant's first seed under both scores, and each baseline, on the test split."""
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    first_seed = options.seeds[0]
    for variant in options.variants:
        stored = np.load(out_dir / "cells" / cell_name(variant, first_seed) / "scores.npz")
        for method in SCORE_METHODS:
            raw = combine(with_overrides(config, "score", method=method), stored, prefix="test_")
            curves[f"{variant}, {SCORE_LABELS[method]} (seed {first_seed})"] = (split.test_labels, raw)
    for name, scores in baseline_test_scores.items():
        curves[f"{name} (baseline)"] = (split.test_labels, scores)
    return plot_roc(curves, out_dir / "roc.png", title="ROC on the test split")


def plot_figure2(options: ReproduceOptions, out_dir: Path) -> Path:
    """``figure2.png``: films above their reconstructions, from U+D+E (or the last variant), first seed."""
    first_seed = options.seeds[0]
    figure_variant = "u+d+e" if "u+d+e" in options.variants else options.variants[-1]
    stored = np.load(out_dir / "cells" / cell_name(figure_variant, first_seed) / "scores.npz")
    figure_groups = [
        ("training films", stored["figure_train"], stored["figure_train_reconstruction"]),
        ("normal test films", stored["figure_normal"], stored["figure_normal_reconstruction"]),
        ("abnormal test films", stored["figure_abnormal"], stored["figure_abnormal_reconstruction"]),
    ]
    return reconstruction_grid(
        figure_groups,
        out_dir / "figure2.png",
        per_row=max(len(group[1]) for group in figure_groups),
        title=f"{figure_variant}, seed {first_seed}",
    )


def reproduce_job(
    data: list[str | Path],
    out_dir: str | Path,
    config: Config,
    options: ReproduceOptions,
    *,
    on_bad_file: OnBadFile = "error",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ReproduceOutcome:
    """Run the ablation and the baselines on one split and write the table and figures.

    Args:
        data: labelled films (folders, manifests or npz); abnormal films are only scored.
        out_dir: output folder; finished cells already in it are reused when their settings match.
        config: the base configuration; each cell overrides ``model.variant`` and ``train.seed``.
        options: variants, seeds, split and baselines.
        on_bad_file: ``error`` or ``skip`` unreadable files.
        cache_dir: preprocessing cache folder.
        progress: show decoding progress.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_inputs(data)
    images = load_images(manifest, config.data, on_bad_file=on_bad_file, cache_dir=cache_dir, progress=progress)
    split = prepare_split(images.manifest, images.pixels, options)
    split.manifest.to_csv(out_dir / "split.csv", index=False)
    views = (
        sorted({str(v) for v in split.test_views if isinstance(v, str) and v}) if split.test_views is not None else []
    )
    logger.info(
        "split %s: %d training normals; validation %d normal + %d abnormal; test %d normal + %d abnormal",
        split.fingerprint,
        len(split.train_normals),
        int((split.val_labels == 0).sum()),
        int((split.val_labels == 1).sum()),
        int((split.test_labels == 0).sum()),
        int((split.test_labels == 1).sum()),
    )

    baselines = score_baselines(split, config, options, out_dir)
    runs = run_cells(config, split, options, out_dir)

    ensembles = {}
    if len(options.seeds) > 1:
        for variant in options.variants:
            for method in SCORE_METHODS:
                ensembles[(variant, method)] = seed_ensemble(config, split, out_dir, variant, options.seeds, method)
    table = summarise(runs.cells, baselines.metrics, views, ensembles)
    table_csv = out_dir / "table.csv"
    table.to_csv(table_csv, index=False)
    table_md = out_dir / "table.md"
    table_md.write_text(render_markdown(table, views, table_header(config, split, options), options.seeds))

    roc_path = plot_test_roc(config, split, options, out_dir, baselines.test_scores)
    figure2_path = plot_figure2(options, out_dir)
    seconds = time.perf_counter() - started
    logger.info(
        "reproduce finished in %s: %d cells run, %d reused; %s",
        format_duration(seconds),
        len(runs.run_names),
        len(runs.skipped_names),
        table_md,
    )
    return ReproduceOutcome(
        table, table_md, table_csv, roc_path, figure2_path, runs.run_names, runs.skipped_names, seconds
    )


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"
