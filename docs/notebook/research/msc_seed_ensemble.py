"""An ensemble over fine-tuning seeds: is the mean of several MSC-fine-tuned backbones' pooled kNN
scores better on validation films than one of them (issue 10, point 6: ensembles)?

Each member is a run of :mod:`docs.notebook.research.msc_finetune` with ``--save-embeddings``: the
same normals and settings, another seed. The ensemble scores a film by the mean of the members'
kNN-5 cosine distances (each member's distances are on the same scale, so no ranks are needed
and a film is scored on its own), or by the kNN-5 of the members' unit features concatenated.

    python -m docs.notebook.research.msc_finetune --train-films 2000 --epochs 2 --learning-rate 3e-5 \\
        --seed 0 --save-embeddings --out runs/ens/seed0        # and --seed 1 ... --out runs/ens/seed1
    python -m docs.notebook.research.msc_seed_ensemble runs/ens/seed0 runs/ens/seed1 --epoch 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from docs.notebook.research.features_probe import collections
from docs.notebook.research.features_variants import knn
from docs.notebook.research.validate_checkpoints import VALIDATION, view_row, write_rows


def unit(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="msc_finetune --out folders, one per seed")
    parser.add_argument("--epoch", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    sets = collections()
    members = [dict(np.load(run / f"embeddings_epoch{args.epoch}.npz")) for run in args.runs]
    rows: dict[str, dict[str, float]] = {}
    member_scores = []
    for run, member in zip(args.runs, members):
        scores = {name: knn(member["rsna"], member[name], 5) for name in VALIDATION}
        member_scores.append(scores)
        rows[f"member {run.name}"] = view_row(scores, sets)
    rows["mean of the members' kNN distances"] = view_row(
        {name: np.mean([scores[name] for scores in member_scores], axis=0) for name in VALIDATION}, sets
    )
    concatenated = {
        key: np.concatenate([unit(member[key]) for member in members], axis=1) for key in ("rsna", *VALIDATION)
    }
    rows["kNN of the concatenated unit features"] = view_row(
        {name: knn(concatenated["rsna"], concatenated[name], 5) for name in VALIDATION}, sets
    )
    table = pd.DataFrame(rows).T.round(3)
    print(table.to_string())
    write_rows(rows, args.output)


if __name__ == "__main__":
    main()
