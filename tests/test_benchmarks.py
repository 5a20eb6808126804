"""Smoke test of the benchmark suite (``make bench``): it runs and writes every figure.

CI runs only this tiny mode; speed itself is measured by ``make bench`` on a quiet machine.
"""

from __future__ import annotations

import json
import math
import sys
import time
import types
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY_ROOT))  # benchmarks/ is a folder of the repository, not installed

from benchmarks import run  # noqa: E402
from benchmarks.bench_model import scoring_conv_calls, scoring_flops_per_image  # noqa: E402
from benchmarks.common import StageClock  # noqa: E402


def test_stage_clock_charges_nested_calls_to_the_inner_stage_only() -> None:
    """A watched call inside another is not counted twice: stages add up to the wall time."""
    work = types.SimpleNamespace()
    work.inner = lambda: time.sleep(0.1)

    def outer() -> None:
        time.sleep(0.03)
        work.inner()
        work.inner()

    work.outer = outer
    clock = StageClock()
    started = time.perf_counter()
    with clock.watch({"outer": (work, "outer"), "inner": (work, "inner"), "absent": (work, "nothing")}):
        work.outer()
        work.inner()
    wall = time.perf_counter() - started
    assert clock.calls == {"outer": 1, "inner": 3} and clock.missing == ["absent"]
    assert clock.seconds["inner"] >= 0.3
    assert 0.03 <= clock.seconds["outer"] < 0.2  # the inner calls' 0.2 s are not in it
    assert sum(clock.seconds.values()) <= wall


def test_flop_count_matches_the_layer_arithmetic() -> None:
    """torch's FLOP counter agrees with a hand count of the 20 convolutions of U+D+E."""
    from cxr_anomaly.models.tang2019.config import tang2019_config
    from cxr_anomaly.models.tang2019.training import build_detector

    detector = build_detector(tang2019_config())
    calls = scoring_conv_calls(detector, batch_size=2)
    assert len(calls) == 20  # UE 5 + UD 5 + E 5 + D 5
    by_hand = 0
    for call in calls:
        layer = call.layer
        channels_in, size_in = call.input_shape[1], call.input_shape[2]
        kernel = layer.kernel_size[0] * layer.kernel_size[1]
        if layer.__class__.__name__ == "ConvTranspose2d":  # each input pixel scatters into a k x k patch
            by_hand += 2 * size_in * size_in * channels_in * layer.out_channels * kernel
        else:
            size_out = (size_in + 2 * layer.padding[0] - layer.kernel_size[0]) // layer.stride[0] + 1
            by_hand += 2 * size_out * size_out * channels_in * layer.out_channels * kernel
    assert scoring_flops_per_image(detector) == pytest.approx(by_hand, rel=1e-9)
    assert 1.0e9 < by_hand < 1.05e9  # about 1.02 GFLOP per film


@pytest.mark.slow
def test_smoke_run_writes_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "results.json"
    assert run.main(["--smoke", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    model = results["model"]
    assert model["smoke"] is True
    assert len(results["load_average_before"]) == 3
    names = {item["name"] for item in model["scoring"]}
    assert {"fp32 eager (naive)", "fp32 channels_last + inference_mode", "onnxruntime fp32"} <= names
    for item in model["scoring"] + model["training"]:
        for key in (
            "images_per_second",
            "ceiling_images_per_second",
            "fraction_of_ceiling",
            "fraction_of_gemm_ceiling",
        ):
            assert math.isfinite(item[key]) and item[key] > 0, (item["name"], key)
    assert model["latency"]["p99_ms"] >= model["latency"]["p50_ms"] > 0
    assert model["conv_ceiling_gflops"]["fp32"] > 0 and model["gemm_gflops"]["fp32"] > 0
    cache = results["preprocessing"]
    if "skipped" not in cache:
        assert cache["build_rate"] > 0 and cache["ceiling_rate"] > 0
    bound = results["score_bound"]["cpu"]
    if "skipped" not in bound:  # issue 31: each kind of source file against its bound
        assert bound["bound_formula"] == "1 / (decode + model)" and len(bound["sources"]) >= 2
        for item in bound["sources"]:
            assert math.isfinite(item["ratio"]) and item["ratio"] > 0 and item["bound_films_per_second"] > 0
    out = capsys.readouterr().out
    assert "scoring (batch" in out and "scoring from files against its bound" in out


@pytest.mark.parametrize("file_format", ["png", "dicom"])
def test_decode_pool_benchmark_times_both_ways_on_real_films(
    file_format: str, shared_data: Path, tmp_path: Path
) -> None:
    from benchmarks import bench_decode_pool

    output = tmp_path / "decode_pool.json"
    assert (
        bench_decode_pool.main(
            ["--counts", "2", "--repeats", "1", "--warm", "--format", file_format, "--output", str(output)]
        )
        == 0
    )
    (row,) = json.loads(output.read_text())
    assert (row["films"], row["format"], row["fresh_process"]) == (2, file_format, False)
    assert row["in_process_ms_per_film"] > 0 and row["pool_ms_per_film"] > 0
    assert row["pool_speedup"] == pytest.approx(row["in_process_ms_per_film"] / row["pool_ms_per_film"])
