"""Preprocessing on a CPU: Pillow and NumPy (``preprocess_films``) against the tensor path.

Usage::

    python -m docs.notebook.research.preprocess_paths --data ../shared/data [--films 64] [--repeats 5]

Why: :func:`cxr_anomaly.data.resample.preprocess_on` keeps the Pillow path on a CPU and uses the
tensor path (:func:`~cxr_anomaly.data.resample.preprocess_tensor`, the same pixels bit for bit)
on other devices. This measures that choice: ms a film for batches of 16 and ``--films`` films
of ``rsna_normal224`` at 224 px under the default settings, medians of ``--repeats`` after a
warm-up, the Pillow path in one thread and in torch's thread count.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from benchmarks.bench_features import rsna_rows
from benchmarks.bench_model import time_call
from benchmarks.common import git_commit, machine_facts

from cxr_anomaly.config import Config
from cxr_anomaly.data.dataset import load_images, preprocess_films
from cxr_anomaly.data.resample import preprocess_tensor


def median_ms_per_film(run: Callable[[], object], films: int, repeats: int) -> float:
    """Median milliseconds a film of ``run`` over ``repeats`` calls after one warm-up."""
    return 1000 * time_call(run, repeats).median / films


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--films", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = Config().data
    pixels = load_images(rsna_rows(args.data, args.films), config).pixels  # (films, 224, 224) uint8
    threads = torch.get_num_threads()
    print(f"commit {git_commit()}; {machine_facts()}")
    for count in sorted({16, args.films}):
        batch = pixels[:count]
        paths = {
            "Pillow, 1 thread": lambda: preprocess_films(batch, config),
            f"Pillow, {threads} threads (the CPU path)": lambda: preprocess_films(batch, config, threads=threads),
            "tensor path (float64 products)": lambda: preprocess_tensor(torch.from_numpy(batch), config),
        }
        for name, run in paths.items():
            print(f"batch {count:3d}, {name}: {median_ms_per_film(run, count, args.repeats):.2f} ms a film")


if __name__ == "__main__":
    main()
