"""How much equalising a 12-bit film at its own depth changes its model input and score.

Usage::

    python -m docs.notebook.research.depth16_measure --data ../shared/data --before-src SRC

``SRC`` is the ``src`` folder of a checkout from before films of more than 256 grey levels kept 16
bits (``git archive ec208af src | tar -x -C /tmp/before``, then ``/tmp/before/src``), with the fix
of ``_grid_step`` in ``image_base.py`` from the same change applied: without it that commit never
finishes decoding some of these films (an endless loop when a film's lowest grey level lies far
below the next). The 20
``nih_fullres`` films (1024², 8-bit) are made into 12-bit films two ways, each with thousands of grey
levels: ``smoothed`` (a 3x3 mean, x16, as ``tests/test_bit_depth.py`` does) and ``resampled``
(shrunk to 512² with Lanczos and enlarged back bicubically, in float, to 12 bits). Each is written as
a 12-bit DICOM and decoded twice: by the checkout before (reduced to 8-bit codes before the
equalisation, run in a subprocess) and by this one (16-bit codes, equalised at 16 bits). Both are
preprocessed as the features detector does (224 px, border crop 0.2, detail 64, equalize) and
scored by the small features detector of ``tests/test_bit_depth.py``, fp32; percentiles among its
100 normal films. Writes nothing to the repository; prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from benchmarks.common import git_commit, machine_facts
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from cxr_anomaly.data.dataset import load_images, preprocess_films
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.models.registry import fit_detector
from cxr_anomaly.scoring import score_films
from test_bit_depth import SMALL, _dicom, twelve_bit_film  # the test module is not a package

BEFORE_SCRIPT = """
import sys, numpy as np, pandas as pd
from cxr_anomaly.data.dataset import load_images, preprocess_films
from test_bit_depth import SMALL
paths = sys.argv[2:]
pixels = load_images(pd.DataFrame({"path": paths}), SMALL.data, workers=1).pixels
np.savez(sys.argv[1], pixels=pixels, inputs=preprocess_films(pixels, SMALL.data))
"""


def resampled_film(film: np.ndarray) -> np.ndarray:
    """A 12-bit film from an 8-bit one: shrunk to half with Lanczos and enlarged back bicubically, in float."""
    image = Image.fromarray(film.astype(np.float32) / 255.0, mode="F")
    half = image.resize((film.shape[1] // 2, film.shape[0] // 2), Image.Resampling.LANCZOS)
    back = np.asarray(half.resize((film.shape[1], film.shape[0]), Image.Resampling.BICUBIC), dtype=np.float64)
    return np.clip(np.rint(back * 4095.0), 0, 4095).astype(np.uint16)


def decode_before(before_src: Path, paths: list[str], folder: Path) -> dict[str, np.ndarray]:
    """Codes and model inputs of ``paths`` as the checkout at ``before_src`` makes them."""
    out = folder / "before.npz"
    tests = Path(__file__).resolve().parents[3] / "tests"
    environment = {**os.environ, "PYTHONPATH": f"{before_src}{os.pathsep}{tests}", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", BEFORE_SCRIPT, str(out), *paths], check=True, env=environment, timeout=900)
    with np.load(out) as archive:
        return {"pixels": archive["pixels"], "inputs": archive["inputs"]}


def summarise(
    name: str,
    before: dict[str, np.ndarray],
    after: np.ndarray,
    scores: dict[str, np.ndarray],
    percentile: Callable[[np.ndarray], np.ndarray],
) -> str:
    """One Markdown row: input change in 8-bit steps, raw score change, percentile move."""
    inputs_after = preprocess_films(after, SMALL.data)
    change = np.abs(inputs_after - before["inputs"]) * 255.0  # in 8-bit steps of the [0, 1] input
    relative = np.abs(scores["after"] - scores["before"]) / np.abs(scores["before"])
    moved = np.abs(percentile(scores["after"]) - percentile(scores["before"]))
    levels = np.median([np.unique(film).size for film in after])
    return (
        f"| {name} | {levels:.0f} | {change.mean():.3f} | {np.median(change.reshape(len(after), -1).max(axis=1)):.1f}"
        f" / {change.max():.1f} | {100 * (change > 0.5).mean():.1f}% | {100 * np.median(relative):.2f}%"
        f" / {100 * relative.max():.2f}% | {np.median(moved):.0f} / {moved.max():.0f} |"
    )


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--before-src", type=Path, required=True)
    arguments = parser.parse_args()
    start = time.perf_counter()
    train = load_inputs(arguments.data / "rsna_normal224" / "manifest.csv").iloc[:48]
    detector = fit_detector(SMALL, load_images(train, SMALL.data, workers=1).pixels, progress=False).detector
    pneumonia = load_inputs(arguments.data / "nih_pneumonia256" / "manifest.csv")
    normal_rows = pneumonia[pneumonia["label"] == 0].head(100)
    normals = score_films(detector, load_images(normal_rows, SMALL.data, workers=1).pixels, precision="fp32").raw

    def percentile(scores: np.ndarray) -> np.ndarray:
        return 100.0 * (normals[None, :] < scores[:, None]).mean(axis=1)

    sources = load_inputs(arguments.data / "nih_fullres" / "manifest.csv")["path"].tolist()
    rows, directions = [], []
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        pngs = []
        for index, source in enumerate(sources):  # the 8-bit films the 12-bit ones are made from
            Image.open(source).convert("L").save(folder / f"source{index}.png")
            pngs.append(str(folder / f"source{index}.png"))
        png_pixels = load_images(pd.DataFrame({"path": pngs}), SMALL.data, workers=1).pixels
        png_scores = score_films(detector, png_pixels, precision="fp32").raw
        for name, make in (("smoothed", twelve_bit_film), ("resampled", resampled_film)):
            paths = []
            for index, source in enumerate(sources):
                film = make(np.asarray(Image.open(source).convert("L")))
                paths.append(str(_dicom(film, folder / f"{name}{index}.dcm", bits_stored=12)))
            before = decode_before(arguments.before_src, paths, folder)
            after = load_images(pd.DataFrame({"path": paths}), SMALL.data, workers=1).pixels
            assert before["pixels"].dtype == np.uint8 and after.dtype == np.uint16
            # the 8-bit path is unchanged: this checkout gives the earlier inputs from the earlier codes
            assert np.array_equal(preprocess_films(before["pixels"], SMALL.data), before["inputs"])
            scores = {
                "before": score_films(detector, before["pixels"], precision="fp32").raw,
                "after": score_films(detector, after, precision="fp32").raw,
            }
            rows.append(summarise(name, before, after, scores, percentile))
            signed = (scores["after"] - scores["before"]) / np.abs(scores["before"])
            off_png = {key: np.abs(value - png_scores) / np.abs(png_scores) for key, value in scores.items()}
            directions.append(
                f"| {name} | {100 * signed.mean():+.2f}% | {int((signed > 0).sum())} of {len(signed)} |"
                f" {100 * np.median(off_png['before']):.2f}% | {100 * np.median(off_png['after']):.2f}% |"
            )
        timing_films = after[:16]
        begin = time.perf_counter()
        preprocess_films(before["pixels"][:16], SMALL.data)
        eight_seconds = time.perf_counter() - begin
        begin = time.perf_counter()
        preprocess_films(timing_films, SMALL.data)
        sixteen_seconds = time.perf_counter() - begin
    print(f"commit {git_commit()}, {machine_facts()}, {time.perf_counter() - start:.0f} s")
    print(
        "| 12-bit films (20 nih_fullres) | grey levels at 224 px (median) | mean input change (8-bit steps) |"
        " largest input change per film, median / max | pixels moved > 0.5 step | raw score change median / max |"
        " percentile move median / max (points) |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print(
        "| 12-bit films | mean signed raw score change (at depth - reduced first) | films scored higher at depth |"
        " raw score off the 8-bit source PNG's, reduced first (median) | at depth (median) |"
    )
    print("|---|---|---|---|---|")
    print("\n".join(directions))
    print(
        f"preprocessing 16 films on one thread: 8-bit codes {1000 * eight_seconds / 16:.1f} ms a film, "
        f"16-bit codes {1000 * sixteen_seconds / 16:.1f} ms a film"
    )


if __name__ == "__main__":
    main()
