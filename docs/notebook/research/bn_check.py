"""Issue 4 research: is the eval-mode (BatchNorm running statistics) reconstruction the problem?

Trains U for a few epochs on the NIH1000 or Kermany split of ``reproduce`` and compares, on
validation normals, the L1 error with BatchNorm in eval mode (running statistics, what scoring
uses), in train mode (the batch's statistics), and in eval mode after re-estimating the running
statistics over the training normals with cumulative averaging (momentum None). Then the AUCs.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxr_anomaly.config import with_overrides
from cxr_anomaly.data.dataset import to_model_tensor
from cxr_anomaly.evaluation import safe_auc
from cxr_anomaly.jobs.reproduce import ReproduceOptions, prepare_split
from cxr_anomaly.models.tang2019 import Tang2019Detector
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.training import store_normal_codes, train_detector
from cxr_anomaly.scoring import score_films


def recalibrate_batchnorm(detector: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Re-estimate every BatchNorm's running mean and variance over ``images`` (N, 1, H, W)."""
    for layer in detector.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the pass
    detector.train()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            detector(images[start : start + batch_size])
    detector.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="nih1000")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--variant", default="u")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pixels = np.load(f"/tmp/cxr_research/{args.data}.npz")["pixels"]
    manifest = pd.read_csv(f"/tmp/cxr_research/{args.data}_manifest_loaded.csv")
    manifest["label"] = manifest["label"].astype("Int64")
    split = prepare_split(manifest, pixels, ReproduceOptions(val_fraction=args.val_fraction, max_train_normals=500))
    config = with_overrides(tang2019_config(), "model", base_channels=16, variant=args.variant)
    config = with_overrides(config, "train", epochs=args.epochs, batch_size=args.batch_size)
    detector = train_detector(config, split.train_normals).detector
    normal = split.val_labels == 0
    result = {}

    def measure(name: str) -> None:
        scores = score_films(Tang2019Detector(config, detector), split.val_pixels, precision="fp32")
        test = score_films(Tang2019Detector(config, detector), split.test_pixels, precision="fp32")
        val_parts, test_parts = scores.components, test.components
        result[name] = {
            "val_normal_l1": float(val_parts["reconstruction"][normal].mean()),
            "val_auc_l1": safe_auc(split.val_labels, val_parts["reconstruction"]),
            "val_auc_code_knn": safe_auc(split.val_labels, val_parts["code_distance"]),
            "test_auc_l1": safe_auc(split.test_labels, test_parts["reconstruction"]),
            "test_auc_code_knn": safe_auc(split.test_labels, test_parts["code_distance"]),
            "test_auc_eq6": safe_auc(split.test_labels, test.raw),
        }

    measure("eval_running_stats")
    detector.train()
    with torch.no_grad():
        images = to_model_tensor(split.val_pixels[normal][:64], config.data)
        batch_l1 = (images - detector(images).reconstruction).abs().mean().item()
    detector.eval()
    result["train_mode_val_normal_l1_one_batch"] = batch_l1
    recalibrate_batchnorm(detector, to_model_tensor(split.train_normals, config.data))
    store_normal_codes(detector, split.train_normals, config)
    measure("eval_recalibrated_stats")
    print(json.dumps({"args": vars(args), **result}, indent=1))


if __name__ == "__main__":
    main()
