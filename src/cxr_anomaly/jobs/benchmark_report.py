"""What the benchmark writes from its finished cells: the table's rows and header, ROC curves, film grids.

:func:`~cxr_anomaly.jobs.benchmark.benchmark_job` runs the cells, then calls these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..baselines import BaselineScores
from ..config import Config, DataConfig
from ..evaluation import FilmGroup, compute_metrics, explanation_grid, plot_roc_panels
from ..files import atomic_write_text
from ..models.family import RAW_SCORE
from ..models.registry import family_of
from .benchmark_films import FilmSet
from .benchmark_table import TableRow, describe_family, render_markdown, summarise

if TYPE_CHECKING:
    from .benchmark import BenchmarkOptions, FinishedCells, MethodRow

VIEW_ONLY = "view only (AP = 1)"


def score_key(row: MethodRow, config: Config) -> str:
    """Which stored array holds the row's scores: a component, or the detector's raw score."""
    return family_of(row.family).benchmark.score_key(config, row.setting)


def metrics_of(scores: np.ndarray, collection: FilmSet, options: BenchmarkOptions) -> dict[str, Any]:
    """Plain-value metrics (overall, per view, view-balanced, adults, ...) of one score vector."""
    return compute_metrics(
        collection.labels,
        scores,
        views=collection.views,
        ages=collection.ages,
        num_resamples=options.bootstrap_resamples,
        seed=0,
    ).to_dict()


def view_only_scores(collection: FilmSet) -> np.ndarray:
    """The view as the score: 1 for AP films, 0 for the others (N,)."""
    views = collection.manifest["view"].astype("string").fillna("")
    return (views == "AP").to_numpy(dtype=np.float64)


def table_rows(
    rows: Sequence[MethodRow],
    cells: FinishedCells,
    configs: Mapping[str, Config],
    baseline_scores: Mapping[str, BaselineScores],
    collections: Sequence[FilmSet],
    options: BenchmarkOptions,
) -> list[TableRow]:
    """The model rows from the cells, then the pixel baselines and the view-only score."""
    result = []
    for row in rows:
        key = score_key(row, configs[row.family])
        score = family_of(row.family).benchmark.score_label(configs[row.family], row.setting)
        result.append(
            TableRow(
                row.spec,
                "model",
                score,
                list(options.seeds),
                {c.name: [cells.metrics(row, seed, c, key, options) for seed in options.seeds] for c in collections},
            )
        )
    for baseline in baseline_scores[collections[0].name].scores:
        result.append(
            TableRow(
                baseline,
                "baseline",
                f"pixels, {options.baseline_image_size} px",
                [],
                {c.name: [metrics_of(baseline_scores[c.name].scores[baseline], c, options)] for c in collections},
            )
        )
    result.append(
        TableRow(
            VIEW_ONLY,
            "view_only",
            "view",
            [],
            {c.name: [metrics_of(view_only_scores(c), c, options) if c.views is not None else {}] for c in collections},
        )
    )
    return result


def write_roc_figure(collection: FilmSet, curves: Mapping[str, np.ndarray], path: Path) -> Path:
    """ROC curves of each named score (N,) on a collection: all films, then one panel per view.

    The view-only curve is drawn on all films only: within one view it is the diagonal.
    """
    labels = collection.labels
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {
        "all films": {name: (labels, values) for name, values in curves.items()}
    }
    if collection.views is not None:
        panels["all films"][VIEW_ONLY] = (labels, view_only_scores(collection))
        views = collection.manifest["view"].astype("string").fillna("").to_numpy()
        for view in collection.view_names:
            mask = views == view
            panels[f"{view} films"] = {name: (labels[mask], values[mask]) for name, values in curves.items()}
    return plot_roc_panels(panels, path, title=f"{collection.name}: ROC per view")


def write_film_grid(
    collection: FilmSet,
    kind: str,
    seed: int,
    cells: FinishedCells,
    data_config: DataConfig,
    path: Path,
    options: BenchmarkOptions,
) -> Path:
    """The highest-scoring normal and abnormal films of one fitted detector, with heatmaps (and
    reconstructions), as stored in its cell; kept when already drawn since the cell finished."""
    result_path = cells.folder / f"{kind}-seed{seed}" / "result.json"
    if path.is_file() and path.stat().st_mtime_ns >= result_path.stat().st_mtime_ns:
        return path  # drawing costs seconds per figure; the cell has not changed since
    result = cells.results[(kind, seed)]
    stored = cells.scores(kind, seed, collection)
    pixels = collection.pixels[data_config]  # (N, S, S) as the detector read them
    index = stored["figure_index"]
    labels = collection.labels[index]
    reconstructions = stored.get("figure_reconstructions")
    groups = [
        FilmGroup(
            title,
            pixels[index[mask]],
            stored["figure_maps"][mask],
            stored[RAW_SCORE][index[mask]],
            None if reconstructions is None else reconstructions[mask],
        )
        for title, mask in (("normal", labels == 0), ("abnormal", labels == 1))
    ]
    return explanation_grid(
        groups,
        path,
        scale=float(result["anomaly_map_scale"]),
        per_row=options.figure_films,
        title=f"{collection.name}: {result['description']}, seed {seed}; highest-scoring films per class",
    )


@dataclass(frozen=True)
class BenchmarkFigures:
    """The figures of a run: ``roc_<name>.png`` by test collection, and the film grids."""

    roc_paths: dict[str, Path]
    film_grids: list[Path]


def write_figures(
    collections: list[FilmSet],
    kinds: Mapping[str, MethodRow],
    cells: FinishedCells,
    configs: Mapping[str, Config],
    baseline_scores: Mapping[str, BaselineScores],
    out_dir: Path,
    options: BenchmarkOptions,
) -> BenchmarkFigures:
    """ROC curves (every method row and baseline) and film grids of each collection, from the first seed."""
    first_seed = options.seeds[0]
    figures = BenchmarkFigures({}, [])
    for collection in collections:
        curves = {
            f"{row.spec} (seed {first_seed})": cells.scores(row.kind, first_seed, collection)[
                score_key(row, configs[row.family])
            ]
            for row in options.rows
        }
        curves.update(
            {f"{name} (baseline)": values for name, values in baseline_scores[collection.name].scores.items()}
        )
        figures.roc_paths[collection.name] = write_roc_figure(
            collection, curves, out_dir / f"roc_{collection.name}.png"
        )
        for kind, kind_row in kinds.items():
            figures.film_grids.append(
                write_film_grid(
                    collection,
                    kind,
                    first_seed,
                    cells,
                    configs[kind_row.family].data,
                    out_dir / f"films_{collection.name}_{kind}-seed{first_seed}.png",
                    options,
                )
            )
    return figures


def table_header(
    train: FilmSet,
    train_data: Sequence[str | Path],
    calibration_source: str,
    configs: Mapping[str, Config],
    options: BenchmarkOptions,
) -> str:
    """The paragraph above ``table.md``'s sections: the training films, seeds, families and intervals."""
    return (
        f"Fitted on {len(train.manifest)} normal films of {', '.join(map(str, train_data))} (films "
        f"{train.fingerprint}; calibration: {calibration_source}); seeds {list(options.seeds)}; "
        + "; ".join(describe_family(configs[family]) for family in dict.fromkeys(row.family for row in options.rows))
        + f". Several runs: mean ± sample std over seeds; one run: the estimate [95% bootstrap interval, "
        f"{options.bootstrap_resamples} resamples]. A method beats a baseline only when it does within every view."
    )


@dataclass(frozen=True)
class BenchmarkTables:
    """The summary table and the files it was written to: ``table.csv`` and ``table.md``."""

    table: pd.DataFrame
    csv: Path
    markdown: Path


def write_tables(
    rows: list[TableRow], collections: Sequence[FilmSet], splits: Mapping[str, str], header: str, out_dir: Path
) -> BenchmarkTables:
    """Summarise the rows over the test collections and write ``table.csv`` and ``table.md``."""
    table = summarise(rows, collections)
    table_csv = out_dir / "table.csv"
    atomic_write_text(table_csv, table.to_csv(index=False))
    table_md = out_dir / "table.md"
    atomic_write_text(table_md, render_markdown(table, collections, splits, header))
    return BenchmarkTables(table, table_csv, table_md)
