"""The lung-field heuristic of ``docs/notebook/research/lung_field.py`` (a measured negative result)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY_ROOT))  # docs/notebook/research is a folder of the repository, not installed

from docs.notebook.research.lung_field import FALLBACK, crop_lung_fields, lung_box  # noqa: E402


def synthetic_chest(size: int = 224) -> np.ndarray:
    """A bright body on dark air with two dark lungs at rows 50-150, columns 40-100 and 124-184."""
    rows, cols = np.mgrid[:size, :size]
    film = np.full((size, size), 20, dtype=np.uint8)  # air outside the body
    film[(cols > 15) & (cols < size - 15)] = 200  # the body reaches the top and bottom edges
    for centre_col in (70, 154):
        inside = ((rows - 100) / 50) ** 2 + ((cols - centre_col) / 30) ** 2 < 1
        film[inside] = 60
    return film


def test_lung_box_frames_both_lungs_of_a_synthetic_chest() -> None:
    box = lung_box(synthetic_chest())
    assert box.found
    # the lungs span rows 50-150 and columns 40-184 of 224; the box adds a margin of about 5%
    assert 0.1 <= box.top <= 50 / 224 and 150 / 224 <= box.bottom <= 0.85
    assert 0.1 <= box.left <= 40 / 224 and 184 / 224 <= box.right <= 0.95


def test_lung_box_falls_back_to_the_fixed_crop_without_two_lungs() -> None:
    film = synthetic_chest()
    film[:, 112:] = 200  # the right lung is gone (an opaque hemithorax)
    box = lung_box(film)
    assert not box.found
    assert (box.top, box.left, box.bottom, box.right) == FALLBACK


def test_crop_lung_fields_keeps_the_batch_shape() -> None:
    films = np.stack([synthetic_chest(), np.full((224, 224), 128, dtype=np.uint8)])
    cropped = crop_lung_fields(films)
    assert cropped.shape == films.shape and cropped.dtype == np.uint8
    assert not np.array_equal(cropped[0], films[0])  # the first film was cropped to its lungs
