"""Issue 10's probe, rerun beside a checkpoint's evaluation: does the detector at least match it,
within each view, on the same films?

The probe, as the issue describes it: frozen ImageNet EfficientNet-Lite0, no preprocessing beyond
the resize to 224 px, the global average of the stride-8, 16 and 32 maps concatenated, fitted on
the first ``--train-films`` (4,000) films of ``rsna_normal224``; two scores, the Mahalanobis
distance under a Ledoit-Wolf Gaussian and the mean cosine distance to the 5 nearest training
normals. Each ``--scores`` file is an ``evaluate`` run's ``scores.csv`` (path, label, view and
the detector's ``score_raw``); the probe scores the same files, and the script prints AUC overall
and within PA and AP films for the detector and both probe scores, with the detector's advantage
over each and its 95% interval from a paired bootstrap (resampling normal and abnormal films
within each view, 1,000 times, seed 0).

    python -m docs.notebook.research.issue_probe --scores nih1000_test=RUN/eval_a/scores.csv \\
        pneumonia=RUN/eval_b/scores.csv --out RUN/issue_probe.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.models.features.backbone import build_backbone

from .features_probe import preprocess

DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
PROBE_SIZE = 224
PROBE_STRIDES = (8, 16, 32)
NEIGHBOURS = 5
logger = logging.getLogger("issue_probe")


def pooled_features(manifest: pd.DataFrame, batch_size: int = 64) -> np.ndarray:
    """(N, C) global averages of the frozen backbone's stride-8, 16 and 32 maps, concatenated."""
    backbone, _ = build_backbone("efficientnet_lite0")
    backbone = backbone.to(memory_format=torch.channels_last).eval()
    pixels = load_images(manifest, DataConfig(image_size=PROBE_SIZE)).pixels  # (N, 224, 224) uint8
    parts = []
    with torch.inference_mode():
        for begin in range(0, len(pixels), batch_size):
            maps = backbone(preprocess(pixels[begin : begin + batch_size], "plain", PROBE_SIZE))
            parts.append(torch.cat([maps[stride].mean(dim=(2, 3)) for stride in PROBE_STRIDES], dim=1).numpy())
    return np.concatenate(parts)


def probe_scores(train: np.ndarray, films: np.ndarray) -> dict[str, np.ndarray]:
    """The probe's two scores of ``films`` (N, C) against the training normals ``train`` (M, C)."""
    gaussian = LedoitWolf().fit(train)
    centred = films - gaussian.location_
    mahalanobis = np.sqrt(np.einsum("nc,cd,nd->n", centred, gaussian.precision_, centred))
    unit_train = train / np.linalg.norm(train, axis=1, keepdims=True)
    unit_films = films / np.linalg.norm(films, axis=1, keepdims=True)
    distances = 1.0 - unit_films @ unit_train.T  # (N, M) cosine distances
    knn = np.sort(distances, axis=1)[:, :NEIGHBOURS].mean(axis=1)
    return {"probe_gaussian": mahalanobis, "probe_cosine_knn5": knn}


def paired_difference(
    labels: np.ndarray, first: np.ndarray, second: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """AUC(first) - AUC(second) on the same films, with a 95% interval from resampling normals and
    abnormals separately (both scores see the same resample)."""
    rng = np.random.default_rng(seed)
    normals, abnormals = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    estimate = roc_auc_score(labels, first) - roc_auc_score(labels, second)
    draws = []
    for _ in range(resamples):
        rows = np.concatenate([rng.choice(normals, len(normals)), rng.choice(abnormals, len(abnormals))])
        draws.append(roc_auc_score(labels[rows], first[rows]) - roc_auc_score(labels[rows], second[rows]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"difference": float(estimate), "low": float(low), "high": float(high)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", nargs="+", required=True, metavar="NAME=SCORES_CSV")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train-films", type=int, default=4000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    start = time.time()
    rsna = load_inputs(args.data / "rsna_normal224" / "manifest.csv").iloc[: args.train_films]
    train = pooled_features(rsna)
    logger.info("probe fitted on %d rsna_normal224 films (%.0f s)", len(train), time.time() - start)
    results: dict[str, dict[str, dict[str, object]]] = {}
    for name, path in (item.split("=", 1) for item in args.scores):
        table = pd.read_csv(path)
        scores = {"detector": table["score_raw"].to_numpy(), **probe_scores(train, pooled_features(table))}
        labels, views = table["label"].to_numpy().astype(int), table["view"].astype(str).to_numpy()
        results[name] = {}
        for part, mask in (("all", np.ones(len(table), bool)), ("PA", views == "PA"), ("AP", views == "AP")):
            row: dict[str, object] = {"films": int(mask.sum()), "abnormal": int(labels[mask].sum())}
            row.update({score: float(roc_auc_score(labels[mask], values[mask])) for score, values in scores.items()})
            for probe in ("probe_gaussian", "probe_cosine_knn5"):
                row[f"detector_minus_{probe}"] = paired_difference(
                    labels[mask], scores["detector"][mask], scores[probe][mask]
                )
            results[name][part] = row
            knn_gap = row["detector_minus_probe_cosine_knn5"]
            print(
                f"{name} {part} ({row['films']} films): detector {row['detector']:.3f}, probe Gaussian "
                f"{row['probe_gaussian']:.3f}, probe cosine 5-NN {row['probe_cosine_knn5']:.3f}; detector - "
                f"5-NN {knn_gap['difference']:+.3f} [{knn_gap['low']:+.3f}, {knn_gap['high']:+.3f}]",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"train_films": len(train), "seconds": time.time() - start, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
