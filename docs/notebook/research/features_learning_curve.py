"""Learning curve of the default features score (issue 10, point 6): AUC per view against the
number of rsna_normal224 normals it is fitted on, from the feature maps that
``docs.notebook.research.features_probe dump`` stored (so no film is run through the backbone again).

    python -m docs.notebook.research.features_learning_curve --tag efficientnet_lite0_224_crop20+detail64+equalize

Each size is a seeded random draw from the dumped normals (the first 2,000 of rsna_normal224);
the 5,000-normal point is the ``make demo`` model (docs/notebook/2026-11-results-history.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from docs.notebook.research.features_probe import per_view, pooled


def pooled_knn(train: np.ndarray, test: np.ndarray, neighbours: int = 5) -> np.ndarray:
    """Mean cosine distance of each test row to its nearest training rows, as the detector scores."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    return 1.0 - np.sort(test @ train.T, axis=1)[:, -neighbours:].mean(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/probe"))
    parser.add_argument("--tag", default="efficientnet_lite0_224_crop20+detail64+equalize")
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--draws", type=int, default=3, help="random draws per size (seeds 0..N-1)")
    parser.add_argument("--sets", nargs="+", default=["nih1000_val", "pneu_val", "nih1000_test", "pneu_test"])
    args = parser.parse_args()
    train = pooled(dict(np.load(args.work / f"{args.tag}_rsna.npz")), [32])  # (N, 320)
    rows = []
    for name in args.sets:
        manifest = pd.read_csv(args.work / f"manifest_{name}.csv")
        test = pooled(dict(np.load(args.work / f"{args.tag}_{name}.npz")), [32])
        for size in args.sizes:
            for draw in range(args.draws if size < len(train) else 1):
                chosen = np.random.default_rng(draw).choice(len(train), size=min(size, len(train)), replace=False)
                rows.append(
                    {"set": name, "normals": size, "draw": draw, **per_view(pooled_knn(train[chosen], test), manifest)}
                )
    table = pd.DataFrame(rows).groupby(["set", "normals"])[["all", "PA", "AP", "PA_adult"]].agg(["mean", "std"])
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
