"""AUC of each stored score component of a ``cxr-anomaly benchmark`` folder's tang2019 cells,
overall and within each view (issue 11: which part of eq. 6 ranks the films which way).

    python -m docs.notebook.research.benchmark_components runs/paper_scale/variants \\
        nih1000_test=../shared/data/nih1000/manifest.csv nih_pneumonia256_test_half=HALVES.csv

The films of each collection are chosen as ``benchmark`` chose them (its ``test`` split, labelled
rows), so the stored scores line up with them row by row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_anomaly.evaluation import safe_auc
from cxr_anomaly.jobs.benchmark import choose_test_films

COMPONENTS = ("raw", "reconstruction", "adversarial", "latent", "code_distance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a benchmark --out folder")
    parser.add_argument("tests", nargs="+", metavar="NAME=DATA", help="the --test collections of that run")
    args = parser.parse_args()
    rows = []
    for spec in args.tests:
        name, _, source = spec.partition("=")
        manifest, _ = choose_test_films(name, Path(source))
        labels = manifest["label"].to_numpy().astype(int)
        views = manifest["view"].astype(str).to_numpy()
        for cell in sorted((args.folder / "cells").glob("tang2019-*")):
            with np.load(cell / f"scores_{name}.npz") as stored:
                for component in COMPONENTS:
                    scores = stored[component]
                    if np.all(np.isnan(scores)):
                        continue
                    row = {
                        "collection": name,
                        "cell": cell.name,
                        "component": component,
                        "all": safe_auc(labels, scores),
                    }
                    for view in ("PA", "AP"):
                        row[view] = safe_auc(labels[views == view], scores[views == view])
                    rows.append(row)
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
