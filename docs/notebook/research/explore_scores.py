"""Issue 4 research: which score of a trained detector separates abnormal films, and when.

Trains one configuration per seed on the split that ``cxr-anomaly reproduce`` uses, and after
every epoch records, on validation and test films, the AUC of several candidate scores:

- ``l1``, ``l2``: pixel reconstruction error (the paper's L1 and its square);
- ``adversarial``, ``latent``: the other components of eq. 6 (where the variant has them);
- ``feature``: mean |F_l(x) - F_l(x')| over U's encoder feature maps (a feature-space error);
- ``code_knn``: mean distance of U's code z to the 5 nearest training normals' codes;
- ``pixel_knn``: the 5-NN pixel baseline, for reference.

Test AUCs are logged for the record only; choices are made on validation numbers.
Writes one JSON per run into ``docs/notebook/research/logs/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import NearestNeighbors

from cxr_anomaly.baselines import fit_and_score_baselines
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import to_model_tensor
from cxr_anomaly.evaluation import safe_auc
from cxr_anomaly.jobs.reproduce import ReproduceOptions, SplitData, prepare_split
from cxr_anomaly.models.tang2019 import OneClassDetector
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.training import EpochLog, recalibrate_batchnorm, train_detector

LOGS = Path(__file__).resolve().parent / "logs"


@torch.no_grad()
def candidate_scores(
    detector: OneClassDetector,
    pixels: np.ndarray,
    train_codes: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    config: Config,
) -> dict[str, np.ndarray]:
    """Every candidate score for uint8 films (N, H, W)."""
    detector.eval()
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(pixels), 256):
        images = to_model_tensor(pixels[start : start + 256], config.data)  # (B, 1, 64, 64)
        output = detector(images)
        error = images - output.reconstruction
        parts = {
            "l1": error.abs().flatten(1).mean(1),
            "l2": error.pow(2).flatten(1).mean(1),
            "code": output.latent.flatten(1),
            # global average of each encoder feature map: (B, C+2C+4C+8C), a multi-scale descriptor
            "pooled": torch.cat([feature.mean(dim=(2, 3)) for feature in output.encoder_features], dim=1),
            # the deepest encoder map (B, 8C, 4, 4), which the decoder receives beside the code
            "deep": output.encoder_features[-1].flatten(1),
        }
        reencoded = detector.unet.encoder(output.reconstruction)
        parts["feature"] = torch.stack(
            [
                (a - b).abs().flatten(1).mean(1) / (a.abs().flatten(1).mean(1) + 1e-6)
                for a, b in zip(output.encoder_features, reencoded.features)
            ]
        ).mean(0)
        components = detector.score_components(images)
        if components.adversarial is not None:
            parts["adversarial"] = components.adversarial
        if components.latent is not None:
            parts["latent"] = components.latent
        for key, value in parts.items():
            out.setdefault(key, []).append(value.float().numpy())
    scores = {key: np.concatenate(value) for key, value in out.items()}
    codes = scores.pop("code")
    pooled = scores.pop("pooled")
    deep = scores.pop("deep")
    if train_codes is not None:
        train_code, train_pooled, train_deep = train_codes
        distances, _ = NearestNeighbors(n_neighbors=5).fit(train_deep).kneighbors(deep)
        scores["deep_knn"] = distances.mean(1)
        distances, _ = NearestNeighbors(n_neighbors=5).fit(train_code).kneighbors(codes)
        scores["code_knn"] = distances.mean(1)
        # standardise each pooled channel on the training normals so no scale dominates
        mean, std = train_pooled.mean(0), train_pooled.std(0) + 1e-6
        distances, _ = (
            NearestNeighbors(n_neighbors=5).fit((train_pooled - mean) / std).kneighbors((pooled - mean) / std)
        )
        scores["pooled_knn"] = distances.mean(1)
    else:
        scores["train_codes"] = (codes, pooled, deep)
    return scores


def aucs(labels: np.ndarray, scores: dict[str, np.ndarray], views: np.ndarray | None) -> dict[str, object]:
    result: dict[str, object] = {name: safe_auc(labels, values) for name, values in scores.items()}
    if views is not None:
        for view in ("PA", "AP"):
            mask = views == view
            result.update({f"{name}@{view}": safe_auc(labels[mask], values[mask]) for name, values in scores.items()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="nih1000 or kermany (decoded by prepare_data.py)")
    parser.add_argument("--view", default=None)
    parser.add_argument("--variant", default="u")
    parser.add_argument("--intensity", default="none")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-train-normals", type=int, default=None)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--tag", default="")
    parser.add_argument("--epoch-zero", action="store_true", help="also score the untrained network")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-epochs", type=int, nargs="*", default=[], help="epochs to score (default all)")
    parser.add_argument("--recalibrate", action="store_true", help="re-estimate BatchNorm statistics first")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    pixels = np.load(f"/tmp/cxr_research/{args.data}.npz")["pixels"]
    manifest = pd.read_csv(f"/tmp/cxr_research/{args.data}_manifest_loaded.csv")
    manifest["label"] = manifest["label"].astype("Int64")
    options = ReproduceOptions(
        view=args.view,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        max_train_normals=args.max_train_normals,
    )
    split: SplitData = prepare_split(manifest, pixels, options)
    config = with_overrides(
        tang2019_config(), "model", variant=args.variant, base_channels=args.base_channels, input_noise_std=args.noise
    )
    config = with_overrides(config, "data", intensity=args.intensity)
    baseline = fit_and_score_baselines(
        split.train_normals, {"val": split.val_pixels, "test": split.test_pixels}, config.data
    )
    record: dict[str, object] = {
        "args": vars(args),
        "split": split.fingerprint,
        "train_normals": len(split.train_normals),
        "baselines": {
            name: {
                "val": aucs(split.val_labels, {"s": baseline["val"].scores[name]}, None)["s"],
                "test": aucs(split.test_labels, {"s": baseline["test"].scores[name]}, split.test_views),
            }
            for name in baseline["test"].scores
        },
        "runs": [],
    }
    name = f"{args.data}_{args.view or 'all'}_{args.variant}_{args.intensity}_e{args.epochs}_c{args.base_channels}_n{args.noise}_b{args.batch_size}{'_bnre' if args.recalibrate else ''}{args.tag}"
    LOGS.mkdir(exist_ok=True)
    for seed in args.seeds:
        run_config = with_overrides(
            with_overrides(config, "train", seed=seed, epochs=args.epochs, batch_size=args.batch_size),
            "model",
            variant=args.variant,
        )
        epochs: list[dict[str, object]] = []

        def on_epoch_end(detector: OneClassDetector, log: EpochLog) -> None:
            if args.eval_epochs and log.epoch not in args.eval_epochs:
                return
            if args.recalibrate:  # score a copy with re-estimated BatchNorm statistics, as the library does
                detector = copy.deepcopy(detector)
                recalibrate_batchnorm(detector, split.train_normals, run_config, torch.device("cpu"))
            train_codes = candidate_scores(detector, split.train_normals, None, run_config)["train_codes"]
            val = candidate_scores(detector, split.val_pixels, train_codes, run_config)
            test = candidate_scores(detector, split.test_pixels, train_codes, run_config)
            entry = {
                "epoch": log.epoch,
                "loss_reconstruction": log.reconstruction,
                "seconds": log.seconds,
                "val_normal_l1": float(val["l1"][split.val_labels == 0].mean()),
                "val": aucs(split.val_labels, val, None),
                "test": aucs(split.test_labels, test, split.test_views),
            }
            epochs.append(entry)
            print(
                name,
                seed,
                log.epoch,
                f"{log.seconds:.0f}s",
                {k: round(v, 3) for k, v in entry["val"].items() if v is not None},
                "TEST",
                {k: round(v, 3) for k, v in entry["test"].items() if v is not None and "@" not in k},
                flush=True,
            )

        started = time.perf_counter()
        if args.epoch_zero:  # the untrained network: how much of the signal needs no learning
            from cxr_anomaly.models.tang2019.training import build_detector

            on_epoch_end(build_detector(run_config).eval(), EpochLog(0, *[0.0] * 7, 0))
        train_detector(run_config, split.train_normals, on_epoch_end=on_epoch_end)
        record["runs"].append({"seed": seed, "seconds": time.perf_counter() - started, "epochs": epochs})
        (LOGS / f"{name}.json").write_text(json.dumps(record, indent=1))
    print("baselines", json.dumps(record["baselines"]))


if __name__ == "__main__":
    main()
