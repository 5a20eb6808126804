"""Decoding 1024 px films with and without Pillow's pool of freed blocks (``PILLOW_BLOCKS_MAX``).

Usage::

    python -m docs.notebook.research.pillow_blocks [--data ../shared/data] [--films 96] [--rounds 6] [--blocks 4]

Why: Pillow gives each freed image's memory back to the system at once (``PILLOW_BLOCKS_MAX``
defaults to 0), so every film's full-size float image in ``resize_grey`` could be allocated and
faulted in anew; a pool of freed blocks would reuse it. This times ``load_images`` (the decoding
threads that ``score`` uses, decode and resize to 224 px) over ``--films`` distinct copies of the
20 ``nih_fullres`` PNGs and over as many DICOM files written from them, with 0 and with
``--blocks`` blocks, the two settings alternating within every
round (which goes first alternates), after one warm-up pass. Milliseconds a film, medians over
``--rounds``; the decoded films are compared too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmarks.bench_features import dicom_copies, fullres_paths, replicate
from benchmarks.common import git_commit, machine_facts
from PIL import Image

from cxr_anomaly.config import Config
from cxr_anomaly.data.dataset import load_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--films", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args()
    print(f"commit {git_commit()}; {machine_facts()}")
    config = Config().data
    sources = fullres_paths(args.data)
    with tempfile.TemporaryDirectory() as folder:
        collections = {
            "PNG": replicate(sources, args.films, Path(folder) / "png", ".png"),
            "DICOM": dicom_copies(sources, args.films, Path(folder) / "dicom"),
        }
        saved = Image.core.get_blocks_max()
        seconds: dict[tuple[str, int], list[float]] = {}
        films: dict[tuple[str, int], np.ndarray] = {}
        try:
            for rows in collections.values():  # warm-up: imports, page cache, thread pool
                load_images(rows, config)
            for round_index in range(args.rounds):
                order = (0, args.blocks) if round_index % 2 == 0 else (args.blocks, 0)
                for blocks in order:
                    Image.core.set_blocks_max(blocks)
                    for name, rows in collections.items():
                        started = time.perf_counter()
                        films[name, blocks] = load_images(rows, config).pixels
                        seconds.setdefault((name, blocks), []).append(time.perf_counter() - started)
        finally:
            Image.core.set_blocks_max(saved)
    for name in collections:
        same = np.array_equal(films[name, 0], films[name, args.blocks])
        rows = {blocks: [1000 * value / args.films for value in seconds[name, blocks]] for blocks in (0, args.blocks)}
        medians = {blocks: statistics.median(values) for blocks, values in rows.items()}
        print(
            f"{name}: {medians[0]:.2f} ms a film with 0 blocks, {medians[args.blocks]:.2f} with "
            f"{args.blocks} ({medians[0] / medians[args.blocks]:.2f}x); same films: {same}; "
            f"rounds {[round(value, 2) for value in rows[0]]} and "
            f"{[round(value, 2) for value in rows[args.blocks]]}"
        )


if __name__ == "__main__":
    main()
