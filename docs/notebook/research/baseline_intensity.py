"""Issue 4 research: do per-film intensity normalisations help the pixel baselines on NIH1000?

PCA(5) and 5-NN fitted on the 400 train+valid normals of NIH1000's shipped split (as in
../shared/data/README.md), scored on its 200 test films, for each ``DataConfig.intensity``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from cxr_anomaly.baselines import fit_and_score_baselines
from cxr_anomaly.config import DataConfig

pixels = np.load("/tmp/cxr_research/nih1000.npz")["pixels"]
manifest = pd.read_csv("/tmp/cxr_research/nih1000_manifest_loaded.csv")
train = ((manifest["split"] != "test") & (manifest["label"] == 0)).to_numpy()
test = (manifest["split"] == "test").to_numpy()
labels, views = manifest["label"][test].to_numpy(), manifest["view"][test].to_numpy()
results = {}
for intensity in ("none", "per_image", "equalize"):
    scores = fit_and_score_baselines(pixels[train], {"test": pixels[test]}, DataConfig(intensity=intensity))
    for name, values in scores["test"].scores.items():
        results[f"{intensity} {name}"] = {
            "all": round(roc_auc_score(labels, values), 3),
            **{view: round(roc_auc_score(labels[views == view], values[views == view]), 3) for view in ("PA", "AP")},
        }
print(json.dumps(results, indent=1))
