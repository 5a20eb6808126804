"""Validation AUC of a density-normalised pooled kNN (local-outlier-factor style) on a checkpoint.

The default score is the mean cosine distance of a film's pooled features to its k nearest
training normals. Where the normals are sparse, every film lies far from them, normal or not:
RSNA's "Normal" class is about 18% AP, so an AP film of another hospital starts with a larger
distance whatever it shows (among normal films the default score still predicts AP with an AUC
of about 0.57, docs/notebook/2026-11-results-history.md). Dividing a film's distance by how far its neighbours lie from
*their own* neighbours in the bank puts each region of the feature space on its own scale, as
the local outlier factor does (Breunig et al., "LOF: identifying density-based local outliers",
SIGMOD 2000). Each bank row's own distance is computed leaving that row out, so it is what a
new normal film near it would get. The radii are one number per bank row, so such a score would
cost a scorer nothing but a gather.

Variants, all on the checkpoint's own pooled bank (no refit), k the neighbours:
- ``knn k``: the default score (k = 5 is the checkpoint's);
- ``ratio k``: knn_k(x) / mean over x's k neighbours n of knn_k(n), leaving n out;
- ``difference k``: knn_k(x) - that mean;
- ``lof k``: the local outlier factor proper, with reachability distances max(knn_k(n), d(x, n)).

The criterion is the worst of the four validation views (:mod:`validate_checkpoints`); with
``--test`` the test parts are scored too, after, and reported, never used for the choice. The
``predicts AP`` column is the AUC of the score for AP against PA among the validation normals
(0.5: the score ignores the view).

    python -m docs.notebook.research.pooled_density --model runs/demo/run/model.pt --test \\
        --output runs/density/pooled_density.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from docs.notebook.research.features_probe import collections
from docs.notebook.research.pooled_knn_variants import unit_pooled
from docs.notebook.research.validate_checkpoints import VALIDATION, load_features_model, view_row, write_rows
from sklearn.metrics import roc_auc_score

from cxr_anomaly.checkpoint import LoadedModel
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.models.features.torch_model import FeatureDetector

TEST = ("nih1000_test", "pneu_test")
NEIGHBOURS = (3, 5, 10, 20)


@dataclass
class Neighbours:
    """The k nearest bank rows of each query: cosine distances (Q, k) and bank indices (Q, k)."""

    distances: torch.Tensor
    indices: torch.Tensor


def nearest(queries: torch.Tensor, bank: torch.Tensor, count: int, *, leave_self_out: bool = False) -> Neighbours:
    """The ``count`` nearest rows of ``bank`` (M, D) to unit ``queries`` (Q, D) by cosine distance.

    With ``leave_self_out`` the queries are the bank itself and row i is not its own neighbour.
    """
    similarity = queries @ bank.T  # (Q, M)
    if leave_self_out:
        similarity.fill_diagonal_(float("-inf"))
    values, indices = similarity.topk(count, dim=1)  # (Q, count) each
    return Neighbours(1.0 - values, indices)


def density_scores(queries: torch.Tensor, bank: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every variant of the module docstring for unit ``queries`` (Q, D) against the unit ``bank`` (M, D)."""
    widest = max(NEIGHBOURS)
    of_bank = nearest(bank, bank, widest, leave_self_out=True)
    of_queries = nearest(queries, bank, widest)
    scores: dict[str, torch.Tensor] = {}
    for k in NEIGHBOURS:
        radius = of_bank.distances[:, :k].mean(dim=1)  # (M,) each normal's own kNN distance
        distance = of_queries.distances[:, :k].mean(dim=1)  # (Q,)
        local = radius[of_queries.indices[:, :k]].mean(dim=1)  # (Q,) the neighbours' radii
        kth = of_bank.distances[:, k - 1]  # (M,) distance to each normal's k-th neighbour
        reach = torch.maximum(kth[of_queries.indices[:, :k]], of_queries.distances[:, :k])  # (Q, k)
        bank_reach = torch.maximum(kth[of_bank.indices[:, :k]], of_bank.distances[:, :k])  # (M, k)
        density = 1.0 / bank_reach.mean(dim=1)  # (M,) local reachability density of each normal
        scores[f"knn {k}"] = distance
        scores[f"ratio {k}"] = distance / local
        scores[f"difference {k}"] = distance - local
        scores[f"lof {k}"] = density[of_queries.indices[:, :k]].mean(dim=1) * reach.mean(dim=1)
    return scores


def predicts_view(scores: np.ndarray, manifest: pd.DataFrame) -> float:
    """AUC of the score for AP against PA among the normal films (0.5: it ignores the view)."""
    normal = (manifest["label"].to_numpy() == 0) & manifest["view"].isin(["PA", "AP"]).to_numpy()
    return float(roc_auc_score(manifest["view"].to_numpy()[normal] == "AP", scores[normal]))


def checkpoint_arguments(description: str) -> argparse.Namespace:
    """``--model``, ``--test`` and ``--output``: the options of the scripts that rescore one
    features checkpoint's validation films (and, with ``--test``, its test parts)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--test", action="store_true", help="also score the test parts (reported, not chosen on)")
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args()


@dataclass
class FeaturesCheckpoint:
    """A loaded features checkpoint, its detector, and the collections of every choice."""

    model: LoadedModel
    detector: FeatureDetector
    sets: dict[str, pd.DataFrame]


def open_features_checkpoint(path: Path) -> FeaturesCheckpoint:
    """Load a features checkpoint and :func:`docs.notebook.research.features_probe.collections`."""
    model = load_features_model(path)
    return FeaturesCheckpoint(model, cast(FeatureDetector, model.detector), collections())


def main() -> None:
    """Command-line entry point; prints one line per variant and writes them as JSON with ``--output``."""
    args = checkpoint_arguments(__doc__.splitlines()[0])
    started = time.perf_counter()
    checkpoint = open_features_checkpoint(args.model)
    model, detector, sets = checkpoint.model, checkpoint.detector, checkpoint.sets
    bank = detector.pooled_bank.double()
    bank = bank / bank.norm(dim=1, keepdim=True)  # (M, D)
    names = VALIDATION + (TEST if args.test else ())
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        queries = unit_pooled(detector, load_images(sets[name], model.config.data, workers=2).pixels, batch=16)
        for variant, values in density_scores(queries, bank).items():
            scores.setdefault(variant, {})[name] = values.numpy()
    rows: dict[str, dict[str, float]] = {}
    for variant, by_set in scores.items():
        row = view_row(by_set, sets)
        row.update({f"{name} predicts AP": predicts_view(by_set[name], sets[name]) for name in VALIDATION})
        if args.test:
            test = view_row(by_set, sets, TEST)
            row.update({f"test: {key}": value for key, value in test.items()})
        rows[variant] = row
        print(variant, json.dumps({key: round(value, 3) for key, value in row.items()}))
    print(f"bank {len(bank)} normals; {time.perf_counter() - started:.0f} s")
    write_rows(rows, args.output)


if __name__ == "__main__":
    main()
