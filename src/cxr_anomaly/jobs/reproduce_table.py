"""The Markdown table of ``cxr-anomaly reproduce``: AUC mean ± std per method, like the paper's Table 1."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from .cells import plus_minus

SCORE_LABELS: dict[str, str] = {"eq6": "eq. 6", "code_knn": "code kNN"}


def render_markdown(table: pd.DataFrame, views: Sequence[str], header: str, seeds: Sequence[int] = ()) -> str:
    """The table as Markdown, AUC mean ± std per method, like the paper's Table 1."""
    columns = [
        "method",
        "score",
        "runs",
        "test AUC",
        "test AP",
        *[f"AUC, {view} films" for view in views],
        "val AUC",
        "AUC of L1 alone",
        "paper AUC (NIH)",
    ]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.to_dict("records"):
        paper = row["paper_auc"]
        cells = [
            f"{row['method']}"
            + (" (baseline)" if row["kind"] == "baseline" else "")
            + (f" of {len(seeds)} seeds" if row["kind"] == "ensemble" else ""),
            SCORE_LABELS.get(str(row["score"]), "pixels"),
            str(row["runs"]),
            plus_minus(row["auc_mean"], row["auc_std"]),
            plus_minus(row["average_precision_mean"], row["average_precision_std"]),
            *[plus_minus(row[f"auc_{view}_mean"], row[f"auc_{view}_std"]) for view in views],
            plus_minus(row["val_auc_mean"], row["val_auc_std"]),
            "-" if math.isnan(row["auc_reconstruction_only"]) else f"{row['auc_reconstruction_only']:.3f}",
            "-" if math.isnan(paper) else f"{paper:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
