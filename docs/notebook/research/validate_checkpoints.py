"""Validation AUC of fitted checkpoints: the criterion that chose the features settings.

Scores NIH1000's ``val`` split and the validation half of nih_pneumonia256
(:func:`docs.notebook.research.features_probe.collections`, the films every choice in
docs/notebook/2026-11-results-history.md was made on) with each checkpoint, and prints the AUC within PA and AP films of
each collection and the worst of the four, for the raw score and each component. No test film
is read.

    python -m docs.notebook.research.validate_checkpoints \\
        --model fine-tuned=runs/demo/run/model.pt frozen=runs/val4500/frozen/model.pt \\
        --output runs/val4500/validation.json

``--neighbours 5 10 20`` scores each checkpoint once for each k of the pooled kNN (the setting
``features.neighbours``, read at scoring time), as rows ``NAME k=K``; the other components do
not depend on it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from docs.notebook.research.features_probe import collections, per_view

from cxr_anomaly.checkpoint import LoadedModel, load_checkpoint
from cxr_anomaly.config import DataConfig, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.models.features.torch_model import FeatureDetector

VALIDATION = ("nih1000_val", "pneu_val")
VIEWS = ("PA", "AP")


def view_row(
    scores: dict[str, np.ndarray], sets: dict[str, pd.DataFrame], names: tuple[str, ...] = VALIDATION
) -> dict[str, float]:
    """AUC within each view of each named collection (default: :data:`VALIDATION`), and the worst.

    ``scores`` maps each name to the scores (N,) of its films, in manifest order.
    """
    row: dict[str, float] = {}
    for collection in names:
        aucs = per_view(np.asarray(scores[collection]), sets[collection])
        row.update({f"{collection} {view}": aucs[view] for view in VIEWS})
    row["worst"] = min(row.values())
    return row


def write_rows(rows: dict[str, dict[str, float]], output: Path | None) -> None:
    """Write named rows as JSON to ``output`` (nothing when None)."""
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(rows, indent=2) + "\n")


def load_features_model(path: Path) -> LoadedModel:
    """A features checkpoint, loaded; any other family is refused with a TypeError naming it."""
    model = load_checkpoint(path)
    if not isinstance(model.detector, FeatureDetector):
        raise TypeError(f"{path}: a {model.detector.family} checkpoint; this script needs a features one")
    return model


def named_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> (NAME, PATH)."""
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH")
    return name, Path(path)


def main() -> None:
    """Command-line entry point; prints each checkpoint's rows and writes them as JSON with ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=named_path, nargs="+", required=True, metavar="NAME=CKPT")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the figures")
    parser.add_argument(
        "--neighbours",
        type=int,
        nargs="+",
        default=None,
        metavar="K",
        help="score each checkpoint with each k of the pooled kNN (features.neighbours)",
    )
    args = parser.parse_args()
    sets = collections()
    decoded: dict[tuple[str, DataConfig], np.ndarray] = {}  # films decoded once per collection and input settings
    results: dict[str, dict[str, dict[str, float]]] = {}
    runs = [(name, path, k) for name, path in args.model for k in (args.neighbours or [None])]
    for name, path, k in runs:
        started = time.perf_counter()
        model = load_features_model(path) if k is not None else load_checkpoint(path)
        if k is not None:
            model.detector.config = with_overrides(model.detector.config, "features", neighbours=k)
            name = f"{name} k={k}"
        scored: dict[str, dict[str, np.ndarray]] = {}  # collection -> score name -> (N,)
        for collection in VALIDATION:
            key = (collection, model.config.data)
            if key not in decoded:
                decoded[key] = load_images(sets[collection], model.config.data, workers=2).pixels
            result = model.score_films(decoded[key])
            scored[collection] = {"score": result.raw, **result.components}
        rows = {
            score_name: view_row({collection: scored[collection][score_name] for collection in VALIDATION}, sets)
            for score_name in scored[VALIDATION[0]]
        }
        for score_name, row in rows.items():
            print(
                f"{name} ({model.description}), {score_name}: "
                + ", ".join(f"{key} {value:.3f}" for key, value in row.items())
            )
        print(f"{name}: {time.perf_counter() - started:.0f} s")
        results[name] = rows
    write_rows(results, args.output)


if __name__ == "__main__":
    main()
