"""Post-hoc analysis of a finished ``cxr-anomaly reproduce`` folder (issue 4 research).

For each variant and score method: the test AUC over all views, within each view, and after
standardising each film's score against the *validation normals of its own view* (a one-class
use of the view column: AP films are darker and look different, so "how unusual for an AP
film" may be fairer than "how unusual"). Prints JSON; choices are to be made on ``val`` numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_anomaly.config import with_overrides
from cxr_anomaly.evaluation import safe_auc
from cxr_anomaly.models.tang2019 import weighted_score
from cxr_anomaly.models.tang2019.config import tang2019_config


def combine(config, reconstruction, adversarial, latent, code_distance):  # type: ignore[no-untyped-def]
    """The raw score of ``config.score.method`` from stored components; all-NaN ones are absent."""

    def present(values: np.ndarray) -> np.ndarray | None:
        return None if np.all(np.isnan(values)) else values

    return weighted_score(config.score, reconstruction, present(adversarial), present(latent), present(code_distance))


def view_standardised(
    scores: np.ndarray, views: np.ndarray, reference: np.ndarray, reference_views: np.ndarray
) -> np.ndarray:
    """Robust z-score of each score against the reference scores of the same view."""
    result = np.empty_like(scores)
    for view in np.unique(views):
        pool = reference[reference_views == view]
        median = np.median(pool)
        scale = 1.4826 * np.median(np.abs(pool - median)) or 1.0
        result[views == view] = (scores[views == view] - median) / scale
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    split = pd.read_csv(args.run_dir / "split.csv")
    val = split[split["used_for"] == "val"]
    test = split[split["used_for"] == "test"]
    val_labels, test_labels = val["label"].to_numpy(int), test["label"].to_numpy(int)
    val_views, test_views = val["view"].astype(str).to_numpy(), test["view"].astype(str).to_numpy()
    report: dict[str, dict[str, list[float]]] = {}
    for cell in sorted((args.run_dir / "cells").iterdir()):
        variant = cell.name.rsplit("-seed", 1)[0]
        stored = np.load(cell / "scores.npz")
        for method in ("eq6", "code_knn"):
            config = with_overrides(tang2019_config(), "score", method=method)
            raw = {
                part: combine(
                    config,
                    stored[f"{part}_reconstruction"],
                    stored[f"{part}_adversarial"],
                    stored[f"{part}_latent"],
                    stored[f"{part}_code_distance"],
                )
                for part in ("val", "test")
            }
            normal = val_labels == 0
            adjusted_test = view_standardised(raw["test"], test_views, raw["val"][normal], val_views[normal])
            adjusted_val = view_standardised(raw["val"], val_views, raw["val"][normal], val_views[normal])
            entry = report.setdefault(f"{variant} {method}", {})
            for name, value in (
                ("test", safe_auc(test_labels, raw["test"])),
                ("val", safe_auc(val_labels, raw["val"])),
                ("test_view_standardised", safe_auc(test_labels, adjusted_test)),
                ("val_view_standardised", safe_auc(val_labels, adjusted_val)),
                *[
                    (f"test@{view}", safe_auc(test_labels[test_views == view], raw["test"][test_views == view]))
                    for view in ("PA", "AP")
                ],
            ):
                entry.setdefault(name, []).append(value)
    summary = {
        key: {
            name: f"{np.mean([v for v in values if v is not None]):.3f} ± "
            f"{np.std([v for v in values if v is not None], ddof=1):.3f}"
            for name, values in entry.items()
        }
        for key, entry in report.items()
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
