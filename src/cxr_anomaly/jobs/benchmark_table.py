"""The benchmark's table: metrics with their intervals per row, the summary table and its Markdown
(:mod:`.benchmark`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..config import Config
from ..evaluation import ADULT_AGE, Interval
from ..models.registry import family_of
from .benchmark_films import FilmSet
from .cells import mean_std, plus_minus

logger = logging.getLogger(__name__)


def metric_intervals(metrics: Mapping[str, Any], views: Sequence[str]) -> dict[str, Interval]:
    """The table's metrics of one run on one collection, each with its interval.

    Keys: ``auc``, ``auc_<VIEW>``, ``auc_view_balanced``, ``adults_auc_<VIEW>`` (where ages are
    known), ``auc_score_predicts_ap_in_normals``.
    """

    def read(intervals: Mapping[str, Any] | None, key: str) -> Interval:
        value = (intervals or {}).get(key) or {}
        return Interval(value.get("estimate"), value.get("low"), value.get("high"))

    intervals = metrics.get("intervals") or {}
    adults = metrics.get("adults") or {}
    values = {"auc": read(intervals, "auc")}
    values.update({f"auc_{view}": read(intervals, f"auc_view_{view}") for view in views})
    values["auc_view_balanced"] = read(intervals, "auc_view_balanced")
    values.update({f"adults_auc_{view}": read(adults.get("intervals"), f"auc_view_{view}") for view in views})
    values["auc_score_predicts_ap_in_normals"] = read(intervals, "auc_score_predicts_ap_in_normals")
    return values


METRIC_LABELS: dict[str, str] = {
    "auc": "AUC",
    "auc_view_balanced": "view-balanced",
    "auc_score_predicts_ap_in_normals": "score predicts AP in normals",
}


def metric_label(key: str) -> str:
    """Column heading of a metric key (``auc_PA`` -> ``PA``, ``adults_auc_AP`` -> ``adults AP``)."""
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    return key.replace("adults_auc_", "adults ").replace("auc_", "")


@dataclass
class TableRow:
    """One row of the table before formatting: metrics per collection, one dict per run.

    Attributes:
        method: the row's name (``FAMILY:SETTING``, ``knn5``, ``view only (AP = 1)``).
        kind: ``model``, ``baseline`` or ``view_only``.
        score: what the score is (a component or the family's score method, ``pixels``, ``view``).
        seeds: the seed of each run; empty for deterministic rows (baselines, view only).
        runs: collection -> one plain metrics dict per run.
    """

    method: str
    kind: str
    score: str
    seeds: list[int]
    runs: dict[str, list[Mapping[str, Any]]]


def summarise(rows: Sequence[TableRow], collections: Sequence[FilmSet]) -> pd.DataFrame:
    """One table row per method, baseline and the view-only score.

    Per collection and metric: ``_mean`` and ``_std`` over runs, ``_seed<N>`` per run of a model,
    and ``_low``/``_high`` (the 95% bootstrap interval) for rows of one run; and whether a model
    beats every baseline and the view-only score within every view.
    """
    records = []
    for row in rows:
        record: dict[str, object] = {
            "method": row.method,
            "kind": row.kind,
            "score": row.score,
            "runs": max(len(runs) for runs in row.runs.values()),
        }
        for collection in collections:
            runs = [metric_intervals(metrics, collection.view_names) for metrics in row.runs[collection.name]]
            for key in runs[0]:
                prefix = f"{collection.name}:{key}"
                mean, std, _ = mean_std([run[key].estimate for run in runs])
                record[f"{prefix}_mean"], record[f"{prefix}_std"] = mean, std
                for seed, run in zip(row.seeds, runs):
                    record[f"{prefix}_seed{seed}"] = _number(run[key].estimate)
                if len(runs) == 1:
                    record[f"{prefix}_low"], record[f"{prefix}_high"] = (
                        _number(runs[0][key].low),
                        _number(runs[0][key].high),
                    )
        records.append(record)
    table = pd.DataFrame(records)
    for collection in collections:
        table[f"{collection.name}:beats_baselines_in_every_view"] = beats_in_every_view(table, collection)
    return table


def beats_in_every_view(table: pd.DataFrame, collection: FilmSet) -> list[object]:
    """Per row: whether a model's mean AUC beats every baseline and the view-only score within each
    view that has both classes (None for other rows, or without views)."""
    views = [
        view
        for view in collection.view_names
        if f"{collection.name}:auc_{view}_mean" in table and table[f"{collection.name}:auc_{view}_mean"].notna().any()
    ]
    others = table[table["kind"] != "model"]
    verdicts: list[object] = []
    for _, row in table.iterrows():
        if row["kind"] != "model" or not views:
            verdicts.append(None)
            continue
        verdicts.append(
            all(
                row[f"{collection.name}:auc_{view}_mean"] > others[f"{collection.name}:auc_{view}_mean"].max()
                for view in views
            )
        )
    return verdicts


def describe_family(config: Config) -> str:
    """The settings of a family that a reader of the table needs, in a few words."""
    return family_of(config.method).describe(config)


def describe_collection(collection: FilmSet, split: str) -> str:
    """``test split: 100 normal + 100 abnormal; PA 75 + 47, AP 25 + 53; ages known``."""
    labels = collection.labels
    text = (
        f"{'test split' if split == 'test' else 'all rows'}: {int((labels == 0).sum())} normal + "
        f"{int((labels == 1).sum())} abnormal"
    )
    views = collection.manifest["view"].astype("string")
    counts = [
        f"{view} {int(((views == view) & (collection.manifest['label'] == 0)).sum())} + "
        f"{int(((views == view) & (collection.manifest['label'] == 1)).sum())}"
        for view in collection.view_names
    ]
    if counts:
        text += "; " + ", ".join(counts)
    if collection.ages is not None:
        minors = int((pd.to_numeric(collection.manifest["age"], errors="coerce") < ADULT_AGE).sum())
        text += f"; ages known, {minors} under {ADULT_AGE}"
    return text


def render_markdown(table: pd.DataFrame, collections: Sequence[FilmSet], splits: Mapping[str, str], header: str) -> str:
    """The table as Markdown, one section per test collection.

    A row of several runs shows mean ± sample std over seeds; a row of one run its 95%
    bootstrap interval.
    """
    lines = [header, ""]
    for collection in collections:
        # adults' columns only where some films are of minors (else they repeat the columns of all films)
        keys = [
            key
            for key in metric_intervals({}, collection.view_names)
            if not key.startswith("adults_") or table[f"{collection.name}:{key}_mean"].notna().any()
        ]
        columns = [
            "method",
            "score",
            "runs",
            *[metric_label(key) for key in keys],
            "beats baselines and view only in every view",
        ]
        lines += [
            f"### {collection.name} ({describe_collection(collection, splits[collection.name])})",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for record in table.to_dict("records"):
            cells = [
                str(record["method"]) + (" (baseline)" if record["kind"] == "baseline" else ""),
                str(record["score"]),
                str(record["runs"]),
            ]
            for key in keys:
                prefix = f"{collection.name}:{key}"
                if record["runs"] == 1:
                    cells.append(
                        Interval(
                            _number(record.get(f"{prefix}_mean")),
                            _number(record.get(f"{prefix}_low")),
                            _number(record.get(f"{prefix}_high")),
                        ).describe()
                    )
                else:
                    cells.append(plus_minus(record.get(f"{prefix}_mean"), record.get(f"{prefix}_std")))
            verdict = record.get(f"{collection.name}:beats_baselines_in_every_view")
            cells.append(
                "-"
                if verdict is None or (isinstance(verdict, float) and math.isnan(verdict))
                else ("yes" if verdict else "no")
            )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _number(value: object) -> float | None:
    """A finite float, or None (NaN and missing values from pandas included)."""
    if value is None or isinstance(value, str):
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def format_value(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"
