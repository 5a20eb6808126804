"""Decoding 1024 px films with and without Pillow's pool of freed blocks (``PILLOW_BLOCKS_MAX``).

Usage::

    python -m benchmarks.research.pillow_blocks [--data ../shared/data] [--films 96] [--rounds 5]

Why: :func:`cxr_anomaly.io.reuse_pillow_memory` lets Pillow keep
:data:`~cxr_anomaly.io.PILLOW_FREE_BLOCKS` freed image blocks, where Pillow's default (0) gives
each image's memory back at once. This times ``load_images`` (the decoding threads that
``score`` uses, decode and resize to 224 px) over ``--films`` distinct copies of the 20
``nih_fullres`` PNGs and over as many DICOM files written from them, with 0 and with
:data:`~cxr_anomaly.io.PILLOW_FREE_BLOCKS` blocks, the two settings alternating within every
round. Milliseconds a film, medians over ``--rounds``; the decoded films are compared too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.bench_features import dicom_copies, fullres_paths, replicate
from benchmarks.common import git_commit, machine_facts
from cxr_anomaly.config import Config
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.io import PILLOW_FREE_BLOCKS, reuse_pillow_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--films", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"commit {git_commit()}; {machine_facts()}")
    config = Config().data
    sources = fullres_paths(args.data)
    with tempfile.TemporaryDirectory() as folder:
        collections = {"PNG": replicate(sources, args.films, Path(folder) / "png", ".png"),
                       "DICOM": dicom_copies(sources, args.films, Path(folder) / "dicom")}
        reuse_pillow_memory()  # its one call per process, done, so that it changes nothing below
        saved = Image.core.get_blocks_max()
        seconds: dict[tuple[str, int], list[float]] = {}
        films: dict[tuple[str, int], np.ndarray] = {}
        try:
            for _ in range(args.rounds):
                for blocks in (0, PILLOW_FREE_BLOCKS):
                    Image.core.set_blocks_max(blocks)
                    for name, rows in collections.items():
                        started = time.perf_counter()
                        films[name, blocks] = load_images(rows, config).pixels
                        seconds.setdefault((name, blocks), []).append(time.perf_counter() - started)
        finally:
            Image.core.set_blocks_max(saved)
    for name in collections:
        same = np.array_equal(films[name, 0], films[name, PILLOW_FREE_BLOCKS])
        rows = {blocks: [1000 * value / args.films for value in seconds[name, blocks]]
                for blocks in (0, PILLOW_FREE_BLOCKS)}
        medians = {blocks: statistics.median(values) for blocks, values in rows.items()}
        print(f"{name}: {medians[0]:.2f} ms a film with 0 blocks, {medians[PILLOW_FREE_BLOCKS]:.2f} with "
              f"{PILLOW_FREE_BLOCKS} ({medians[0] / medians[PILLOW_FREE_BLOCKS]:.2f}x); same films: {same}; "
              f"rounds {[round(value, 2) for value in rows[0]]} and "
              f"{[round(value, 2) for value in rows[PILLOW_FREE_BLOCKS]]}")


if __name__ == "__main__":
    main()
