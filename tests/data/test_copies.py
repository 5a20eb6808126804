"""Copies of a film across pipelines, found by content (cxr_anomaly.data.copies)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.copies import COPY_CORRELATION, FilmCopy, film_signatures, matching_signatures
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.jobs.benchmark import FilmSet, warn_on_shared_films


def another_pipeline(film: Image.Image, size: int) -> np.ndarray:
    """The film as another hospital's exporter might give it: another resizer, a gamma curve, JPEG."""
    resized = film.resize((size, size), Image.Resampling.LANCZOS)
    curved = Image.fromarray((255 * (np.asarray(resized) / 255.0) ** 0.7).astype(np.uint8))
    buffer = io.BytesIO()
    curved.save(buffer, format="JPEG", quality=80)
    return np.asarray(Image.open(buffer).convert("L"))


def find_copies(films: np.ndarray, reference: np.ndarray) -> list[FilmCopy]:
    """Films (uint8, N, S, S) that copy a reference film (uint8, M, S', S'), matched as evaluate does."""
    return matching_signatures(film_signatures(films), film_signatures(reference))


def test_the_same_film_through_another_pipeline_is_a_copy_and_other_films_are_not(shared_data: Path) -> None:
    originals = [Image.open(path).convert("L") for path in sorted((shared_data / "nih_fullres").glob("*.png"))[:6]]
    reference = np.stack([np.asarray(film.resize((224, 224), Image.Resampling.BICUBIC)) for film in originals])
    copy = another_pipeline(originals[2], 64)
    others = np.stack([np.asarray(film.resize((64, 64), Image.Resampling.BICUBIC)) for film in originals[3:]])
    uniform = np.full((64, 64), 128, np.uint8)
    found = find_copies(np.stack([copy, uniform]), reference)
    assert [(item.film, item.source) for item in found] == [(0, 2)] and found[0].correlation >= COPY_CORRELATION
    # against the other films alone, nothing is a copy; a uniform film has an all-zero signature
    assert find_copies(np.stack([copy]), reference[[0, 1, 3, 4, 5]]) == []
    assert not film_signatures(uniform[None]).any()
    assert find_copies(others[:0], reference) == [] and find_copies(others, reference[:0]) == []


def test_the_copy_between_rsna_normals_and_nih_pneumonia_is_found(shared_data: Path) -> None:
    # RSNA's readers called this NIH "pneumonia" film normal: it is rsna_normal224's normal-5.png.
    config = DataConfig(image_size=64)
    rsna = load_inputs(shared_data / "rsna_normal224" / "manifest.csv").iloc[:300]
    pneumonia = load_inputs(shared_data / "nih_pneumonia256" / "manifest.csv")
    chosen = pneumonia[
        pneumonia["path"].str.endswith("00004808_003.png") | pneumonia.index.isin(range(40))
    ].reset_index(drop=True)
    found = find_copies(load_images(chosen, config).pixels, load_images(rsna, config).pixels)
    assert [(Path(chosen["path"][item.film]).name, Path(rsna["path"].iloc[item.source]).name) for item in found] == [
        ("00004808_003.png", "normal-5.png")
    ]


def test_the_benchmark_warns_of_a_test_film_that_copies_a_training_film(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = DataConfig(image_size=64)
    originals = sorted((shared_data / "nih_fullres").glob("*.png"))[:4]
    train_pixels = np.stack([np.asarray(Image.open(path).convert("L").resize((64, 64))) for path in originals[:3]])
    test_pixels = np.stack([another_pipeline(Image.open(path).convert("L"), 64) for path in originals[1:]])
    train = FilmSet(
        "train",
        pd.DataFrame({"path": [str(path) for path in originals[:3]], "patient_id": ["1", "2", "3"]}),
        {config: train_pixels},
        "train",
    )
    test = FilmSet(
        "site",
        pd.DataFrame({"path": ["b.png", "c.png", "d.png"], "patient_id": ["7", "8", "9"]}),
        {config: test_pixels},
        "site",
    )
    with caplog.at_level(logging.WARNING, logger="cxr_anomaly.jobs.benchmark_films"):
        warn_on_shared_films(train, test, config, film_signatures(train_pixels))
    assert "site: 2 film(s) are copies of training films" in caplog.text and "['b.png', 'c.png']" in caplog.text
