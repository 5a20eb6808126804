"""Score change per encoding: the same real films as 8-bit PNG and as DICOM in each encoding of issue 29.

Usage::

    python -m benchmarks.research.bit_depth_encodings --data ../shared/data [--films 8]

Writes nothing to the repository; prints one Markdown row per encoding: the largest relative
change of the raw score against the PNG, and the largest move of the percentile among 100 normal
films (``nih_pneumonia256``), over ``--films`` films of ``nih_fullres``. The encodings and the
detector are those of ``tests/test_bit_depth.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import git_commit, machine_facts

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_bit_depth import score_encodings  # the test module is not a package


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--films", type=int, default=8)
    arguments = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        scores = score_encodings(arguments.data, Path(folder), arguments.films)
    png = scores.raw["png"]
    print(f"commit {git_commit()}, {machine_facts()}, {time.perf_counter() - start:.0f} s")
    print("| encoding | largest raw score change | largest percentile move (points) |")
    print("|---|---|---|")
    for name, raw in scores.raw.items():
        if name == "png":
            continue
        relative = float(np.max(np.abs(raw - png) / np.abs(png)))
        moved = float(np.max(np.abs(scores.percentile(raw) - scores.percentile(png))))
        print(f"| {name} | {100 * relative:.2f}% | {moved:.0f} |")
    for name, reason in scores.skipped.items():
        print(f"| {name} | skipped: {reason} | |")


if __name__ == "__main__":
    main()
