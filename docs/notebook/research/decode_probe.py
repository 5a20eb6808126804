"""Time the two steps of decoding a full-size film on one core: reading the file, and resizing.

What bounds scoring from files on a small CPU: :func:`cxr_anomaly.io.read_image` (PNG inflate,
or DICOM parsing, to a float grey image) and :func:`cxr_anomaly.io.resize_grey` (Pillow's
bicubic resize of that float image to the model's input size), each timed per film, in this
process, on one thread. Medians over ``--films`` files of ``nih_fullres`` (1024 px PNGs), each
timed ``--repeats`` times (best kept, as for a single-film latency).

    python -m docs.notebook.research.decode_probe --films 10 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
from benchmarks.bench_features import DEFAULT_DATA
from benchmarks.bench_model import time_call

from cxr_anomaly.io import read_image, resize_grey


def main() -> None:
    """Command-line entry point; prints the median milliseconds per film of each step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--films", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="the resize target (the features detector's input)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted((args.data / "nih_fullres").glob("*.png"))[: args.films]
    if not files:
        raise FileNotFoundError(f"no PNG in {args.data / 'nih_fullres'}")
    read_ms, resize_ms = [], []
    for path in files:
        image = read_image(path)
        read = time_call(lambda: read_image(path), args.repeats, warmup=0)
        read_ms.append(1000 * min(read.seconds))
        resize = time_call(lambda: resize_grey(image.array, args.size), args.repeats, warmup=0)
        resize_ms.append(1000 * min(resize.seconds))
    print(
        f"{len(files)} films of {image.array.shape[1]}x{image.array.shape[0]} px, 1 thread, "
        f"load {os.getloadavg()[0]:.2f}: read {statistics.median(read_ms):.1f} ms, "
        f"resize to {args.size} px {statistics.median(resize_ms):.1f} ms (medians per film)"
    )


if __name__ == "__main__":
    main()
