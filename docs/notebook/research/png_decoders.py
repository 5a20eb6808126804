"""How much faster would another PNG decoder read NIH's 1024 px films? (Pillow, pyspng, imagecodecs)

Usage::

    pip install pyspng imagecodecs   # not dependencies of the package
    python -m docs.notebook.research.png_decoders [--data ../shared/data] [--repeats 5]

Decoding is the bound of scoring from files (docs/notebook/2026-11-results-history.md, "Speed of the features detector"),
and PNG's inflate is most of a decode. PNG is lossless, so any decoder gives the same pixels
(checked here): a faster one would be a free gain. Times are the best of ``--repeats`` passes over
the 20 files of ``nih_fullres``, read from memory (no disk), one thread, milliseconds a film.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def pillow(data: bytes) -> np.ndarray:
    """Pillow, the package's decoder."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def decoders() -> dict[str, Callable[[bytes], np.ndarray]]:
    """Pillow, and each optional decoder that imports."""
    found: dict[str, Callable[[bytes], np.ndarray]] = {"pillow": pillow}
    try:
        import pyspng

        found["pyspng (libspng)"] = pyspng.load
    except ImportError:
        print("pyspng not installed: left out")
    try:
        import imagecodecs

        found["imagecodecs (png_decode)"] = lambda data: np.squeeze(imagecodecs.png_decode(data))
    except ImportError:
        print("imagecodecs not installed: left out")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    paths = sorted((args.data / "nih_fullres").glob("*.png"))
    files = [path.read_bytes() for path in paths]
    reference = [pillow(data) for data in files]
    baseline = None
    for name, decode in decoders().items():
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            decoded = [decode(data) for data in files]
            best = min(best, time.perf_counter() - started)
        same = all(np.array_equal(a, b) for a, b in zip(decoded, reference))
        milliseconds = 1000 * best / len(files)
        baseline = baseline or milliseconds
        print(f"{name:26s} {milliseconds:6.2f} ms a film ({baseline / milliseconds:.2f}x Pillow), same pixels: {same}")
    # the package's own path from the file, for scale: Pillow's decode is most of it
    from cxr_anomaly.io import read_image, resize_grey

    for name, run in (
        ("read_image (from disk)", lambda path: read_image(path)),
        ("read_image + resize to 224", lambda path: resize_grey(read_image(path).array, 224)),
    ):
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            for path in paths:
                run(path)
            best = min(best, time.perf_counter() - started)
        print(f"{name:26s} {1000 * best / len(paths):6.2f} ms a film")


if __name__ == "__main__":
    main()
