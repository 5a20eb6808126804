"""Peak memory of reading hostile DICOM files against one frame of the same film (issue 13).

Every file is built from one real full-resolution NIH film (1024x1024, ``nih_fullres``):

- ``single``: the film, RLE Lossless, one frame (the reference);
- ``rle64``: 64 frames, the film first and 63 flat grey frames, RLE: small on disk, 64 MB once
  every frame is decoded; 64 frames of 1024² is the most the service admits (8192² pixels);
- ``rle95``: 95 frames, the most the command line's default limit (10^8 pixels) admits;
- ``rle1900``: 1,900 flat frames (32 MB, under the service's 32 MiB upload limit): 2 GB decoded;
- ``declared``: a one-frame file that declares 99,999,999 frames.

Each file is read with :func:`cxr_anomaly.io.read_image` under :mod:`tracemalloc` (numpy and
pydicom allocations are traced) after one warm-up read, and the result is the peak traced memory,
the wall time and the outcome (read, or the documented error)::

    .venv/bin/python -m benchmarks.hostile_dicom --out runs/hostile_dicom.json
    .venv/bin/python -m benchmarks.hostile_dicom --cases single,rle64   # e.g. with an older checkout

``--cases`` picks a subset: an older reader that decodes every frame needs minutes and gigabytes
for the larger files.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILM = REPOSITORY_ROOT.parent / "shared" / "data" / "nih_fullres" / "00000427_000.png"
CASES: dict[str, int] = {"single": 1, "rle64": 64, "rle95": 95, "rle1900": 1900, "declared": 99_999_999}


@dataclass(frozen=True)
class CaseResult:
    """One hostile file read once.

    Attributes:
        case: the name in :data:`CASES`.
        frames: NumberOfFrames the file declares.
        file_bytes: size on disk.
        outcome: ``read`` or the name of the documented error.
        peak_mb: peak traced memory while reading, in MB (10^6 bytes).
        ratio_to_single: ``peak_mb`` over the single frame's.
        seconds: wall time of the read.
    """

    case: str
    frames: int
    file_bytes: int
    outcome: str
    peak_mb: float
    ratio_to_single: float | None
    seconds: float


def rle_frame(pixels: np.ndarray) -> bytes:
    """The RLE Lossless encoding of one uint8 frame (rows, columns)."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import RLELossless

    dataset = film_dataset(pixels)
    dataset.compress(RLELossless)
    return next(iter(generate_frames(dataset.PixelData, number_of_frames=1)))


def film_dataset(pixels: np.ndarray) -> Dataset:
    """A minimal DX data set holding ``pixels`` (rows, columns), uncompressed."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=8)
    return dataset


def write_case(film: np.ndarray, frames: int, path: Path) -> Path:
    """An RLE file of ``frames`` frames: the film, then flat grey (the declared case holds one)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    first, flat = rle_frame(film), rle_frame(np.full_like(film, 128))
    stored = 1 if frames > 10_000 else frames  # "declared": the header lies about the count
    dataset = film_dataset(film)
    dataset.file_meta.TransferSyntaxUID = RLELossless
    dataset.NumberOfFrames = frames
    dataset.PixelData = encapsulate([first] + [flat] * (stored - 1))
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def measure(path: Path) -> tuple[str, float, float]:
    """Outcome, peak traced MB and seconds of one read of ``path``."""
    from cxr_anomaly.errors import CxrAnomalyError
    from cxr_anomaly.io import read_image

    tracemalloc.start()
    started = time.perf_counter()
    try:
        read_image(path)
        outcome = "read"
    except CxrAnomalyError as error:
        outcome = type(error).__name__
    except MemoryError:
        outcome = "MemoryError (undocumented)"
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return outcome, peak / 1e6, seconds


def git_commit() -> str:
    """Short hash of the checked-out commit, or 'unknown'."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=REPOSITORY_ROOT
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Build the hostile files, read each one under tracemalloc, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--film", type=Path, default=DEFAULT_FILM, help="a real grey PNG film (default: NIH)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write the results to")
    args = parser.parse_args(argv)
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; expected some of {list(CASES)}")
    import cxr_anomaly

    with Image.open(args.film) as image:
        film = np.ascontiguousarray(np.asarray(image.convert("L"), dtype=np.uint8))
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        reference = write_case(film, 1, folder / "warm-up.dcm")
        measure(reference)  # imports and first-use caches do not count below
        single_peak: float | None = None
        for case in ["single", *[case for case in cases if case != "single"]]:
            path = write_case(film, CASES[case], folder / f"{case}.dcm")
            outcome, peak_mb, seconds = measure(path)
            single_peak = peak_mb if case == "single" else single_peak
            ratio = round(peak_mb / single_peak, 2) if single_peak else None
            results.append(
                CaseResult(case, CASES[case], path.stat().st_size, outcome, round(peak_mb, 2), ratio, round(seconds, 3))
            )
            logger.info("%s: %s", case, results[-1])
    summary = {
        "film": str(args.film),
        "film_shape": list(film.shape),
        "package": str(Path(cxr_anomaly.__file__).resolve().parent),
        "commit": git_commit(),
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "cases": [asdict(result) for result in results],
    }
    text = json.dumps(summary, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
