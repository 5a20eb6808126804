"""The level-grid fit of wide films (image_base.stretch_to_own_range) ends on every film."""

from __future__ import annotations

import threading

import numpy as np

from cxr_anomaly.image_base import stretch_to_own_range


def test_a_film_whose_darkest_pixel_is_not_sampled_is_stretched_level_by_level() -> None:
    """The grid is fitted on a sample of the levels, measured from the film's own minimum. Where
    that minimum lies far below every sampled level (one dark pixel the sample skips: a 12-bit film
    made by ``benchmarks/bench_score_bound``), no sampled level lay within the first fit's reach and
    the fit divided 0 by 0 and looped for ever."""
    generator = np.random.default_rng(0)
    codes = 1000 + generator.integers(0, 2000, size=1024 * 1024)  # 12-bit levels, all far above 0
    codes[1] = 0  # the film's minimum, between two sampled pixels
    film = (codes / 4095.0).astype(np.float32).reshape(1024, 1024)
    outcome: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: outcome.append(stretch_to_own_range(film).array), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert outcome, "stretch_to_own_range did not return within 60 s"
    expected = (codes / codes.max()).astype(np.float32).reshape(1024, 1024)  # level by level from 0
    np.testing.assert_allclose(outcome[0], expected, rtol=0, atol=1e-6)
