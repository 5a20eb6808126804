"""Left-right asymmetry scores (issue 10, research): does a film's difference from its own mirror
image rank abnormal films first, where the pipeline that made the film cancels out?

Both halves of a film went through the same exporter, resizer and contrast curve, so a score
that compares a film with its own mirror image should see the pipeline less than one that
compares it with other hospitals' normals. Normal chests are not symmetric (the heart), so each
score learns the normal asymmetry from the training normals.

For a film x with feature map f(x) (C, H, W) and its mirror image m(x), D = f(x) - f(m(x)) is zero
for a symmetric film: f(m(x)) at (i, j) describes what x shows at the mirrored place. Scores:

- ``asym_mean``: mean over positions of the cosine distance between f(x) and f(m(x));
- ``asym_z``: that distance map (H*W) as z-scores against the normals' mean and std at each
  position, averaged over positions;
- ``asym_gauss``: Mahalanobis distance of the distance map under a Ledoit-Wolf Gaussian of the
  normals' maps;
- ``asym_self_gauss``: the same Gaussian on the distance between f(x) and its own mirrored
  columns, which needs no pass over the mirror image;
- ``asym_knn``: cosine 5-NN of the channel vector mean_ij |D| against the normals';
- ``rank(default, X)``: the mean rank of the default pooled kNN and of X within the scored set.

Needs the probe's dumps of ``crop20+detail64+equalize`` and ``crop20+detail64+equalize+mirror``:

    python -m docs.notebook.research.features_probe dump --prep crop20+detail64+equalize+mirror \\
        --dump-sets rsna nih1000_val pneu_val nih1000_test pneu_test
    python -m docs.notebook.research.asymmetry

``--model CKPT --manifest TRAIN_MANIFEST`` checks the one combination that won on the probe's
validation films, rank(default, asym_gauss (s16)), with a features checkpoint's own (fine-tuned)
backbone and preprocessing: the default is the checkpoint's raw score, and the asymmetry
Gaussian is fitted on the first ``--normals`` films of its training manifest.

    python -m docs.notebook.research.asymmetry --model runs/demo/run/model.pt \
        --manifest runs/demo/train_manifest.csv --normals 4500
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from sklearn.covariance import LedoitWolf

from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.models.features.torch_model import FeatureDetector

from .features_probe import collections, per_view, pooled
from .features_variants import knn
from .pooled_tta import mirrored
from .validate_checkpoints import load_features_model, view_row, write_rows

logger = logging.getLogger("asymmetry")
TEST = ("nih1000_test", "pneu_test")

PREP = "crop20+detail64+equalize"
SETS = ("nih1000_val", "pneu_val", "nih1000_test", "pneu_test")


def load_maps(work: Path, backbone: str, prep: str, name: str, stride: int) -> np.ndarray:
    """The probe's stored stride map of one set, float32 (N, C, H, W)."""
    return np.load(work / f"{backbone}_224_{prep}_{name}.npz")[f"s{stride}"].astype(np.float32)


def distance_map(film: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Cosine distance between f(x) and f(m(x)) at each position: (N, C, H, W) x2 -> (N, H*W)."""
    dot = (film * mirror).sum(axis=1)
    norms = np.linalg.norm(film, axis=1) * np.linalg.norm(mirror, axis=1) + 1e-8
    return (1.0 - dot / norms).reshape(len(film), -1)


def self_mirror_map(film: np.ndarray) -> np.ndarray:
    """Cosine distance between f(x) at (i, j) and at the mirrored column (i, W-1-j), left half only.

    Needs no second backbone pass; CNN features are not mirror-symmetric, so the normals'
    Gaussian has to learn what a symmetric chest looks like this way. (N, C, H, W) -> (N, H*W/2).
    """
    width = film.shape[-1]
    left, right = film[..., : width // 2], film[..., ::-1][..., : width // 2]
    return distance_map(left, right)


def scores_for_stride(work: Path, backbone: str, stride: int) -> dict[str, dict[str, np.ndarray]]:
    """Every asymmetry score of one stride, for every scored set: {score: {set: (N,)}}."""
    train = load_maps(work, backbone, PREP, "rsna", stride)
    train_mirror = load_maps(work, backbone, PREP + "+mirror", "rsna", stride)
    train_map = distance_map(train, train_mirror)  # (N, H*W)
    self_gaussian = LedoitWolf().fit(self_mirror_map(train))
    train_pooled_diff = np.abs(train - train_mirror).mean(axis=(2, 3))  # (N, C)
    mean, std = train_map.mean(axis=0), train_map.std(axis=0) + 1e-6
    gaussian = LedoitWolf().fit(train_map)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in SETS:
        film = load_maps(work, backbone, PREP, name, stride)
        mirror = load_maps(work, backbone, PREP + "+mirror", name, stride)
        dmap = distance_map(film, mirror)
        out.setdefault(f"asym_mean (s{stride})", {})[name] = dmap.mean(axis=1)
        out.setdefault(f"asym_z (s{stride})", {})[name] = ((dmap - mean) / std).mean(axis=1)
        out.setdefault(f"asym_gauss (s{stride})", {})[name] = gaussian.mahalanobis(dmap)
        out.setdefault(f"asym_self_gauss (s{stride})", {})[name] = self_gaussian.mahalanobis(self_mirror_map(film))
        out.setdefault(f"asym_knn (s{stride})", {})[name] = knn(
            train_pooled_diff, np.abs(film - mirror).mean(axis=(2, 3)), 5
        )
    return out


def checkpoint_distance_maps(detector: FeatureDetector, pixels: np.ndarray, stride: int, batch: int = 32) -> np.ndarray:
    """:func:`distance_map` of uint8 films (N, S, S) under a checkpoint's backbone: (N, H*W)."""
    parts = []
    with torch.inference_mode():
        for begin in range(0, len(pixels), batch):
            chunk = pixels[begin : begin + batch]
            film = detector.backbone(detector.model_input(chunk))[stride].float().numpy()
            mirror = detector.backbone(detector.model_input(mirrored(chunk)))[stride].float().numpy()
            parts.append(distance_map(film, mirror))
    return np.concatenate(parts)


def checkpoint_rows(model_path: Path, manifest: Path, normals: int, stride: int = 16) -> dict[str, dict[str, float]]:
    """The default, asym_gauss and their rank mean under a checkpoint, per view of every scored set."""
    model = load_features_model(model_path)
    detector = cast(FeatureDetector, model.detector)
    started = time.perf_counter()
    train = load_images(pd.read_csv(manifest).head(normals), model.config.data).pixels
    gaussian = LedoitWolf().fit(checkpoint_distance_maps(detector, train, stride))
    logger.info("asymmetry Gaussian of %d normals: %.0f s", len(train), time.perf_counter() - started)
    sets = collections()
    scores: dict[str, dict[str, np.ndarray]] = {"default": {}, f"asym_gauss (s{stride})": {}}
    for name in SETS:
        pixels = load_images(sets[name], model.config.data).pixels
        scores["default"][name] = model.score_films(pixels).raw
        scores[f"asym_gauss (s{stride})"][name] = gaussian.mahalanobis(
            checkpoint_distance_maps(detector, pixels, stride)
        )
    scores[f"rank(default, asym_gauss (s{stride}))"] = {
        name: (rankdata(scores["default"][name]) + rankdata(scores[f"asym_gauss (s{stride})"][name])) / 2
        for name in SETS
    }
    logger.info("scored in %.0f s", time.perf_counter() - started)
    return {
        score_name: {
            **{f"val {key}": value for key, value in view_row(by_set, sets).items()},
            **{f"test {key}": value for key, value in view_row(by_set, sets, TEST).items()},
        }
        for score_name, by_set in scores.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/probe"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--output", type=Path, default=None, help="write the table as JSON here")
    parser.add_argument("--model", type=Path, default=None, help="a features checkpoint (see above)")
    parser.add_argument("--manifest", type=Path, default=None, help="the checkpoint's training manifest")
    parser.add_argument("--normals", type=int, default=4500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.model is not None:
        rows = checkpoint_rows(args.model, args.manifest, args.normals)
        for score_name, row in rows.items():
            print(score_name, json.dumps({key: round(value, 3) for key, value in row.items()}), flush=True)
        write_rows(rows, args.output)
        return
    manifests = {name: pd.read_csv(args.work / f"manifest_{name}.csv") for name in SETS}
    scores: dict[str, dict[str, np.ndarray]] = {}
    train = pooled({"s32": load_maps(args.work, args.backbone, PREP, "rsna", 32)}, [32])
    scores["default: knn5 (s32)"] = {
        name: knn(train, pooled({"s32": load_maps(args.work, args.backbone, PREP, name, 32)}, [32]), 5) for name in SETS
    }
    for stride in (32, 16, 8):
        scores.update(scores_for_stride(args.work, args.backbone, stride))
    for score_name in [key for key in scores if key.startswith("asym")]:
        scores[f"rank(default, {score_name})"] = {
            name: (rankdata(scores["default: knn5 (s32)"][name]) + rankdata(scores[score_name][name])) / 2
            for name in SETS
        }
    rows = []
    for score_name, by_set in scores.items():
        row: dict[str, object] = {"score": score_name}
        for name in SETS:
            aucs = per_view(by_set[name], manifests[name])
            row[f"{name} PA"], row[f"{name} AP"] = aucs["PA"], aucs["AP"]
        row["worst val"] = min(row[f"{name} {view}"] for name in SETS[:2] for view in ("PA", "AP"))
        row["worst test"] = min(row[f"{name} {view}"] for name in SETS[2:] for view in ("PA", "AP"))
        rows.append(row)
    table = pd.DataFrame(rows)
    print(table.round(3).to_string(index=False))
    if args.output is not None:
        args.output.write_text(json.dumps(table.round(4).to_dict(orient="records"), indent=1))


if __name__ == "__main__":
    main()
