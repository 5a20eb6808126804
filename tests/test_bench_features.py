"""The features-detector benchmark (benchmarks/bench_features.py), its helpers, and the speed fixes it led
to in the features family, which must leave every output unchanged."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package

from benchmarks import bench_features  # noqa: E402
from benchmarks.common import StageClock, record_conv_calls  # noqa: E402

from cxr_anomaly.models.features import torch_model  # noqa: E402
from cxr_anomaly.models.features.backbone import build_backbone  # noqa: E402
from cxr_anomaly.models.features.fitting import greedy_coreset  # noqa: E402


def reference_squared_distances(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The features family's distance before the speed fix, kept here as the reference."""
    cross = queries @ bank.T
    return (queries.pow(2).sum(dim=1, keepdim=True) - 2.0 * cross + bank.pow(2).sum(dim=1)[None, :]).clamp_min(0.0)


def reference_greedy_coreset(points: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-centre selection as the features family did it before the speed fix."""
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = torch.randint(len(points), (1,), generator=generator)
    nearest = reference_squared_distances(points, points[chosen[0]][None]).squeeze(1)
    for step in range(1, size):
        chosen[step] = torch.argmax(nearest)
        nearest = torch.minimum(nearest, reference_squared_distances(points, points[chosen[step]][None]).squeeze(1))
    return chosen


def test_the_speed_fixes_leave_distances_and_coresets_unchanged() -> None:
    """In-place distances, |p|² kept across coreset steps and a chunked nearest-neighbour search
    compute the same numbers as before (the same operations on the same values)."""
    if not hasattr(torch_model, "nearest_distances"):
        pytest.skip("the features family has no nearest_distances (the chunked search is not in this tree)")
    squared_distances, nearest_distances = torch_model.squared_distances, torch_model.nearest_distances
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(5000, 64, generator=generator) * 3.0 + 1.0
    assert torch.equal(
        greedy_coreset(points, 200, torch.Generator().manual_seed(1)),
        reference_greedy_coreset(points, 200, torch.Generator().manual_seed(1)),
    )
    queries, bank = torch.rand(3000, 152, generator=generator), torch.rand(700, 152, generator=generator)
    assert torch.equal(squared_distances(queries, bank), reference_squared_distances(queries, bank))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 product is widened as before
        assert torch.equal(squared_distances(queries[:200], bank), reference_squared_distances(queries[:200], bank))
    expected = reference_squared_distances(queries, bank).min(dim=1).values.sqrt()
    for chunk in (256, 1000, 4096, None):  # None: the device's default
        torch.testing.assert_close(nearest_distances(queries, bank, chunk), expected, rtol=1e-6, atol=0.0)


def test_recorded_convolutions_are_the_backbones_with_torchs_flop_count() -> None:
    """48 convolutions of EfficientNet-Lite0, each with the input and padding it really received."""
    backbone, _ = build_backbone("efficientnet_lite0", pretrained=False)
    images = torch.rand(2, 3, 64, 64)
    calls = record_conv_calls(lambda: backbone(images))
    assert len(calls) == 48  # stem + 2 in the first block + 3 in each of the other 15
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        backbone(images)
    assert sum(call.flops for call in calls) == pytest.approx(counter.get_total_flops(), rel=1e-9)
    # The stride-2 stem: TensorFlow's SAME padding (0 before, 1 after) as a symmetric padding of 2
    # whose first output row and column are dropped (SamePadConv2d).
    assert calls[0].input_shape == (2, 3, 64, 64) and calls[0].layer.padding == (2, 2)
    kinds = {bench_features.layer_kind(call) for call in calls}
    assert kinds == {"stem 3x3", "depthwise", "1x1 expand", "1x1 project"}
    with torch.inference_mode():
        assert calls[1].layer(torch.zeros(calls[1].input_shape)).shape[0] == 2


def test_stage_clock_times_classes_instances_and_modules_then_restores_them() -> None:
    class Worker(nn.Module):
        def forward(self, value: torch.Tensor) -> torch.Tensor:
            return value + 1

        def helper(self) -> int:
            return 1

    module = types.SimpleNamespace(function=lambda: 2)
    instance = Worker()
    clock = StageClock()
    with clock.watch(
        {
            "class": (Worker, "helper"),
            "instance": (instance, "forward"),
            "module": (module, "function"),
            "absent": (module, "renamed"),
        }
    ):
        assert Worker().helper() == 1 and instance(torch.zeros(1)).item() == 1 and module.function() == 2
    assert clock.calls == {"class": 1, "instance": 1, "module": 1}
    assert all(seconds >= 0.0 for seconds in clock.seconds.values())
    assert clock.missing == ["absent"]
    assert "forward" not in vars(instance) and Worker.helper.__name__ == "helper"
    assert module.function.__name__ == "<lambda>"


@pytest.mark.slow
def test_smoke_run_writes_every_figure(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "features.json"
    assert bench_features.main(["--smoke", "--data", str(shared_data), "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["smoke"] is True and result["commit"] and result["machine_before"]["cpu_model"]
    fit = result["fit"]
    stages = {"decode", "preprocessing", "features pass", "coreset selection", "Gaussian (Ledoit-Wolf)"}
    assert (
        stages <= set(fit["seconds"])
        and fit["seconds"]["frozen trunk pass (its preprocessing counted under preprocessing)"] > 0
    )
    assert "not timed" not in fit["note"], fit["note"]  # every stage was found in the library
    assert result["ceiling_films_per_second"] > 0 and result["conv_layers"] == 48
    assert result["scoring_gflop_per_film"] > result["backbone_gflop_per_film"] > 0.5
    names = {item["name"] for item in result["scoring"]}
    assert {
        "from 1024 px PNG: load_images + score_films",
        "from DICOM: load_images + score_films",
        "naive: contiguous weights, no_grad",
        "score_films, 1 thread",
    } <= names
    assert any(name.startswith("onnxruntime") for name in names)
    for item in result["scoring"]:
        for key in ("films_per_second", "fraction_of_ceiling", "fraction_of_whole_graph_ceiling"):
            assert math.isfinite(item[key]) and item[key] > 0, (item["name"], key)
    from_png = next(item for item in result["scoring"] if item["name"].startswith("from 1024 px PNG"))
    assert {"decode", "preprocessing", "backbone", "nearest-neighbour search"} <= set(from_png["seconds_per_film"])
    out = capsys.readouterr().out
    assert "| variant |" in out and "ceiling (backbone convolutions alone" in out


def test_the_gpu_script_runs_on_a_cpu_and_times_the_fit_by_stage(shared_data: Path, tmp_path: Path) -> None:
    from benchmarks import bench_features_gpu

    output = tmp_path / "gpu.json"
    bench_features_gpu.main(
        ["--device", "cpu", "--data", str(shared_data), "--fit-films", "12", "--films", "4", "--repeats", "1"]
        + ["--batches", "--precisions", "fp32", "--output", str(output)]
    )
    result = json.loads(output.read_text())
    assert result["device"] == "cpu" and result["fit_films"] == 12 and result["fit_seconds"] > 0
    stages = result["fit_stages_seconds"]
    assert stages["frozen trunk pass (its preprocessing counted under preprocessing)"] > 0
    assert stages["fine-tuning the later stages on the trunk's cached maps (MSC)"] > 0
    assert result["fp32"]["ceiling_films_per_s"] > 0
