"""A fingerprint of a small features fit, to check that a change leaves fitting bit for bit the same.

Usage (run it in each tree and compare the printed digests)::

    python -m docs.notebook.research.fit_fingerprint [--data ../shared/data] [--films 96] [--precision auto]

Fits the default features detector, with one epoch of fine-tuning and small banks (512 patches,
64 pooled films), on the first ``--films`` films of ``rsna_normal224``, then prints the SHA-256
of every tensor of its state (name order) and one digest over all of them. Equal digests mean
equal fine-tuned weights, banks, Gaussian and radius, to the bit. The fit is seeded by the
configuration, so two runs of one tree on one machine give the same digest.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch
from benchmarks.bench_features import rsna_rows
from benchmarks.common import git_commit, machine_facts

from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.inference import resolve_precision
from cxr_anomaly.models.features.fitting import fit_features


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    contiguous = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
    digest = hashlib.sha256(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
    digest.update(contiguous.view(torch.uint8).numpy().tobytes() if contiguous.numel() else b"")
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--films", type=int, default=96)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()
    precision = resolve_precision(args.precision, "cpu")
    print(f"commit {git_commit()}; {machine_facts()}; precision {precision}")
    config = with_overrides(Config(), "features", finetune_epochs=1, memory_bank_size=512, pooled_bank_size=64)
    pixels = load_images(rsna_rows(args.data, args.films), config.data).pixels  # (N, 224, 224) uint8
    detector = fit_features(config, pixels, precision=precision, progress=False).detector
    overall = hashlib.sha256()
    for name, tensor in sorted(detector.state_dict().items()):
        digest = tensor_digest(tensor)
        overall.update(f"{name} {digest}\n".encode())
        print(f"{digest[:16]}  {name}")
    print(f"{len(detector.state_dict())} tensors; fit digest {overall.hexdigest()}")


if __name__ == "__main__":
    main()
