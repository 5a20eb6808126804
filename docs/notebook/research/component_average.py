"""Averages of the features detector's components, each standardised, against the raw score alone,
on the rsna_sweep's stored scores (no film runs through a backbone).

Each component is centred on its median and divided by its interquartile range over the films of
one collection (no labels read), then the chosen components are averaged; the rule's two figures
(benchmarks.rsna_sweep.judged) are printed for val and test.

    python -m docs.notebook.research.component_average --sweep runs/sweep --settings trunk16 default-frozen
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from benchmarks import rsna_sweep

COMBINATIONS = (("pooled_knn", "gaussian"), ("pooled_knn", "patch_knn"), ("pooled_knn", "gaussian", "patch_knn"))


def main() -> None:
    """Print the rule's figures of each combination of each setting's stored component scores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, required=True)
    parser.add_argument("--settings", nargs="+", required=True)
    parser.add_argument("--data", type=Path, default=rsna_sweep.DATA_ROOT)
    args = parser.parse_args()
    sets = rsna_sweep.collections(args.data)
    for name in args.settings:
        stored = np.load(args.sweep / name / "scores.npz")
        for combination in COMBINATIONS:
            averaged = {}
            for collection in sets:
                parts = []
                for component in combination:
                    values = stored[f"{component}|{collection.name}"]
                    low, middle, high = np.percentile(values, [25, 50, 75])
                    parts.append((values - middle) / (high - low))
                averaged[collection.name] = np.mean(parts, axis=0)
            row: dict[str, float | None] = {}
            for collection in sets:
                row.update(rsna_sweep.auc_rows(averaged, collection))
            figures = {**rsna_sweep.judged(row, "val"), **rsna_sweep.judged(row, "test")}
            print(name, " + ".join(combination), ", ".join(f"{key} {value:.3f}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
