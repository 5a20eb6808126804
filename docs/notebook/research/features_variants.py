"""Score variants of the features detector on stored feature maps (issue 10, point 6: ensembles
over layers and scores, pooling, neighbours), validation films first.

Reads the maps that ``docs.notebook.research.features_probe dump`` stored for one preprocessing
(default: the chosen ``crop20+detail64+equalize``) and backbone, fits each variant on the dumped
``rsna_normal224`` normals and prints AUC within PA and AP films of each set, with the worst of the
validation views (the selection criterion of docs/notebook/2026-11-results-history.md). No film runs through a backbone.

    python -m docs.notebook.research.features_variants --tags efficientnet_lite0_224_crop20+detail64+equalize
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from docs.notebook.research.features_probe import patches, per_view
from scipy.stats import rankdata

VALIDATION = ("nih1000_val", "pneu_val")


def pool(maps: dict[str, np.ndarray], stride: int, how: str) -> np.ndarray:
    """(N, C, h, w) map of one stride -> (N, C) or (N, 2C) per film."""
    values = maps[f"s{stride}"].astype(np.float32)
    if how == "mean":
        return values.mean(axis=(2, 3))
    if how == "gem3":  # generalised mean, p = 3; features after ReLU6 are >= 0
        return np.cbrt(np.power(np.clip(values, 0, None), 3).mean(axis=(2, 3)))
    if how == "max":
        return values.max(axis=(2, 3))
    if how == "mean+std":
        return np.concatenate([values.mean(axis=(2, 3)), values.std(axis=(2, 3))], axis=1)
    raise ValueError(how)


def knn(train: np.ndarray, test: np.ndarray, neighbours: int) -> np.ndarray:
    """Mean cosine distance to the nearest training rows."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    return 1.0 - np.sort(test @ train.T, axis=1)[:, -neighbours:].mean(axis=1)


def standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each channel to zero mean and unit variance over the training normals."""
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def patch_score(train: dict[str, np.ndarray], test: dict[str, np.ndarray], bank_size: int) -> np.ndarray:
    """PatchCore's worst-patch distance (strides 16+32, 14x14 grid) to a random bank of patches."""
    bank = patches(train, [16, 32], 14)
    flat = bank.reshape(-1, bank.shape[-1])
    chosen = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:bank_size]]
    query = patches(test, [16, 32], 14)
    scores = []
    for block in query.split(16):
        distances = torch.cdist(block.reshape(-1, block.shape[-1]), chosen).min(dim=1).values
        scores += distances.reshape(len(block), -1).max(dim=1).values.tolist()
    return np.array(scores)


def rank_mean(*scores: np.ndarray) -> np.ndarray:
    """Ensemble by the mean rank within the scored set: no scale to calibrate between members."""
    return np.mean([rankdata(score) / len(score) for score in scores], axis=0)


def variants(train: dict[str, np.ndarray], test: dict[str, np.ndarray], bank_size: int) -> dict[str, np.ndarray]:
    """Every variant's scores of the test films."""
    result: dict[str, np.ndarray] = {}
    for how in ("mean", "gem3", "max", "mean+std"):
        for neighbours in (1, 5, 20) if how == "mean" else (5,):
            result[f"knn{neighbours} {how} (32)"] = knn(pool(train, 32, how), pool(test, 32, how), neighbours)
    result["knn5 mean (32), standardised"] = knn(*standardised(pool(train, 32, "mean"), pool(test, 32, "mean")), 5)
    result["knn5 mean (16)"] = knn(pool(train, 16, "mean"), pool(test, 16, "mean"), 5)
    both_train = np.concatenate([pool(train, 16, "mean"), pool(train, 32, "mean")], axis=1)
    both_test = np.concatenate([pool(test, 16, "mean"), pool(test, 32, "mean")], axis=1)
    result["knn5 mean (16+32), standardised"] = knn(*standardised(both_train, both_test), 5)
    result["rank mean: knn5 (16), knn5 (32)"] = rank_mean(result["knn5 mean (16)"], result["knn5 mean (32)"])
    result["patch (16, 32)"] = patch_score(train, test, bank_size)
    result["rank mean: knn5 (32), patch"] = rank_mean(result["knn5 mean (32)"], result["patch (16, 32)"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/probe"))
    parser.add_argument("--tags", nargs="+", default=["efficientnet_lite0_224_crop20+detail64+equalize"])
    parser.add_argument("--sets", nargs="+", default=[*VALIDATION, "nih1000_test", "pneu_test"])
    parser.add_argument("--bank", type=int, default=10000, help="random bank patches of the patch score")
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="also the rank mean of the knn5 (32) scores over all --tags (backbones, sizes)",
    )
    parser.add_argument("--out", type=Path, default=None, help="CSV of the table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    members: dict[str, list[np.ndarray]] = {}
    for tag in args.tags:
        train = dict(np.load(args.work / f"{tag}_rsna.npz"))
        for name in args.sets:
            path = args.work / f"{tag}_{name}.npz"
            if not path.exists():
                continue
            manifest = pd.read_csv(args.work / f"manifest_{name}.csv")
            for variant, scores in variants(train, dict(np.load(path)), args.bank).items():
                rows.append({"tag": tag, "variant": variant, "set": name, **per_view(scores, manifest)})
                if variant == "knn5 mean (32)":
                    members.setdefault(name, []).append(scores)
    if args.ensemble:
        for name, scores in members.items():
            if len(scores) == len(args.tags):
                manifest = pd.read_csv(args.work / f"manifest_{name}.csv")
                rows.append(
                    {
                        "tag": " + ".join(args.tags),
                        "variant": "rank mean of knn5 mean (32)",
                        "set": name,
                        **per_view(rank_mean(*scores), manifest),
                    }
                )
    long = pd.DataFrame(rows)
    wide = long.pivot_table(index=["tag", "variant"], columns="set", values=["PA", "AP"], sort=False)
    wide.columns = [f"{name} {view}" for view, name in wide.columns]
    columns = [f"{name} {view}" for name in args.sets for view in ("PA", "AP") if f"{name} {view}" in wide.columns]
    wide = wide[columns]
    validation = [column for column in columns if column.split()[0] in VALIDATION]
    wide["worst val"] = wide[validation].min(axis=1)
    wide = wide.sort_values("worst val", ascending=False)
    print(wide.round(3).to_string())
    if args.out is not None:
        wide.round(3).to_csv(args.out)


if __name__ == "__main__":
    main()
