"""Validation AUC of variants of the pooled kNN score on a fitted checkpoint (no refit).

The checkpoint's pooled bank holds the unit pooled features of its training normals (all of
them below ``features.pooled_bank_size``), so variants of the kNN need only the validation
films' features: the number of neighbours k, and centring the features on the normals' mean,
with or without the leading principal components of the normals removed (what a Gaussian
"whitening" of the pipeline's global differences would do). Validation films only
(:mod:`docs.notebook.research.validate_checkpoints`' two collections).

    python -m docs.notebook.research.pooled_knn_variants --model runs/demo/run/model.pt
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from docs.notebook.research.features_probe import collections
from docs.notebook.research.validate_checkpoints import VALIDATION, load_features_model, view_row, write_rows

from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.models.features.torch_model import FeatureDetector


def knn_distance(queries: torch.Tensor, bank: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Mean cosine distance (Q,) of queries (Q, D) to their ``neighbours`` nearest bank rows (M, D)."""
    queries = queries / queries.norm(dim=1, keepdim=True)
    bank = bank / bank.norm(dim=1, keepdim=True)
    return 1.0 - (queries @ bank.T).topk(neighbours, dim=1).values.mean(dim=1)


def unit_pooled(detector: FeatureDetector, pixels: np.ndarray, batch: int = 32) -> torch.Tensor:
    """Unit pooled features (N, D) of uint8 films (N, S, S), as the detector's pooled bank stores them."""
    parts = []
    with torch.inference_mode():
        for begin in range(0, len(pixels), batch):
            parts.append(detector.pooled_features(detector.model_input(pixels[begin : begin + batch])).double())
    pooled = torch.cat(parts)
    return pooled / pooled.norm(dim=1, keepdim=True)


def main() -> None:
    """Command-line entry point; prints one line per variant and writes them as JSON with ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    model = load_features_model(args.model)
    detector = cast(FeatureDetector, model.detector)
    sets = collections()
    features: dict[str, torch.Tensor] = {}
    for name in VALIDATION:
        features[name] = unit_pooled(detector, load_images(sets[name], model.config.data, workers=2).pixels)
    bank = detector.pooled_bank.double()  # (K, D) unit vectors of the training normals
    mean = bank.mean(dim=0)
    _, _, directions = torch.linalg.svd(bank - mean, full_matrices=False)  # (D, D) rows: principal axes

    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        f"k={k}": (lambda queries, k=k: knn_distance(queries, bank, k)) for k in (1, 3, 5, 10, 20, 50)
    }
    variants["k=5, centred on the normals' mean"] = lambda queries: knn_distance(queries - mean, bank - mean, 5)
    for dropped in (1, 2, 4, 8, 16):
        kept = directions[dropped:].T  # (D, D - dropped)
        variants[f"k=5, centred, leading {dropped} principal components removed"] = lambda queries, kept=kept: (
            knn_distance((queries - mean) @ kept, (bank - mean) @ kept, 5)
        )

    results: dict[str, dict[str, float]] = {}
    for name, score in variants.items():
        results[name] = view_row({collection: score(features[collection]).numpy() for collection in VALIDATION}, sets)
        print(name, json.dumps({key: round(value, 3) for key, value in results[name].items()}))
    write_rows(results, args.output)


if __name__ == "__main__":
    main()
