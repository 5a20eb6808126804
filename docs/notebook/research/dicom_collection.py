"""The issue author's path with a DICOM collection: does `evaluate` on a PACS-like folder give the
same per-view and adult AUCs as on the PNG manifest of the same films?

Usage::

    python -m docs.notebook.research.dicom_collection --model runs/demo/run/model.pt --out runs/dicom_check
    python -m docs.notebook.research.dicom_collection --part all --write-only --out runs/dicom_all

The test half of ``nih_pneumonia256`` (``split_patients_in_halves``, seed 0: ``make demo``'s), or
with ``--part all`` all 959 of its films (the collection as the issue's probe scored it), is
written as uncompressed 8-bit DICOM files in ``normal/`` and ``abnormal/`` folders with no manifest.
The view is only in each file's ``ViewPosition`` and the age only in ``PatientAge``. Both sets are
evaluated with the same checkpoint (:func:`cxr_anomaly.jobs.evaluate.evaluate_job`); the script prints
which metrics differ (none should: 8-bit DICOM pixels decode to the PNG's) and the largest score
difference.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from benchmarks.bench_features import write_dicom
from PIL import Image

from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.data.splits import split_patients_in_halves
from cxr_anomaly.jobs.evaluate import evaluate_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint to evaluate (needed unless --write-only)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument(
        "--part",
        choices=("test", "all"),
        default="test",
        help="the demo's test half (default) or every film of nih_pneumonia256",
    )
    parser.add_argument("--write-only", action="store_true", help="write the DICOM folder and stop")
    args = parser.parse_args()
    if args.model is None and not args.write_only:
        parser.error("--model is needed unless --write-only")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    halves = split_patients_in_halves(load_inputs(args.data / "nih_pneumonia256" / "manifest.csv"), seed=0)
    test = halves[halves["split"] == "test"] if args.part == "test" else halves
    manifest = args.out / f"{args.part}_films.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    test.to_csv(manifest, index=False)
    for index, row in enumerate(test.itertuples()):
        folder = args.out / "dicom" / ("abnormal" if row.label == 1 else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        age = None if pd.isna(row.age) else f"{int(row.age):03d}Y"
        write_dicom(
            np.asarray(Image.open(row.path).convert("L")), folder / f"IM{index:04d}", index, view=row.view, age=age
        )
    if args.write_only:
        return
    runs = {
        name: evaluate_job(
            args.model, [source], args.out / f"eval_{name}", split="all", progress=False, baselines=False
        )
        for name, source in (("dicom", args.out / "dicom"), ("png", manifest))
    }
    metrics = {name: json.loads(run.metrics_path.read_text()) for name, run in runs.items()}
    differing = [key for key in metrics["png"] if key != "model" and metrics["png"][key] != metrics["dicom"].get(key)]
    scores = {name: np.sort(pd.read_csv(run.scores_path)["score_raw"].to_numpy()) for name, run in runs.items()}
    print(
        f"metrics that differ: {differing or 'none'}; largest difference between the sorted raw scores: "
        f"{np.abs(scores['png'] - scores['dicom']).max():.3g}"
    )
    for name in ("png", "dicom"):
        print(
            name,
            "AUC",
            round(metrics[name]["auc"], 4),
            "per view",
            metrics[name]["auc_per_view"],
            "adults per view",
            metrics[name]["adults"]["auc_per_view"],
        )


if __name__ == "__main__":
    main()
