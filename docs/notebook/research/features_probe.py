"""Probe for issue 10: which preprocessing and score make frozen ImageNet features rank abnormal
NIH films first, within each view, when fitted on rsna_normal224.

Step 1 (``dump``): decode every film at --size px once per preprocessing, run the frozen backbone,
store the stride-8/16/32 maps (float16) in --work. Step 2 (``score``): fit each score on the RSNA
normals and print AUC overall / PA / AP on the validation halves (NIH1000 valid, and the
validation half of a patient split of nih_pneumonia256). Settings are chosen on those only.

    python -m docs.notebook.research.features_probe dump --prep plain equalize ...
    python -m docs.notebook.research.features_probe score
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.dataset import load_images, preprocess_films
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.models.features.backbone import build_backbone

from .lung_field import crop_lung_fields

DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
logger = logging.getLogger("probe")


def collections(seed: int = 0, data: Path = DATA) -> dict[str, pd.DataFrame]:
    """rsna (train), nih1000 valid/test, nih_pneumonia256 split 50/50 by patient into val/test."""
    rsna = load_inputs(data / "rsna_normal224" / "manifest.csv")
    nih = load_inputs(data / "nih1000" / "manifest.csv")
    pneu = load_inputs(data / "nih_pneumonia256" / "manifest.csv")
    raw = pd.read_csv(data / "nih_pneumonia256" / "manifest.csv")
    pneu["age"] = raw["age"].to_numpy()
    rawn = pd.read_csv(data / "nih1000" / "manifest.csv")
    nih["age"] = rawn["age"].to_numpy()
    patients = np.array(sorted(pneu["patient_id"].astype(str).unique()))
    rng = np.random.default_rng(seed)
    val_patients = set(rng.choice(patients, size=len(patients) // 2, replace=False))
    is_val = pneu["patient_id"].astype(str).isin(val_patients)
    return {
        "rsna": rsna,
        "nih1000_val": nih[nih["split"] == "val"].reset_index(drop=True),
        "nih1000_test": nih[nih["split"] == "test"].reset_index(drop=True),
        "pneu_val": pneu[is_val].reset_index(drop=True),
        "pneu_test": pneu[~is_val].reset_index(drop=True),
    }


PREPROCESSING: dict[str, dict[str, object]] = {
    "plain": {},
    "equalize": {"intensity": "equalize"},
    "zscore": {"intensity": "per_image"},
    "detail64": {"detail_size": 64},
    "detail64+equalize": {"detail_size": 64, "intensity": "equalize"},
    "crop10+equalize": {"border_crop": 0.1, "intensity": "equalize"},
    "crop10+detail64+equalize": {"border_crop": 0.1, "detail_size": 64, "intensity": "equalize"},
    "crop20+detail64+equalize": {"border_crop": 0.2, "detail_size": 64, "intensity": "equalize"},
    "crop20+detail32+equalize": {"border_crop": 0.2, "detail_size": 32, "intensity": "equalize"},
    # lung_field.crop_lung_fields first, then the rest as named
    "lung+detail64+equalize": {"detail_size": 64, "intensity": "equalize"},
    # the default's preprocessing, then the film mirrored left to right (docs/notebook/research/asymmetry.py)
    "crop20+detail64+equalize+mirror": {"border_crop": 0.2, "detail_size": 64, "intensity": "equalize"},
}


def preprocess(pixels: np.ndarray, prep: str, size: int) -> torch.Tensor:
    """uint8 (N, S, S) -> (N, 3, S, S) in [-1, 1] under a named preprocessing of the package."""
    config = DataConfig(image_size=size, **PREPROCESSING[prep])  # type: ignore[arg-type]
    if prep.startswith("lung+"):
        pixels = crop_lung_fields(pixels)
    images = torch.from_numpy(preprocess_films(pixels, config) * 2 - 1)  # (N, S, S)
    if prep.endswith("+mirror"):
        images = images.flip(-1)
    return images[:, None].expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


def dump(args: argparse.Namespace) -> None:
    sets = collections()
    backbone, _ = build_backbone(args.backbone)
    backbone = backbone.to(memory_format=torch.channels_last)
    torch.set_num_threads(2)
    config = DataConfig(image_size=args.size)
    for name, manifest in sets.items():
        if name not in args.dump_sets:
            continue
        if name == "rsna":
            manifest = manifest.iloc[: args.train_films]
        pixels = load_images(manifest, config, cache_dir=args.cache, workers=2).pixels
        for prep in args.prep:
            out = args.work / f"{args.backbone}_{args.size}_{prep}_{name}.npz"
            if out.exists():
                continue
            start = time.time()
            maps: dict[int, list[np.ndarray]] = {8: [], 16: [], 32: []}
            with torch.inference_mode():
                for begin in range(0, len(pixels), 64):
                    feats = backbone(preprocess(pixels[begin : begin + 64], prep, args.size))
                    for stride in maps:
                        maps[stride].append(feats[stride].numpy().astype(np.float16))
            np.savez(out, **{f"s{stride}": np.concatenate(v) for stride, v in maps.items()})
            logger.info("%s: %d films in %.0f s", out.name, len(pixels), time.time() - start)
            print(f"{out.name}: {len(pixels)} films in {time.time() - start:.0f} s", flush=True)
    for name, manifest in sets.items():
        manifest.to_csv(args.work / f"manifest_{name}.csv", index=False)
    logger.info("dumped %s", args.prep)


def pooled(maps: dict[str, np.ndarray], strides: list[int]) -> np.ndarray:
    return np.concatenate([maps[f"s{s}"].astype(np.float32).mean(axis=(2, 3)) for s in strides], axis=1)


def patches(maps: dict[str, np.ndarray], strides: list[int], grid: int) -> torch.Tensor:
    """(N, grid*grid, C): local 3x3 average of each stride's map, resized to grid x grid, concatenated."""
    parts = []
    for s in strides:
        m = torch.from_numpy(maps[f"s{s}"].astype(np.float32))
        m = F.avg_pool2d(m, 3, 1, 1)
        m = F.adaptive_avg_pool2d(m, grid)
        parts.append(m)
    return torch.cat(parts, 1).flatten(2).transpose(1, 2)


def per_view(scores: np.ndarray, manifest: pd.DataFrame) -> dict[str, float]:
    labels = manifest["label"].to_numpy().astype(int)
    result = {"all": roc_auc_score(labels, scores)}
    views = manifest["view"].to_numpy()
    for view in ("PA", "AP"):
        mask = views == view
        if len(set(labels[mask])) == 2:
            result[view] = roc_auc_score(labels[mask], scores[mask])
    adult = manifest["age"].to_numpy() >= 18
    mask = adult & (views == "PA")
    result["PA_adult"] = roc_auc_score(labels[mask], scores[mask])
    return result


def score(args: argparse.Namespace) -> None:
    rows = []
    for train_file in sorted(args.work.glob("*_rsna.npz")):
        tag = train_file.name.removesuffix("_rsna.npz")
        if args.only and not any(o in tag for o in args.only):
            continue
        train = dict(np.load(train_file))
        evals = {name: dict(np.load(args.work / f"{tag}_{name}.npz")) for name in args.sets}
        manifests = {name: pd.read_csv(args.work / f"manifest_{name}.csv") for name in args.sets}
        for strides in args.pooled:
            x = pooled(train, strides)
            gauss = LedoitWolf().fit(x)
            xn = x / np.linalg.norm(x, axis=1, keepdims=True)
            for name in args.sets:
                y = pooled(evals[name], strides)
                maha = gauss.mahalanobis(y)
                yn = y / np.linalg.norm(y, axis=1, keepdims=True)
                knn = 1 - np.sort(yn @ xn.T, axis=1)[:, -5:].mean(1)
                for score_name, values in (("gauss", maha), ("knn5", knn)):
                    rows.append(
                        {
                            "tag": tag,
                            "strides": str(strides),
                            "score": score_name,
                            "set": name,
                            **per_view(values, manifests[name]),
                        }
                    )
        if args.patch:
            for strides, grid in (([16, 32], 14),):
                bank = patches(train, strides, grid)  # (N, P, C)
                generator = torch.Generator().manual_seed(0)
                flat = bank.reshape(-1, bank.shape[-1])
                chosen = flat[torch.randperm(len(flat), generator=generator)[: args.bank]]
                for name in args.sets:
                    query = patches(evals[name], strides, grid)
                    film_scores = []
                    for block in query.split(16):
                        d = torch.cdist(block.reshape(-1, block.shape[-1]), chosen).min(dim=1).values
                        film_scores += d.reshape(len(block), -1).max(dim=1).values.tolist()
                    rows.append(
                        {
                            "tag": tag,
                            "strides": str(strides) + f"g{grid}",
                            "score": "patch_max",
                            "set": name,
                            **per_view(np.array(film_scores), manifests[name]),
                        }
                    )
        print(pd.DataFrame(rows).round(3).to_string(), flush=True)
    table = pd.DataFrame(rows).round(3)
    table.to_csv(args.work / "probe_scores.csv", index=False)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=("dump", "score"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/probe"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/probe_cache"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--prep", nargs="+", default=["plain"])
    parser.add_argument("--sets", nargs="+", default=["nih1000_val", "pneu_val"])
    parser.add_argument("--dump-sets", nargs="+", default=["rsna", "nih1000_val", "pneu_val"])
    parser.add_argument("--train-films", type=int, default=2000)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--patch", action="store_true")
    parser.add_argument(
        "--pooled",
        type=json.loads,
        default=[[8, 16, 32], [16, 32], [8, 16], [32]],
        help="JSON list of stride lists for the pooled scores",
    )
    parser.add_argument("--bank", type=int, default=50000)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dump(args) if args.step == "dump" else score(args)


if __name__ == "__main__":
    main()
