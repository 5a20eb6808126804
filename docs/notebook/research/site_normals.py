"""Validation AUC when the detector is given normal films of the site being scored.

The default detector's bank holds RSNA normals only, and its features see how a film was made
before what it shows (docs/notebook/2026-11-results-history.md: the layer, bank and view tables). A hospital that
triages its own films can give the detector some of its *own normal* films, which it needs
anyway to set the operating point (``cxr-anomaly calibrate``). This measures two uses of N of
them with the ``make demo`` checkpoint's default score (pooled kNN, k = 5), within each view,
beside the 5-NN pixel baseline given the same films (the view alone scores 0.5 within a view):

- **in the bank:** the site normals join the RSNA normals of the pooled bank (or replace them);
- **alignment:** the site's films are shifted (and optionally scaled per channel) so that its
  normals' mean pooled feature matches the RSNA bank's; the bank is unchanged. Beside it, the
  same with the scored films' own statistics (no site normals, labels unused).

Where the site normals come from, never sharing a patient with a scored film:

- NIH1000 ``val``: the normal films of NIH1000's ``train`` split whose patient has no film in
  ``val`` or ``test`` (the shipped splits share patients; :func:`nih1000_site_normals`).
- The validation half of ``nih_pneumonia256``: five folds by patient inside the half. Each fold
  is scored with the normals of the other four folds as the site's.
- Test parts (reported, not used for any choice): NIH1000 ``test`` with the same ``train``
  normals; the test half of ``nih_pneumonia256`` with the validation half's normals.

    python -m docs.notebook.research.site_normals --model runs/demo/run/model.pt \\
        --output runs/site/site_normals.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from benchmarks.bench_features import DEFAULT_DATA
from docs.notebook.research.features_probe import collections
from docs.notebook.research.pooled_knn_variants import knn_distance, unit_pooled
from docs.notebook.research.validate_checkpoints import VALIDATION, load_features_model, view_row, write_rows

from cxr_anomaly.baselines import KNNBaseline
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.models.features.torch_model import FeatureDetector
from cxr_anomaly.models.tang2019.config import tang2019_config

FOLDS = 5
DRAWS = 3
SITE_COUNTS = (0, 10, 25, 50, 100, 200, -1)  # -1: every site normal there is
TEST = ("nih1000_test", "pneu_test")


@dataclass
class Fold:
    """Films of one collection scored together, and the site normals they may be given.

    Attributes:
        scored: row positions (F,) of the scored films in their collection's manifest.
        site_normals: ``(collection, row positions (P,))`` of the normal films that may join the bank.
    """

    scored: np.ndarray
    site_normals: tuple[str, np.ndarray]


def patient_folds(manifest: pd.DataFrame, folds: int, seed: int) -> list[np.ndarray]:
    """Row positions of ``folds`` groups of the manifest's films, split by patient."""
    patients = np.array(sorted(manifest["patient_id"].astype(str).unique()))
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of_patient = {patients[position]: rank % folds for rank, position in enumerate(order)}
    fold = manifest["patient_id"].astype(str).map(fold_of_patient).to_numpy()
    return [np.flatnonzero(fold == index) for index in range(folds)]


def nih1000_site_normals(data: Path = DEFAULT_DATA) -> pd.DataFrame:
    """NIH1000's ``train`` normals whose patient has no film in ``val`` or ``test``."""
    nih = load_inputs(data / "nih1000" / "manifest.csv")
    held = set(nih.loc[nih["split"] != "train", "patient_id"].astype(str))
    keep = (nih["split"] == "train") & (nih["label"] == 0) & ~nih["patient_id"].astype(str).isin(held)
    return nih[keep].reset_index(drop=True)


def site_folds(sets: dict[str, pd.DataFrame]) -> dict[str, list[Fold]]:
    """For each scored collection, its folds and their site normals (module docstring)."""
    nih_site = ("nih1000_site", np.arange(len(sets["nih1000_site"])))
    pneu_val = sets["pneu_val"]
    parts = patient_folds(pneu_val, FOLDS, seed=0)
    normal = (pneu_val["label"] == 0).to_numpy()
    pneu_folds = []
    for index, scored in enumerate(parts):
        others = np.concatenate([part for other, part in enumerate(parts) if other != index])
        pneu_folds.append(Fold(scored, ("pneu_val", others[normal[others]])))
    return {
        "nih1000_val": [Fold(np.arange(len(sets["nih1000_val"])), nih_site)],
        "nih1000_test": [Fold(np.arange(len(sets["nih1000_test"])), nih_site)],
        "pneu_val": pneu_folds,
        "pneu_test": [Fold(np.arange(len(sets["pneu_test"])), ("pneu_val", np.flatnonzero(normal)))],
    }


def draw(pool: np.ndarray, count: int, generator: np.random.Generator) -> np.ndarray:
    """``count`` of the pool's positions at random (all of them for -1 or a count beyond the pool)."""
    if count < 0 or count >= len(pool):
        return pool
    return np.sort(generator.choice(pool, size=count, replace=False))


def main() -> None:
    """Command-line entry point; prints one line per setting and writes them as JSON with ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument(
        "--rsna-films",
        type=int,
        default=4500,
        help="first RSNA films the pixel baseline is fitted on (the checkpoint's bank size)",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    model = load_features_model(args.model)
    detector = cast(FeatureDetector, model.detector)
    sets = collections()
    sets["nih1000_site"] = nih1000_site_normals()
    names = ("nih1000_site", "nih1000_val", "nih1000_test", "pneu_val", "pneu_test")
    features = {
        name: unit_pooled(detector, load_images(sets[name], model.config.data, workers=2).pixels) for name in names
    }
    pixel_config = tang2019_config().data  # 64 px, as every pixel baseline in docs/notebook/2026-11-results-history.md
    pixels = {name: load_images(sets[name], pixel_config, workers=2).pixels for name in names}
    rsna_pixels = load_images(sets["rsna"].iloc[: args.rsna_films], pixel_config, workers=2).pixels
    print(f"features and pixels: {time.perf_counter() - started:.0f} s", flush=True)
    rsna_bank = detector.pooled_bank.double()  # (4500, D) unit pooled features of the fit normals
    folds = site_folds(sets)
    neighbours = model.config.features.neighbours

    def scores_with(
        count: int, seed: int, names: tuple[str, ...], *, rsna: bool = True, pixel: bool = False, align: str = ""
    ) -> dict[str, np.ndarray]:
        generator = np.random.default_rng(seed)
        result: dict[str, np.ndarray] = {}
        for name in names:
            scores = np.empty(len(sets[name]))
            for fold in folds[name]:
                source, pool = fold.site_normals
                chosen = draw(pool, count, generator)
                if pixel:
                    train = np.concatenate([rsna_pixels, pixels[source][chosen]])
                    baseline = KNNBaseline(pixel_config).fit(train)
                    scores[fold.scored] = baseline.score(pixels[name][fold.scored])
                elif align:
                    queries = features[name][fold.scored]
                    # "films": the scored films' own statistics, labels unused (no site normals)
                    reference = queries if align.endswith("films") else features[source][chosen]
                    scores[fold.scored] = knn_distance(
                        aligned(queries, reference, align), rsna_bank, neighbours
                    ).numpy()
                else:
                    site = features[source][chosen]
                    bank = torch.cat([rsna_bank, site]) if rsna else site
                    scores[fold.scored] = knn_distance(features[name][fold.scored], bank, neighbours).numpy()
            result[name] = scores
        return result

    def aligned(queries: torch.Tensor, site: torch.Tensor, how: str) -> torch.Tensor:
        # Move the site's films so that its normals' statistics match the RSNA bank's: the
        # pipeline's offset (mean) or offset and scale (per channel), without adding neighbours.
        if how.startswith("mean"):
            return queries - site.mean(dim=0) + rsna_bank.mean(dim=0)
        spread = site.std(dim=0).clamp_min(1e-6)
        return (queries - site.mean(dim=0)) / spread * rsna_bank.std(dim=0) + rsna_bank.mean(dim=0)

    results: dict[str, dict[str, float]] = {}

    def record(label: str, rows: list[dict[str, float]]) -> None:
        # one row, or the mean of several draws of the site normals with the worst view's spread
        results[label] = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
        if len(rows) > 1:
            results[label]["worst, std over draws"] = float(np.std([row["worst"] for row in rows]))
        print(label, json.dumps({key: round(value, 3) for key, value in results[label].items()}), flush=True)

    variants: dict[str, dict[str, Any]] = {
        "site normals only (no RSNA)": {"rsna": False},
        "RSNA bank; site films shifted by the mean of all site normals": {"align": "mean"},
        "RSNA bank; site films shifted and scaled per channel (all site normals)": {"align": "scale"},
        "RSNA bank; scored films shifted by their own mean (labels unused)": {"align": "mean of films"},
        "RSNA bank; scored films shifted and scaled by their own statistics": {"align": "scale of films"},
    }
    for scored, part in ((VALIDATION, "validation"), (TEST, "test")):
        for count in SITE_COUNTS:
            seeds = range(1 if count in (0, -1) else DRAWS)
            record(
                f"{part}: RSNA bank + {'all' if count < 0 else count} site normals",
                [view_row(scores_with(count, seed, scored), sets, scored) for seed in seeds],
            )
        for label, options in variants.items():
            record(f"{part}: {label}", [view_row(scores_with(-1, 0, scored, **options), sets, scored)])
        for count in (10, 25, 50, 100):
            record(
                f"{part}: RSNA bank; site films shifted by the mean of {count} site normals",
                [view_row(scores_with(count, seed, scored, align="mean"), sets, scored) for seed in range(DRAWS)],
            )
        for count in (0, -1):
            record(
                f"{part}: 5-NN pixel distance, 64 px, RSNA {args.rsna_films} + {'all' if count < 0 else count} "
                "site normals",
                [view_row(scores_with(count, 0, scored, pixel=True), sets, scored)],
            )
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    write_rows(results, args.output)


if __name__ == "__main__":
    main()
