"""Cross-collection benchmark: fit on one collection's normals, test on several, per view.

:func:`benchmark_job` fits every method row and seed on the normal films of one training
collection and scores several test collections. A method row is a detector family with its
setting, ``FAMILY`` or ``FAMILY:SETTING``: each family's record says which settings it takes
(:class:`~cxr_anomaly.models.family.BenchmarkCells`: a score component, read from one fit, or a
network variant, fitted on its own). Rows that read one fit share a cell: one fit per seed gives
them all.

Films are chosen as the other commands choose them. Training: the normal films of the training
collection (of its ``train`` split when it has one); normal ``val`` films calibrate, else 10% of
the normals are held out by patient (:func:`~cxr_anomaly.data.selection.select_training_rows`).
Testing: the ``test`` split of a test collection when it has one, else every labelled film.

Written into the output folder:

- ``table.csv``: one row per method row, per pixel baseline (PCA reconstruction error and k-NN
  distance at 64 px, :mod:`cxr_anomaly.baselines`, fitted on the same training normals) and for
  the view-only score (AP = 1); per test collection the AUC overall, within each view, the
  view-balanced AUC, adults' AUC within each view (where ages are known) and how well the score
  predicts AP among the normal films: mean and sample std over seeds, each seed's value, and
  the 95% bootstrap interval where a row has one run;
- ``table.md``: the same, one section per test collection, and whether each method beats every
  baseline and the view-only score within every view (the only win that counts: view position
  carries much of the label in these collections);
- ``roc_<name>.png``: ROC curves per test collection, one panel for all films and one per view;
- ``films_<name>_<kind>-seed<N>.png``: per test collection and fitted detector (first seed), the
  highest-scoring normal and abnormal films with their heatmaps, and reconstructions for
  families that reconstruct (the paper's Figure 2 layout);
- ``cells/<kind>-seed<N>/``: one finished fit each (:mod:`cxr_anomaly.jobs.cells`): scores of the
  calibration normals and of each test collection (npz) and, written last, ``result.json`` with
  the settings fingerprint and the metrics. A rerun with the same settings and films reuses
  finished cells; a new row that reads a finished cell's fit needs no refit.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..baselines import DEFAULT_NEIGHBOURS, DEFAULT_PCA_COMPONENTS, fit_and_score_baselines
from ..config import DEFAULT_METHOD, Config, DataConfig, config_to_dict, load_config, preset_config, with_overrides
from ..data.copies import film_signatures
from ..data.dataset import OnBadFile
from ..data.selection import report_skipped, require_both_classes
from ..errors import ConfigError
from ..files import atomic_write
from ..inference import resolve_device
from ..models.family import RAW_SCORE
from ..models.registry import FAMILIES, family_of, fit_detector
from ..scoring import ScoreResult, score_films
from .benchmark_films import FilmSet, choose_test_films, choose_training_films, load_film_set, warn_on_shared_films
from .benchmark_report import metrics_of, score_key, table_header, table_rows, write_figures, write_tables
from .benchmark_table import describe_collection, format_value
from .cells import describe_remaining, format_duration, read_finished_cell, settings_fingerprint, write_cell_result

logger = logging.getLogger(__name__)

# The stored array of a detector's own score (its configured one).
RAW = RAW_SCORE
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class MethodRow:
    """One model row of the table, parsed from ``--methods``.

    Attributes:
        spec: as written, ``FAMILY`` or ``FAMILY:SETTING`` (a score component or a network
            variant, as the family's :class:`~cxr_anomaly.models.family.BenchmarkCells` says).
        family: the family's name.
        setting: what follows the ``:``; empty for the family's configured detector and score.
    """

    spec: str
    family: str
    setting: str = ""

    @property
    def kind(self) -> str:
        """The fitted detector this row reads: ``FAMILY``, or ``FAMILY-SETTING`` where the setting
        needs a fit of its own."""
        return f"{self.family}-{self.setting}" if family_of(self.family).benchmark.setting_refits else self.family


def parse_method(spec: str) -> MethodRow:
    """``FAMILY`` or ``FAMILY:SETTING`` -> :class:`MethodRow`.

    Raises:
        ConfigError: an unknown family, or a setting the family does not know (or needs).
    """
    family, _, setting = spec.strip().partition(":")
    if family not in FAMILIES:
        forms = ", ".join(record.benchmark.spec_help for record in FAMILIES.values())
        raise ConfigError(f"method {spec!r}: unknown family {family!r}; expected {forms}")
    FAMILIES[family].benchmark.check_setting(spec.strip(), setting)
    return MethodRow(spec.strip(), family, setting)


def parse_test_collections(specs: Sequence[str]) -> dict[str, Path]:
    """``NAME=DATA`` arguments -> {name: path}; names become file names (``roc_NAME.png``).

    Raises:
        ConfigError: no ``=``, a name with characters other than letters, digits, ``_.-``, or a
            name given twice.
    """
    collections: dict[str, Path] = {}
    for spec in specs:
        name, separator, path = spec.partition("=")
        if not separator or not path:
            raise ConfigError(f"--test {spec!r}: expected NAME=DATA, e.g. nih1000=../shared/data/nih1000")
        if not COLLECTION_NAME.match(name):
            raise ConfigError(f"--test {spec!r}: the name {name!r} must be letters, digits, '_', '.' or '-'")
        if name in collections:
            raise ConfigError(f"--test {spec!r}: the name {name!r} is given twice")
        collections[name] = Path(path)
    if not collections:
        raise ConfigError("benchmark needs at least one --test NAME=DATA")
    return collections


@dataclass(frozen=True)
class BenchmarkOptions:
    """What to fit and how to report it.

    Attributes:
        methods: method rows in table order (see :func:`parse_method`).
        seeds: every fitted detector runs once per seed (``train.seed``, and ``features.seed``
            for the coreset draw).
        max_train_normals: fit on at most this many training normals (the first of one seeded
            permutation, so smaller sets are subsets of larger ones); None: all.
        selection_seed: seed of the calibration hold-out and of the ``max_train_normals`` draw,
            the same for every row, so every row and baseline sees the same training films.
        pca_components: components of the PCA baseline.
        neighbours: k of the k-NN baseline.
        baseline_image_size: side of the films the pixel baselines read.
        bootstrap_resamples: resamples of the 95% intervals (0: none).
        figure_films: films per class in the film grids.
    """

    methods: tuple[str, ...] = (DEFAULT_METHOD,)
    seeds: tuple[int, ...] = (0, 1, 2)
    max_train_normals: int | None = None
    selection_seed: int = 0
    pca_components: int = DEFAULT_PCA_COMPONENTS
    neighbours: int = DEFAULT_NEIGHBOURS
    baseline_image_size: int = 64
    bootstrap_resamples: int = 1000
    figure_films: int = 6

    def __post_init__(self) -> None:
        rows = self.rows  # parses every method: names the bad one
        if not rows:
            forms = ", ".join(record.benchmark.spec_help for record in FAMILIES.values())
            raise ConfigError(f"methods=[]; expected at least one of {forms}")
        if len({row.spec for row in rows}) != len(rows):
            raise ConfigError(f"methods={list(self.methods)} lists a method twice")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)}; need at least one, each once")
        if self.max_train_normals is not None and self.max_train_normals < 2:
            raise ConfigError(f"max_train_normals={self.max_train_normals}; must be >= 2")
        if self.bootstrap_resamples < 0:
            raise ConfigError(f"bootstrap_resamples={self.bootstrap_resamples}; must be >= 0")
        if self.figure_films < 1:
            raise ConfigError(f"figure_films={self.figure_films}; must be >= 1")

    @property
    def rows(self) -> tuple[MethodRow, ...]:
        """The parsed method rows."""
        return tuple(parse_method(spec) for spec in self.methods)


def benchmark_configs(
    config_path: str | Path | None = None,
    *,
    epochs: int | None = None,
    device: str | None = None,
    precision: str | None = None,
) -> dict[str, Config]:
    """Each family's configuration: its preset, the file's values over it, then the options.

    One file serves every family (each reads its own sections, :attr:`~cxr_anomaly.models.family.
    DetectorFamily.config_sections`, and ``data``); it must not set ``method``, which the method
    rows choose.

    Raises:
        ConfigError: the file sets ``method``, or a value is invalid for a family.
    """
    configs = {}
    for family in FAMILIES:  # every family, whichever rows ask for it: plain_data reads them
        config = load_config(config_path, base=preset_config(family)) if config_path else preset_config(family)
        if config.method != family:
            raise ConfigError(
                f"{config_path} sets method = {config.method!r}; benchmark takes the methods from "
                "--methods, so leave method out of the file"
            )
        changes = {
            key: value
            for key, value in (("epochs", epochs), ("device", device), ("precision", precision))
            if value is not None
        }
        configs[family] = with_overrides(config, "train", **changes) if changes else config
    return configs


def plain_data(configs: Mapping[str, Config]) -> DataConfig:
    """The data section of a family that adds no preprocessing of its own to the file's (its
    preset's is :class:`DataConfig`'s defaults): how the pixel baselines read films."""
    for name, config in configs.items():
        if preset_config(name).data == DataConfig():
            return config.data
    raise ConfigError(f"no family of {sorted(configs)} reads plain films; the pixel baselines need one")


def cell_config(configs: Mapping[str, Config], kind_row: MethodRow, seed: int) -> Config:
    """The configuration of one fit: the family's, with the row's setting and the seed."""
    config = family_of(kind_row.family).benchmark.cell_config(configs[kind_row.family], kind_row.setting, seed)
    return with_overrides(config, "train", seed=seed)


def cell_fingerprint(
    config: Config, train: FilmSet, calibration: FilmSet, collections: Sequence[FilmSet], figure_films: int
) -> str:
    """Hash of everything that determines a cell's stored scores.

    Only the sections the family reads count, so that, say, more training epochs of one family do
    not refit another's cells; so do the settings the family stores every choice of (a score
    whose components are all stored).
    """
    family = family_of(config.method)
    values = {
        section: value
        for section, value in config_to_dict(config).items()
        if section in ("method", "data", *family.config_sections)
    }
    for name in family.benchmark.unfingerprinted:
        section, key = name.split(".")
        values[section].pop(key)
    return settings_fingerprint(
        {
            "config": values,
            "train": train.fingerprint,
            "calibration": calibration.fingerprint,
            "tests": {collection.name: collection.fingerprint for collection in collections},
            "figure_films": figure_films,
        }
    )


def figure_indices(labels: np.ndarray, raw: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest-scoring normal films, then of the abnormal ones."""
    chosen = []
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        chosen.append(members[np.argsort(-raw[members], kind="stable")[:count]])
    return np.concatenate(chosen)


def save_scores(path: Path, scores: ScoreResult, index: np.ndarray | None = None) -> None:
    """Store raw scores and components (and the figure films' maps at ``index``) atomically."""
    arrays: dict[str, np.ndarray] = {RAW: scores.raw, **scores.components}
    if index is not None:
        assert scores.anomaly_maps is not None  # scored with keep_maps
        arrays["figure_index"] = index
        arrays["figure_maps"] = scores.anomaly_maps[index]  # (F, h, w)
        if scores.reconstructions is not None:
            arrays["figure_reconstructions"] = scores.reconstructions[index]  # (F, S, S) uint8
    # a stream, not a name: np.savez would add ".npz" to a temporary name
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def run_cell(
    name: str,
    config: Config,
    score_keys: Sequence[str],
    train: FilmSet,
    calibration: FilmSet,
    collections: Sequence[FilmSet],
    cell_dir: Path,
    fingerprint: str,
    options: BenchmarkOptions,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Fit one detector, score the calibration normals and each test collection, store the cell.

    ``cell_dir`` receives ``calibration.npz``, ``scores_<collection>.npz`` and, last,
    ``result.json`` (with the metrics of ``score_keys`` on each collection).
    """
    started = time.perf_counter()
    device = resolve_device(config.train.device)
    fitted = fit_detector(config, train.pixels[config.data], device=device, progress=progress)
    save_scores(
        cell_dir / "calibration.npz", score_films(fitted.detector, calibration.pixels[config.data], device=device)
    )
    metrics: dict[str, dict[str, Any]] = {}
    for collection in collections:
        scores = score_films(fitted.detector, collection.pixels[config.data], device=device, keep_maps=True)
        save_scores(
            cell_dir / f"scores_{collection.name}.npz",
            scores,
            figure_indices(collection.labels, scores.raw, options.figure_films),
        )
        stored = {RAW: scores.raw, **scores.components}
        metrics[collection.name] = {key: metrics_of(stored[key], collection, options) for key in score_keys}
    result = {
        "cell": name,
        "method": config.method,
        "variant": family_of(config.method).benchmark.variant(config),
        "seed": config.train.seed,
        "fingerprint": fingerprint,
        "seconds": time.perf_counter() - started,
        "description": fitted.detector.description,
        "anomaly_map_scale": fitted.detector.anomaly_map_scale,
        "num_train_films": len(train.manifest),
        "num_calibration_films": len(calibration.manifest),
        "fit": fitted.record,
        "bootstrap_resamples": options.bootstrap_resamples,
        "metrics": metrics,
    }
    write_cell_result(cell_dir, result)  # last: its presence marks the cell finished
    logger.info(
        "cell %s: %s score: %s (%s)",
        name,
        score_keys[0],
        ", ".join(
            f"{collection} AUC {format_value(values[score_keys[0]]['auc'])}" for collection, values in metrics.items()
        ),
        format_duration(result["seconds"]),
    )
    return result


@dataclass
class FinishedCells:
    """The finished cells of a run: each one's ``result.json`` values and its stored scores.

    Attributes:
        folder: ``DIR/cells``.
        results: (kind, seed) -> the cell's ``result.json`` values.
        run, reused: the names of the cells fitted by this run and of those reused.
    """

    folder: Path
    results: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    run: list[str] = field(default_factory=list)  # cells fitted by this run
    reused: list[str] = field(default_factory=list)  # cells finished earlier with the same settings

    def scores(self, kind: str, seed: int, collection: FilmSet) -> dict[str, np.ndarray]:
        """The stored arrays of one collection: ``raw``, the components, the figure films' maps."""
        with np.load(self.folder / f"{kind}-seed{seed}" / f"scores_{collection.name}.npz") as stored:
            return {key: stored[key] for key in stored.files}

    def metrics(
        self, row: MethodRow, seed: int, collection: FilmSet, key: str, options: BenchmarkOptions
    ) -> Mapping[str, Any]:
        """The row's metrics on a collection for one seed.

        A cell stores the metrics of the rows it was fitted for; another row of the same fit
        (another feature score) or another number of bootstrap resamples is computed from the
        cell's stored scores.
        """
        result = self.results[(row.kind, seed)]
        cached = result.get("metrics", {}).get(collection.name, {}).get(key)
        if cached is not None and result.get("bootstrap_resamples") == options.bootstrap_resamples:
            return cached
        return metrics_of(self.scores(row.kind, seed, collection)[key], collection, options)


@dataclass
class BenchmarkOutcome:
    """What :func:`benchmark_job` wrote and measured.

    Attributes:
        table: the table of ``table.csv``.
        roc_paths: test collection -> ``roc_<name>.png``.
        film_grids: the ``films_<name>_<kind>-seed<N>.png`` figures.
        cells_run: cells fitted by this run; ``cells_reused``: finished earlier and reused.
    """

    table: pd.DataFrame
    table_csv: Path
    table_md: Path
    roc_paths: dict[str, Path]
    film_grids: list[Path]
    cells_run: list[str] = field(default_factory=list)
    cells_reused: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_cells(
    configs: Mapping[str, Config],
    kinds: Mapping[str, MethodRow],
    train: FilmSet,
    calibration: FilmSet,
    collections: list[FilmSet],
    folder: Path,
    options: BenchmarkOptions,
    *,
    progress: bool,
) -> FinishedCells:
    """Fit and score one cell per kind and seed; a finished cell with the same fingerprint is reused."""
    plan = [(kind, seed) for kind in kinds for seed in options.seeds]
    cells = FinishedCells(folder)
    durations: dict[str, list[float]] = {}
    for index, (kind, seed) in enumerate(plan, start=1):
        config = cell_config(configs, kinds[kind], seed)
        name = f"{kind}-seed{seed}"
        cell_dir = cells.folder / name
        fingerprint = cell_fingerprint(config, train, calibration, collections, options.figure_films)
        required = ["calibration.npz", *[f"scores_{collection.name}.npz" for collection in collections]]
        finished = read_finished_cell(cell_dir, fingerprint, required)
        if finished is not None:
            logger.info("cell %d/%d %s: finished earlier, reused", index, len(plan), name)
            cells.results[(kind, seed)] = finished
            cells.reused.append(name)
            continue
        logger.info(
            "cell %d/%d %s: fitting on %d normals (%s)",
            index,
            len(plan),
            name,
            len(train.manifest),
            describe_remaining(durations, [remaining for remaining, _ in plan[index - 1 :]]),
        )
        keys = list(dict.fromkeys(score_key(row, config) for row in options.rows if row.kind == kind))
        cells.results[(kind, seed)] = run_cell(
            name, config, keys, train, calibration, collections, cell_dir, fingerprint, options, progress=progress
        )
        durations.setdefault(kind, []).append(cells.results[(kind, seed)]["seconds"])
        cells.run.append(name)
    return cells


def fits_needed(rows: Sequence[MethodRow]) -> dict[str, MethodRow]:
    """The first row of each kind, in table order: one fit per kind and seed serves them all."""
    kinds: dict[str, MethodRow] = {}
    for row in rows:
        kinds.setdefault(row.kind, row)
    return kinds


@dataclass(frozen=True)
class TestCollections:
    """The loaded test collections, in ``--test`` order, and the split each one's films came from."""

    collections: list[FilmSet]
    splits: dict[str, str]


def load_test_collections(
    test_data: Mapping[str, str | Path],
    load: Callable[[str, pd.DataFrame], FilmSet],
    train: FilmSet,
    baseline_data: DataConfig,
) -> TestCollections:
    """Choose and ``load`` each test collection's films, checking both classes and copies of training films."""
    train_signatures = film_signatures(train.pixels[baseline_data])  # for the copies check of each collection
    collections: list[FilmSet] = []
    splits: dict[str, str] = {}
    for name, source in test_data.items():
        manifest, splits[name] = choose_test_films(name, Path(source))
        collections.append(load(name, manifest))
        require_both_classes(collections[-1].manifest, f"{name}={source}", "label", splits[name])  # after skips
        warn_on_shared_films(train, collections[-1], baseline_data, train_signatures)
        logger.info("test collection %s (%s)", name, describe_collection(collections[-1], splits[name]))
    return TestCollections(collections, splits)


@dataclass(frozen=True)
class BenchmarkFilms:
    """The films of a run: training and calibration normals, and the test collections with their splits."""

    train: FilmSet
    calibration: FilmSet
    calibration_source: str
    collections: list[FilmSet]
    splits: dict[str, str]


def load_benchmark_films(
    train_data: Sequence[str | Path],
    test_data: Mapping[str, str | Path],
    config: Config,
    options: BenchmarkOptions,
    load: Callable[[str, pd.DataFrame], FilmSet],
    baseline_data: DataConfig,
    skipped_path: Path,
) -> BenchmarkFilms:
    """Choose and ``load`` the training and calibration normals (as ``config`` reads them), then each test
    collection; list the films skipped in ``skipped_path``."""
    train_rows, calibration_rows, calibration_source = choose_training_films(
        train_data,
        config,
        max_train_normals=options.max_train_normals,
        selection_seed=options.selection_seed,
    )
    train, calibration = load("train", train_rows), load("calibration", calibration_rows)
    tests = load_test_collections(test_data, load, train, baseline_data)
    report_skipped([skip for films in (train, calibration, *tests.collections) for skip in films.skipped], skipped_path)
    return BenchmarkFilms(train, calibration, calibration_source, tests.collections, tests.splits)


def benchmark_job(
    train_data: Sequence[str | Path],
    test_data: Mapping[str, str | Path],
    out_dir: str | Path,
    configs: Mapping[str, Config],
    options: BenchmarkOptions,
    *,
    on_bad_file: OnBadFile = "error",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> BenchmarkOutcome:
    """Fit every method row and seed on one collection's normals, test on several; see the module docstring.

    Args:
        train_data: the training collection (folders, manifests or npz); only its normals are used.
        test_data: test collection name -> folder, manifest or npz.
        out_dir: output folder; finished cells in it are reused when their fingerprint matches.
        configs: family -> configuration (:func:`benchmark_configs`).
        options: method rows, seeds and reporting.
        on_bad_file: ``error`` or ``skip`` unreadable files (listed in ``skipped_files.csv``).
        cache_dir: preprocessing cache folder.
        progress: show progress bars.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = options.rows
    baseline_data = dataclasses.replace(plain_data(configs), image_size=options.baseline_image_size)
    # Each family reads films at its own size; the pixel baselines at 64 px.
    data_configs = [*dict.fromkeys(configs[row.family].data for row in rows), baseline_data]
    # 1. The films: training and calibration normals, and each test collection's test films.
    load = functools.partial(
        load_film_set, data_configs=data_configs, on_bad_file=on_bad_file, cache_dir=cache_dir, progress=progress
    )
    films = load_benchmark_films(
        train_data, test_data, configs[rows[0].family], options, load, baseline_data, out_dir / "skipped_files.csv"
    )
    train, calibration, collections, splits = films.train, films.calibration, films.collections, films.splits

    # 2. The pixel baselines, fitted on the same training normals.
    baseline_scores = fit_and_score_baselines(
        train.pixels[baseline_data],
        {c.name: c.pixels[baseline_data] for c in collections},
        baseline_data,
        pca_components=options.pca_components,
        neighbours=options.neighbours,
    )

    # 3. The cells: one fit per kind and seed, reused when finished with the same settings.
    cells = run_cells(
        configs, fits_needed(rows), train, calibration, collections, out_dir / "cells", options, progress=progress
    )

    # 4. The table.
    header = table_header(train, train_data, films.calibration_source, configs, options)
    tables = write_tables(
        table_rows(rows, cells, configs, baseline_scores, collections, options), collections, splits, header, out_dir
    )

    # 5. The figures, from the first seed: ROC curves per view and the film grids.
    figures = write_figures(collections, fits_needed(rows), cells, configs, baseline_scores, out_dir, options)

    seconds = time.perf_counter() - started
    logger.info(
        "benchmark finished in %s: %d cells run, %d reused; %s",
        format_duration(seconds),
        len(cells.run),
        len(cells.reused),
        tables.markdown,
    )
    return BenchmarkOutcome(
        tables.table,
        tables.csv,
        tables.markdown,
        figures.roc_paths,
        figures.film_grids,
        cells.run,
        cells.reused,
        seconds,
    )
