"""Validation AUC of the pooled kNN when each film is described by several views of it.

Test-time (and fit-time) augmentation for the features detector's raw score: a film's pooled
feature becomes the mean of the unit pooled features of a few views of it. The views are the
film itself, its mirror image, and a centre crop of 90% resized back. The same views describe
the training normals (the bank) and the validation films, so the kNN compares like with like.
The idea is that framing and left-right placement differ between hospitals' pipelines, and
averaging over them might leave more of what the film shows. The checkpoint's fine-tuned
backbone and preprocessing are kept; the bank is rebuilt from ``--normals`` films of its
training manifest for every variant (the plain one included, so the variants differ only in
their views). Validation films only (:mod:`docs.notebook.research.validate_checkpoints`).

    python -m docs.notebook.research.pooled_tta --model runs/demo/run/model.pt \\
        --manifest runs/demo/train_manifest.csv --normals 4500 --output runs/tta/pooled_tta.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from docs.notebook.research.features_probe import collections
from docs.notebook.research.pooled_knn_variants import knn_distance, unit_pooled
from docs.notebook.research.validate_checkpoints import VALIDATION, load_features_model, view_row, write_rows
from PIL import Image

from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.models.features.torch_model import FeatureDetector


def mirrored(pixels: np.ndarray) -> np.ndarray:
    """uint8 films (N, S, S) flipped left to right."""
    return np.ascontiguousarray(pixels[:, :, ::-1])


def centre_crop(pixels: np.ndarray, keep: float = 0.9) -> np.ndarray:
    """The central ``keep`` of each uint8 film (N, S, S), resized back to S x S."""
    size = pixels.shape[-1]
    margin = int(round(size * (1.0 - keep) / 2))
    box = (margin, margin, size - margin, size - margin)
    return np.stack(
        [np.asarray(Image.fromarray(film).resize((size, size), Image.Resampling.BILINEAR, box=box)) for film in pixels]
    )


VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "plain": lambda pixels: pixels,
    "mirror": mirrored,
    "crop90": centre_crop,
}


def rebuilt_bank_parser(description: str) -> argparse.ArgumentParser:
    """The options of the scripts that rebuild a checkpoint's pooled bank from its training films."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="the checkpoint's training manifest")
    parser.add_argument("--normals", type=int, default=4500, help="the first NORMALS films of the manifest")
    parser.add_argument("--output", type=Path, default=None)
    return parser


def main() -> None:
    """Command-line entry point; prints one line per set of views and writes them as JSON with ``--output``."""
    args = rebuilt_bank_parser(__doc__.splitlines()[0]).parse_args()
    model = load_features_model(args.model)
    detector = cast(FeatureDetector, model.detector)
    torch.manual_seed(0)  # nothing here draws; set so that a later change cannot draw unseeded
    started = time.perf_counter()
    normals = load_images(pd.read_csv(args.manifest).head(args.normals), model.config.data).pixels
    sets = collections()
    films = {name: load_images(sets[name], model.config.data).pixels for name in VALIDATION}
    bank: dict[str, torch.Tensor] = {}
    queries: dict[str, dict[str, torch.Tensor]] = {}
    for view, transform in VIEWS.items():
        bank[view] = unit_pooled(detector, transform(normals))
        queries[view] = {name: unit_pooled(detector, transform(pixels)) for name, pixels in films.items()}
        print(f"view {view}: {time.perf_counter() - started:.0f} s", flush=True)

    def described(views: tuple[str, ...], features: dict[str, torch.Tensor]) -> torch.Tensor:
        mean = torch.stack([features[view] for view in views]).mean(dim=0)  # (N, D)
        return mean / mean.norm(dim=1, keepdim=True)

    results: dict[str, dict[str, float]] = {}
    for views in (("plain",), ("plain", "mirror"), ("plain", "crop90"), ("plain", "mirror", "crop90")):
        reference = described(views, bank)
        scores = {
            name: knn_distance(described(views, {view: queries[view][name] for view in views}), reference, 5).numpy()
            for name in VALIDATION
        }
        results[" + ".join(views)] = view_row(scores, sets)
        print(
            " + ".join(views),
            json.dumps({key: round(value, 3) for key, value in results[" + ".join(views)].items()}),
            flush=True,
        )
    write_rows(results, args.output)


if __name__ == "__main__":
    main()
