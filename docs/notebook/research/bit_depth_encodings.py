"""Score change per encoding: the same real films as 8-bit PNG and as DICOM in each encoding of issue 29.

Usage::

    python -m docs.notebook.research.bit_depth_encodings --data ../shared/data [--films 8]

Writes nothing to the repository; prints one Markdown row per encoding: the largest relative
change of the raw score against the PNG (8-bit films) or against the plain 12-bit DICOM (12-bit
films made from them), and the largest move of the percentile among 100 normal films
(``nih_pneumonia256``), over ``--films`` other films of ``nih_pneumonia256``. The encodings and the
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

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
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
    print(f"commit {git_commit()}, {machine_facts()}, {time.perf_counter() - start:.0f} s")
    print("| film | encoding | largest raw score change | largest percentile move (points) |")
    print("|---|---|---|---|")
    for name, raw in scores.raw.items():
        reference = "12bit:dicom_12bit" if name.startswith("12bit:") else "png"
        if name == reference:
            continue
        expected = scores.raw[reference]
        relative = float(np.max(np.abs(raw - expected) / np.abs(expected)))
        moved = float(np.max(np.abs(scores.percentile(raw) - scores.percentile(expected))))
        film = "12-bit (against 12-bit DICOM)" if name.startswith("12bit:") else "8-bit (against PNG)"
        print(f"| {film} | {name.removeprefix('12bit:')} | {100 * relative:.2f}% | {moved:.0f} |")
    for name, reason in scores.skipped.items():
        print(f"| | {name} | skipped: {reason} | |")


if __name__ == "__main__":
    main()
