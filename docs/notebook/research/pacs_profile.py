"""Where the DICOM listener's time goes per film, beyond scoring: decode, heatmap, SR and SC, encoding.

``python -m docs.notebook.research.pacs_profile``: one 1024 px ``nih_fullres`` film as a 12-bit DX
DICOM; each stage timed over 5 repeats (mean), then a cProfile of ``build_results``. The anomaly map
is random: the stages after scoring do not depend on its values. Figures: docs/results.md,
"The DICOM listener: throughput".
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom

from cxr_anomaly.explain import colour_bar, explain_film
from cxr_anomaly.io import read_image, resize_grey
from cxr_anomaly.pacs.results import FilmResult, build_results
from cxr_anomaly.pacs.testing import film_dataset_from_png

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "nih_fullres"


def timed(name: str, step: Callable[[], Any], repeats: int = 5) -> Any:
    """Run ``step`` ``repeats`` times, print its mean time, return its last result."""
    started = time.perf_counter()
    for _ in range(repeats):
        result = step()
    print(f"{name}: {(time.perf_counter() - started) / repeats * 1000:.0f} ms")
    return result


def main() -> None:
    film_path = DATA / pd.read_csv(DATA / "manifest.csv")["path"].iloc[0]
    dataset = film_dataset_from_png(film_path, patient_id="PROFILE", study_uid=None)
    stored = Path("/tmp/pacs_profile_film.dcm")
    dataset.save_as(stored, enforce_file_format=True)
    image = timed("read_image", lambda: read_image(stored))
    header = timed("header", lambda: pydicom.dcmread(stored, stop_before_pixels=True))
    model_input = timed("resize", lambda: resize_grey(image.array, 224))
    anomaly_map = np.random.default_rng(0).random((28, 28), dtype=np.float32)
    explanation = timed(
        "heatmap 1024 px", lambda: explain_film(image.array, model_input, anomaly_map, 1.0, floor=0.2, max_side=1024)
    )
    result = FilmResult(1.0, 0.5, 50.0, "not flagged", "profile", "in_scope", "features", "profile")
    objects = timed(
        "build_results",
        lambda: build_results(header, result, explanation.overlay, colour_bar(), scale_floor=0.2, scale_top=1.0),
    )

    def encode() -> None:
        buffer = io.BytesIO()
        objects.structured_report.save_as(buffer, enforce_file_format=True)
        objects.secondary_capture.save_as(buffer, enforce_file_format=True)

    timed("encode SR and SC", encode)
    profile = cProfile.Profile()
    profile.runcall(build_results, header, result, explanation.overlay, colour_bar(), scale_floor=0.2, scale_top=1.0)
    pstats.Stats(profile).sort_stats("cumulative").print_stats(12)


if __name__ == "__main__":
    main()
