"""The features detector's pooled scores under bf16 autocast, before and after they moved to fp32.

Usage::

    python -m docs.notebook.research.pooled_scores_precision --model runs/demo/run/model.pt \\
        [--rounds 7] [--output runs/precision/pooled_scores_precision.json]

Before, the Gaussian and the pooled kNN (the default score) were computed under the caller's
autocast, so in bf16 the cosine similarity of a film to a normal, a number near 1, was rounded to
steps of 2^-8. After, :meth:`~cxr_anomaly.models.features.torch_model.FeatureDetector.pooled_scores`
turns autocast off for those two products (:func:`cxr_anomaly.inference.without_autocast`); the
backbone and the patch search still run in bf16. "Before" is the library with that context
patched back to a no-op, in the same process.

With a features checkpoint, on the validation films (the criterion of every choice) and the test
parts (reported, not chosen on) of :func:`docs.notebook.research.features_probe.collections`:

- the number of distinct values of the score and of each component, before and after;
- the AUC within each view of each collection, before and after;
- whether the patch component is the same bit for bit (it should be: its code did not change),
  and whether every number is in fp32 (it should be: autocast is off there already);
- ``score_films`` on the test films, before and after in turn within each of ``--rounds`` rounds
  after a warm-up (:func:`docs.notebook.research.scoring_overheads.time_rounds`): the cost of fp32.

The precision is ``auto`` throughout but for that fp32 check: on a CPU without native bf16 both
variants are fp32 and must agree bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from benchmarks.common import git_commit, machine_facts
from docs.notebook.research.features_probe import collections
from docs.notebook.research.pooled_density import TEST
from docs.notebook.research.scoring_overheads import report, time_rounds
from docs.notebook.research.validate_checkpoints import VALIDATION, load_features_model, view_row

from cxr_anomaly import inference
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.scoring import ScoreResult, score_films


@contextlib.contextmanager
def pooled_scores_under_autocast() -> Iterator[None]:
    """The library as before: the pooled scores' products under the caller's autocast."""
    with mock.patch.object(inference, "without_autocast", lambda device: contextlib.nullcontext()):
        yield


def columns(result: ScoreResult) -> dict[str, np.ndarray]:
    """The raw score and each component, by name."""
    return {"score": result.raw, **result.components}


def main() -> None:
    """Command-line entry point; prints the figures and writes them as JSON with ``--output``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a features checkpoint")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    precision = inference.resolve_precision("auto", "cpu")
    print(f"commit {git_commit()}; {machine_facts()}; precision {precision}, {torch.get_num_threads()} threads")
    model = load_features_model(args.model)
    sets = collections()
    names = VALIDATION + TEST
    pixels = {name: load_images(sets[name], model.config.data, workers=2).pixels for name in names}
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {"before": {}, "after": {}}
    for name in names:
        with pooled_scores_under_autocast():
            scores["before"][name] = columns(score_films(model.detector, pixels[name]))
        scores["after"][name] = columns(score_films(model.detector, pixels[name]))

    figures: dict[str, dict[str, object]] = {}
    for variant, by_set in scores.items():
        distinct = {name: {column: len(np.unique(values)) for column, values in by_set[name].items()} for name in names}
        aucs = {
            column: {
                **view_row({name: by_set[name][column] for name in VALIDATION}, sets),
                **{
                    f"test: {key}": value
                    for key, value in view_row({name: by_set[name][column] for name in TEST}, sets, TEST).items()
                },
            }
            for column in by_set[names[0]]
        }
        figures[variant] = {"films": {name: len(pixels[name]) for name in names}, "distinct": distinct, "auc": aucs}
        print(variant, "distinct values:", json.dumps(distinct))
        for column, row in aucs.items():
            print(f"  {variant} {column}:", json.dumps({key: round(value, 3) for key, value in row.items()}))
    same_patches = all(
        np.array_equal(scores["before"][name]["patch_knn"], scores["after"][name]["patch_knn"]) for name in names
    )
    print(f"patch component equal bit for bit: {same_patches}")
    # In fp32 autocast is off already, so the change must leave every number as it was.
    with pooled_scores_under_autocast():
        fp32_before = columns(score_films(model.detector, pixels[VALIDATION[0]], precision="fp32"))
    fp32_after = columns(score_films(model.detector, pixels[VALIDATION[0]], precision="fp32"))
    same_in_fp32 = all(np.array_equal(fp32_before[column], fp32_after[column]) for column in fp32_before)
    print(f"in fp32, score and components equal bit for bit on {VALIDATION[0]}: {same_in_fp32}")

    films = np.concatenate([pixels[name] for name in TEST])

    def score_before() -> object:
        with pooled_scores_under_autocast():
            return score_films(model.detector, films)

    seconds = time_rounds({"before": score_before, "after": lambda: score_films(model.detector, films)}, args.rounds)
    report(f"score_films on {len(films)} decoded test films (times for all of them)", seconds)
    rates = {variant: len(films) / statistics.median(values) for variant, values in seconds.items()}
    print(f"score_films films/s: before {rates['before']:.1f}, after {rates['after']:.1f}")
    figures["timing"] = {
        "films": len(films),
        "seconds": seconds,
        "films_per_second": rates,
        "commit": git_commit(),
        "machine": machine_facts(),
        "precision": precision,
        "patch_component_bit_identical": same_patches,
        "fp32_bit_identical": same_in_fp32,
    }
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
