"""The pixel baselines and the view-only score on the validation films of the features choice.

The tables that chose the features detector's settings (docs/notebook/2026-11-results-history.md, "Choosing the features
detector", "Fine-tuning the backbone") score NIH1000's ``val`` split and the validation half of
nih_pneumonia256 (:func:`docs.notebook.research.features_probe.collections`). This prints, for the
same films, the view-only AUC and the PCA(5) and 5-NN pixel baselines at 64 px (the benchmark's
``pca5`` and ``knn5``), fitted on the first K ``rsna_normal224`` films, overall and per view.

    python -m docs.notebook.research.validation_baselines --train-films 1000 2000
"""

from __future__ import annotations

import argparse

from docs.notebook.research.features_probe import collections, per_view
from sklearn.metrics import roc_auc_score

from cxr_anomaly.baselines import fit_and_score_baselines
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.models.tang2019.config import tang2019_config

VALIDATION = ("nih1000_val", "pneu_val")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-films", type=int, nargs="+", default=[1000, 2000])
    args = parser.parse_args()
    sets = collections()
    data_config = tang2019_config().data  # 64 px, intensity none: the benchmark's pixel baselines
    pixels = {name: load_images(sets[name], data_config, workers=2).pixels for name in VALIDATION}
    for name in VALIDATION:
        manifest = sets[name]
        view_only = roc_auc_score(manifest["label"].astype(int), (manifest["view"] == "AP").astype(int))
        print(f"{name}: view only {view_only:.3f} overall, 0.500 within each view")
    for count in args.train_films:
        train = load_images(sets["rsna"].iloc[:count], data_config, workers=2).pixels
        for name, result in fit_and_score_baselines(train, pixels, data_config).items():
            for baseline, scores in result.scores.items():
                aucs = per_view(scores, sets[name])
                print(
                    f"{count} normals, {name}, {baseline}: "
                    + ", ".join(f"{key} {value:.3f}" for key, value in aucs.items())
                )


if __name__ == "__main__":
    main()
