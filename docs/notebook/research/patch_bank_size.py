"""Validation AUC and cost of the patch memory bank's size and grid, on a fitted checkpoint.

The patch memory bank (``features.memory_bank_size`` patches on a ``features.patch_grid`` grid)
is the largest part of the scoring graph's FLOPs and of the fit's time (greedy coreset). This
script keeps the checkpoint's backbone (fine-tuned or not), embeds the checkpoint's own training
normals once, builds a bank of each asked size and grid with the fit's own recipe
(:func:`cxr_anomaly.models.features.fitting.patch_memory_bank`, same seed), and scores the
validation films (:mod:`docs.notebook.research.validate_checkpoints`' two collections; no test film
is read) with the patch score of each. The checkpoint's stored bank is scored too, as the
reference.

    python -m docs.notebook.research.patch_bank_size --model runs/demo/run/model.pt \\
        --train-manifest runs/demo/train_manifest.csv --banks 4096:14 1024:14 4096:7 \\
        --output runs/patch_bank_size.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch
from docs.notebook.research.features_probe import collections
from docs.notebook.research.validate_checkpoints import VALIDATION, load_features_model, view_row, write_rows

from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.data.selection import select_training_rows
from cxr_anomaly.models.features.fitting import patch_memory_bank
from cxr_anomaly.models.features.torch_model import FeatureDetector, nearest_distances


def bank_setting(text: str) -> tuple[int, int]:
    """``SIZE:GRID`` -> (SIZE, GRID)."""
    size, separator, grid = text.partition(":")
    if not separator or not size.isdigit() or not grid.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected SIZE:GRID, e.g. 4096:14")
    return int(size), int(grid)


def embed_patches(
    detector: FeatureDetector, pixels: np.ndarray, grids: list[int], batch_size: int = 32
) -> dict[int, torch.Tensor]:
    """uint8 films (N, S, S) -> {grid: (N, g*g, C) float16 patch features}, one backbone pass."""
    parts: dict[int, list[torch.Tensor]] = {grid: [] for grid in grids}
    with torch.inference_mode():
        for begin in range(0, len(pixels), batch_size):
            maps = detector.backbone(detector.model_input(pixels[begin : begin + batch_size]))
            for grid in grids:
                patches = detector.patch_features(maps, grid)  # (B, C, g, g)
                parts[grid].append(patches.permute(0, 2, 3, 1).flatten(1, 2).half())  # (B, g*g, C)
    return {grid: torch.cat(chunks) for grid, chunks in parts.items()}


def main() -> None:
    """Command-line entry point; prints one line per bank and writes them as JSON with ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument(
        "--train-manifest",
        type=Path,
        required=True,
        help="the manifest the checkpoint was trained from (its training normals are re-selected)",
    )
    parser.add_argument("--banks", type=bank_setting, nargs="+", required=True, metavar="SIZE:GRID")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    model = load_features_model(args.model)
    detector = cast(FeatureDetector, model.detector)
    settings = model.config.features
    stored_grid = settings.patch_grid
    grids = sorted({grid for _, grid in args.banks} | {stored_grid})

    chosen = select_training_rows(load_inputs(args.train_manifest), model.config, str(args.train_manifest))
    started = time.perf_counter()
    train_pixels = load_images(chosen.train, model.config.data, workers=2).pixels
    train_patches = embed_patches(detector, train_pixels, grids)
    print(f"embedded {len(train_pixels)} training normals in {time.perf_counter() - started:.0f} s")

    sets = collections()
    validation = {
        name: embed_patches(detector, load_images(sets[name], model.config.data, workers=2).pixels, grids)
        for name in VALIDATION
    }

    banks: dict[str, tuple[torch.Tensor, int, float]] = {
        f"stored {len(detector.patch_bank)}:{stored_grid}": (detector.patch_bank, stored_grid, float("nan"))
    }
    for size, grid in args.banks:
        generator = torch.Generator().manual_seed(settings.seed)
        started = time.perf_counter()
        flat = train_patches[grid].flatten(0, 1)  # (N*g*g, C)
        bank = patch_memory_bank(flat, size, settings.coreset_projection_dim, generator)
        banks[f"{size}:{grid}"] = (bank, grid, time.perf_counter() - started)

    results: dict[str, dict[str, float]] = {}
    for name, (bank, grid, seconds) in banks.items():
        timings: dict[str, float] = {"coreset_seconds": seconds}
        scores = {}
        for collection in VALIDATION:
            patches = validation[collection][grid]  # (N, g*g, C)
            started = time.perf_counter()
            nearest = nearest_distances(patches.flatten(0, 1).float(), bank).reshape(len(patches), -1)
            timings[f"{collection} search ms/film"] = 1000 * (time.perf_counter() - started) / len(patches)
            scores[collection] = nearest.max(dim=1).values.numpy()  # the patch score of each film
        results[name] = {**timings, **view_row(scores, sets)}
        print(name, json.dumps({key: round(value, 3) for key, value in results[name].items()}))
    write_rows(results, args.output)


if __name__ == "__main__":
    main()
