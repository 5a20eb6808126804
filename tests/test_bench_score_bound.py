"""Scoring from files against the bound of its slower stage (benchmarks/bench_score_bound.py, issue 31)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package

from benchmarks import bench_score_bound  # noqa: E402
from benchmarks.bench_score_bound import bound_films_per_second  # noqa: E402

from cxr_anomaly.io import read_image, reduce_film  # noqa: E402


def test_the_bound_adds_the_stages_on_a_cpu_and_takes_the_slower_on_a_gpu() -> None:
    # 10 ms decoding and 30 ms of model a film
    assert bound_films_per_second(0.010, 0.030, "cpu") == pytest.approx(25.0)
    assert bound_films_per_second(0.010, 0.030, "cuda") == pytest.approx(1 / 0.030)
    assert bound_films_per_second(0.050, 0.001, "cuda") == pytest.approx(20.0)  # decoding bounds a GPU
    with pytest.raises(ValueError, match="decode 0.0 s"):
        bound_films_per_second(0.0, 0.030, "cpu")


def test_a_kinds_row_is_its_median_repeat_by_ratio(tmp_path: Path) -> None:
    """Decode, model, bound, rate and ratio all come from one repeat, so the row adds up."""

    def repeat(decode: float, model: float, score: float) -> bench_score_bound.BoundRepeat:
        bound = bound_films_per_second(decode, model, "cpu")
        return bench_score_bound.BoundRepeat(decode, model, score, bound, 1 / score / bound, {"decode": decode}, 0.0)

    repeats = [repeat(0.01, 0.03, 0.05), repeat(0.02, 0.03, 0.05), repeat(0.01, 0.02, 0.031), repeat(0.01, 0.03, 0.1)]
    files = bench_score_bound.SourceFiles("PNG", tmp_path / "manifest.csv", pd.DataFrame({"path": ["a"] * 3}), 1.0)
    row = bench_score_bound.summarise(files, repeats)  # ratios 0.8, 1.0, 0.97, 0.4: the lower middle is 0.8
    assert row.ratio == pytest.approx(0.8) and row.ratio_range == pytest.approx((0.4, 1.0))
    assert row.bound_films_per_second == pytest.approx(25.0) and row.score_films_per_second == pytest.approx(20.0)
    assert row.decode_films_per_second == pytest.approx(100.0) and row.job_milliseconds_per_film == {"decode": 10.0}
    assert row.meets_target and row.films == 3 and row.repeats == repeats


def test_the_dicom_sources_are_twelve_bit_films_and_jpeg_2000_is_lossless(shared_data: Path, tmp_path: Path) -> None:
    if bench_score_bound.jpeg_2000_unavailable():
        pytest.skip(bench_score_bound.jpeg_2000_unavailable())
    source = bench_score_bound.fullres_paths(shared_data)[0]
    eight_bit = np.clip(np.rint(read_image(source).array * 255.0), 0, 255).astype(np.uint8)
    film = bench_score_bound.twelve_bit_film(eight_bit)
    assert film.dtype == np.uint16 and film.max() <= 4095 and len(np.unique(film)) > 1000
    plain = bench_score_bound.write_twelve_bit_dicom(film, tmp_path / "plain.dcm", 1, jpeg_2000=False)
    compressed = bench_score_bound.write_twelve_bit_dicom(film, tmp_path / "j2k.dcm", 2, jpeg_2000=True)
    assert compressed.stat().st_size < plain.stat().st_size / 1.5
    read_plain, read_compressed = read_image(plain), read_image(compressed)
    assert read_compressed.metadata["bits_stored"] == 12
    np.testing.assert_array_equal(read_plain.array, read_compressed.array)
    np.testing.assert_array_equal(reduce_film(read_plain, 224), reduce_film(read_compressed, 224))


@pytest.mark.slow
def test_smoke_run_measures_each_source_against_its_bound(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "bound.json"
    assert (
        bench_score_bound.main(["--smoke", "--device", "cpu", "--data", str(shared_data), "--output", str(output)]) == 0
    )
    result = json.loads(output.read_text())
    assert result["smoke"] and result["device"] == "cpu" and result["bound_formula"] == "1 / (decode + model)"
    expected = {"1024 px PNG (8-bit)", "DICOM 12-bit uncompressed", "DICOM 12-bit JPEG 2000 lossless"}
    assert {item["source"] for item in result["sources"]} | set(result["skipped"]) == expected
    for item in result["sources"]:
        assert item["films"] == result["settings"]["films"]
        for repeat in item["repeats"]:
            decode, model = repeat["decode_seconds_per_film"], repeat["model_seconds_per_film"]
            assert repeat["bound_films_per_second"] == pytest.approx(1.0 / (decode + model))
            assert repeat["ratio"] == pytest.approx(1.0 / repeat["score_seconds_per_film"] / (1.0 / (decode + model)))
            assert math.isfinite(repeat["ratio"]) and repeat["ratio"] > 0
        low, high = item["ratio_range"]
        assert low <= item["ratio"] <= high
        stages = item["job_milliseconds_per_film"]
        assert stages["decode"] > 0 and stages["model"] > 0 and stages["checkpoint load"] > 0
        assert item["meets_target"] == (item["ratio"] >= bench_score_bound.TARGET_RATIO)
    out = capsys.readouterr().out
    assert "against its bound (1 / (decode + model))" in out
    for item in result["sources"]:
        assert item["source"] in out
