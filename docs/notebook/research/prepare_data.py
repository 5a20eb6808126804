"""Decode the real collections once into uint8 arrays for the issue-4 experiments.

Writes, under the output folder (default /tmp/cxr_research, never the repository):
- ``kermany_manifest.csv``: Kermany's manifest with 0/1 labels and ``patient_id`` = patient_key,
  readable by ``cxr-anomaly reproduce --data``;
- ``{name}.npz``: ``pixels`` (N, 64, 64) uint8 and the manifest rows as ``manifest.csv`` beside it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"


def kermany_manifest(out_dir: Path) -> Path:
    """Write Kermany's manifest with 0/1 labels and patient ids; return its path."""
    table = pd.read_csv(SHARED / "kermany224" / "manifest.csv")
    table["path"] = [str((SHARED / "kermany224" / path).resolve()) for path in table["path"]]
    table["label"] = table["label"].map({"NORMAL": 0, "PNEUMONIA": 1}).astype(int)
    table["patient_id"] = table["patient_key"]
    path = out_dir / "kermany_manifest.csv"
    table.to_csv(path, index=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/cxr_research"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    sources = {"nih1000": SHARED / "nih1000" / "manifest.csv", "kermany": kermany_manifest(args.out)}
    for name, source in sources.items():
        manifest = load_inputs([source])
        images = load_images(manifest, DataConfig(), workers=args.workers)
        np.savez_compressed(args.out / f"{name}.npz", pixels=images.pixels)
        images.manifest.to_csv(args.out / f"{name}_manifest_loaded.csv", index=False)
        logging.info("%s: %s", name, images.pixels.shape)


if __name__ == "__main__":
    main()
