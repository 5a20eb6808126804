"""Validation AUC of the pooled kNN against the training normals of the film's own view.

RSNA's "Normal" films carry no view (about 18% are AP), and the default score compares every
film with all of them, so an AP film starts far from a bank that is mostly PA (among NIH1000's
validation normals the default score predicts AP with an AUC of about 0.76). Here a view
classifier (logistic regression on the unit pooled features) is fitted on the *normal* films of
NIH1000's ``train`` split, whose views are known; no validation or test film and no abnormal film
is used to fit it. It labels each film of the checkpoint's pooled bank PA or AP, and a film is
then scored against the bank films of its own view only:

- ``own view (given)``: the film's view from its manifest (or a DICOM header);
- ``own view (predicted)``: the film's view from the classifier, for films without one.

The criterion is the worst of the four validation views; ``--test`` adds the test parts,
reported, never used for the choice. No refit of the detector.

    python -m docs.notebook.research.view_banks --model runs/demo/run/model.pt --test \\
        --output runs/views/view_banks.json
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from docs.notebook.research.features_probe import DATA
from docs.notebook.research.pooled_density import (
    TEST,
    checkpoint_arguments,
    nearest,
    open_features_checkpoint,
    predicts_view,
)
from docs.notebook.research.pooled_knn_variants import unit_pooled
from docs.notebook.research.validate_checkpoints import VALIDATION, view_row
from sklearn.linear_model import LogisticRegression

from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs

NEIGHBOURS = 5


def knn_within(
    queries: torch.Tensor, bank: torch.Tensor, query_is_ap: np.ndarray, bank_is_ap: np.ndarray
) -> np.ndarray:
    """Mean cosine distance (Q,) of each unit query to its nearest unit bank rows of the same view."""
    scores = np.empty(len(queries))
    for is_ap in (False, True):
        rows = np.flatnonzero(query_is_ap == is_ap)
        if len(rows):
            part = nearest(queries[rows], bank[torch.from_numpy(bank_is_ap == is_ap)], NEIGHBOURS)
            scores[rows] = part.distances.mean(dim=1).numpy()
    return scores


def main() -> None:
    """Command-line entry point; prints one line per variant and writes them as JSON with ``--output``."""
    args = checkpoint_arguments(__doc__.splitlines()[0])
    started = time.perf_counter()
    checkpoint = open_features_checkpoint(args.model)
    model, detector, sets = checkpoint.model, checkpoint.detector, checkpoint.sets
    nih = load_inputs(DATA / "nih1000" / "manifest.csv")
    sets["view_train"] = nih[(nih["split"] == "train") & (nih["label"] == 0)].reset_index(drop=True)
    names = VALIDATION + (TEST if args.test else ())
    features = {
        name: unit_pooled(detector, load_images(sets[name], model.config.data, workers=2).pixels, batch=16)
        for name in ("view_train", *names)
    }
    bank = detector.pooled_bank.double()
    bank = bank / bank.norm(dim=1, keepdim=True)  # (M, D)

    classifier = LogisticRegression(C=1.0, max_iter=2000)
    classifier.fit(features["view_train"].numpy(), (sets["view_train"]["view"] == "AP").to_numpy())
    bank_is_ap = classifier.predict(bank.numpy()).astype(bool)
    accuracy = {
        name: float(np.mean(classifier.predict(features[name].numpy()) == (sets[name]["view"] == "AP")))
        for name in names
    }
    print(
        f"view classifier on {len(sets['view_train'])} NIH1000 train normals; accuracy {json.dumps(accuracy)}; "
        f"bank labelled AP: {bank_is_ap.mean():.3f} of {len(bank)}"
    )

    scores: dict[str, dict[str, np.ndarray]] = {
        "all normals (the default)": {},
        "own view (given)": {},
        "own view (predicted)": {},
    }
    for name in names:
        queries = features[name]
        given = (sets[name]["view"] == "AP").to_numpy()
        predicted = classifier.predict(queries.numpy()).astype(bool)
        scores["all normals (the default)"][name] = nearest(queries, bank, NEIGHBOURS).distances.mean(dim=1).numpy()
        scores["own view (given)"][name] = knn_within(queries, bank, given, bank_is_ap)
        scores["own view (predicted)"][name] = knn_within(queries, bank, predicted, bank_is_ap)
    rows: dict[str, dict[str, float]] = {}
    for variant, by_set in scores.items():
        row = view_row(by_set, sets)
        row.update({f"{name} predicts AP": predicts_view(by_set[name], sets[name]) for name in VALIDATION})
        if args.test:
            row.update({f"test: {key}": value for key, value in view_row(by_set, sets, TEST).items()})
        rows[variant] = row
        print(variant, json.dumps({key: round(value, 3) for key, value in row.items()}))
    print(f"{time.perf_counter() - started:.0f} s")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps(
                {"view_classifier_accuracy": accuracy, "bank_ap_fraction": float(bank_is_ap.mean()), "rows": rows},
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
