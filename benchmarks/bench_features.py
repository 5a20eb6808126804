"""Speed of the features detector (issue 10, point 5): fitting, and scoring against the backbone's ceiling.

Run: ``.venv/bin/python -m benchmarks.bench_features [--smoke] [--output FILE]`` (``make bench``
runs it through :mod:`benchmarks.run`). The detector is the default one, ``Config()``: ImageNet
EfficientNet-Lite0 at 224 px, fine-tuned on the normals (MSC, ``features.finetune_epochs``), with
a Gaussian, a pooled kNN and a patch memory bank.

What it measures (figures are medians over ``repeats`` unless said otherwise):

- **fit**: :func:`cxr_anomaly.models.registry.fit_detector` on N normals of ``rsna_normal224``
  (5,000 in the full run), split into decode (:func:`~cxr_anomaly.data.dataset.load_images`),
  preprocessing, the frozen trunk pass, the fine-tuning, the features pass, coreset selection,
  the Ledoit-Wolf Gaussian and the rest (patch collection, candidate projection, the heatmap
  radius). The stages are timed inside the real call (:class:`benchmarks.common.StageClock`).
  The fit runs once: its figures are one measurement, not a median. ``--fit-only`` runs it alone.
- **scoring from files**: films/s of the package's own path, decode included:
  ``load_images`` (its decoding threads, no cache) then :func:`cxr_anomaly.scoring.score_films`
  (the detector's scoring batch for the device and precision ``auto``), from 1024 px PNG (``nih_fullres``,
  replicated) and from DICOM copies of the same films written with pydicom, with the time split
  into decode, preprocessing, backbone, nearest-neighbour search (patch memory bank) and the
  other heads.
- **the ceiling**: every convolution of the backbone, recorded from a real scoring batch (same
  shapes, batch, weights, precision), timed alone layer by layer in channels_last (the layout
  scoring uses) and, as :mod:`benchmarks.bench_model` does, in the faster of the two layouts per
  layer. ``ceiling films/s = batch / Σ layer seconds``: what scoring would reach if it did
  nothing but the backbone's convolutions. It is re-measured in every repeat, just before the
  scoring figures, so load from other processes hits both alike. A 2048² GEMM gives the rate of
  the nearest-neighbour search's matrix product; with it, a second, **whole-graph ceiling**
  adds the time the heads' FLOPs need at that rate.
- **speed-ups**, each on decoded films (decode excluded), against the same ceiling: the naive
  path (contiguous weights, ``no_grad``), channels_last, ``inference_mode``, batch size, one
  thread, the memory bank's size and grid (``features.memory_bank_size``,
  ``features.patch_grid``: accuracy settings, reported as a speed cost only), the backbone
  alone, and onnxruntime through :class:`cxr_anomaly.export.OnnxScorer`.
- **bf16**: in the repeat loop where the CPU has it natively; where it is emulated (no
  AVX512-BF16/AMX) once, on a tiny batch, beside a bf16 ceiling of that batch.
- **profile**: the operators of one scoring batch by self CPU time (torch.profiler).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_model import conv_ceiling_gflops, gemm_gflops, time_call
from benchmarks.common import StageClock, git_commit, machine_facts, record_conv_calls, uncommitted_files
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.inference import inference_autocast, native_bf16, resolve_precision, to_channels_last
from cxr_anomaly.models.base import DEFAULT_SCORING_BATCH_SIZE
from cxr_anomaly.models.registry import build_detector, fit_detector
from cxr_anomaly.scoring import score_films

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path(
    os.environ.get("CXR_ANOMALY_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data")
)
GEMM_SIZE = 2048
TARGET_FRACTION = 0.8  # issue 10: scoring within 80% of the backbone's convolution ceiling


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: full (``make bench``) or smoke (CI: checks that it works, not how fast)."""

    smoke: bool
    fit_films: int  # rsna_normal224 normals to fit on
    file_films: int  # films scored from PNG and from DICOM files, per repeat
    variant_films: int  # decoded films each speed-up variant scores, per repeat
    repeats: int
    score_batch: int  # the ceiling's batch and the hand-written loops' (the base scoring default)
    bf16_films: int  # batch of the one-shot bf16 timing where bf16 is emulated
    profile_films: int

    @classmethod
    def for_run(cls, smoke: bool, repeats: int | None = None, fit_films: int | None = None) -> Settings:
        """The full run's sizes, or the smoke run's."""
        if smoke:
            return cls(True, fit_films or 12, 2, 2, repeats or 1, 2, 1, 2)
        return cls(
            False, fit_films or 5000, 128, DEFAULT_SCORING_BATCH_SIZE, repeats or 3, DEFAULT_SCORING_BATCH_SIZE, 2, 16
        )


def benchmark_config(settings: Settings) -> Config:
    """The library's default configuration; in smoke mode with tiny banks (fit in seconds)."""
    config = Config()
    if settings.smoke:
        config = with_overrides(config, "features", memory_bank_size=64, pooled_bank_size=16, batch_size=8)
    return config


# ---------------------------------------------------------------- data


def rsna_rows(data_root: Path, count: int) -> pd.DataFrame:
    """The first ``count`` films of ``rsna_normal224`` (all of them when there are fewer)."""
    manifest = load_inputs(data_root / "rsna_normal224" / "manifest.csv")
    return manifest.iloc[:count].reset_index(drop=True)


def fullres_paths(data_root: Path) -> list[Path]:
    """The 1024 px PNGs of ``nih_fullres``."""
    manifest = load_inputs(data_root / "nih_fullres" / "manifest.csv")
    return [Path(path) for path in manifest["path"].astype(str)]


def replicate(sources: list[Path], count: int, folder: Path, suffix: str) -> pd.DataFrame:
    """``count`` file copies cycling through ``sources`` (distinct paths, so each is decoded)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        target = folder / f"{index:05d}_{source.stem}{suffix}"
        shutil.copyfile(source, target)
        paths.append(str(target))
    return pd.DataFrame({"path": paths})


def write_dicom(
    pixels: np.ndarray, path: Path, uid_suffix: int, *, view: str | None = None, age: str | None = None
) -> Path:
    """Save uint8 grey pixels (rows, columns) as an uncompressed 8-bit MONOCHROME2 DICOM film,
    with ``ViewPosition`` and ``PatientAge`` (``"042Y"``) when given.

    As ``tests/conftest.py``'s ``write_dicom_film`` does, without patient identifiers.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    uid = f"1.2.826.0.1.3680043.10.1459.{uid_suffix}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.StudyInstanceUID = uid + ".1"
    dataset.Modality = "DX"
    if view is not None:
        dataset.ViewPosition = view
    if age is not None:
        dataset.PatientAge = age
    dataset.set_pixel_data(
        np.ascontiguousarray(pixels, dtype=np.uint8), photometric_interpretation="MONOCHROME2", bits_stored=8
    )
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = uid
    dataset.save_as(path, enforce_file_format=True)
    return path


def dicom_copies(sources: list[Path], count: int, folder: Path) -> pd.DataFrame:
    """DICOM versions of the PNG ``sources`` at full resolution, replicated to ``count`` files."""
    from cxr_anomaly.io import read_image

    folder.mkdir(parents=True, exist_ok=True)
    originals = []
    for index, source in enumerate(sources[:count]):
        grey = read_image(source).array  # (H, W) float in [0, 1]
        pixels = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
        originals.append(write_dicom(pixels, folder / f"source_{index:03d}.dcm", index + 1))
    return replicate(originals, count, folder / "copies", ".dcm")


# ---------------------------------------------------------------- fitting


@dataclass
class FitFigures:
    """One fit of the default detector: total seconds and the stages inside it."""

    films: int
    seconds_total: float  # decode + fit_detector
    seconds: dict[str, float]  # decode, each stage of the fit (see the module docstring), other
    backbone_films_per_second: float
    memory_bank_size: int
    patches_seen: int
    note: str = "one measurement, not a median"


def measure_fit(config: Config, rows: pd.DataFrame, device: str = "cpu") -> tuple[Any, FitFigures]:
    """Decode and fit the detector of ``config`` on ``rows`` on ``device``; time each stage inside
    the real call (on a GPU each stage ends when its results reach the host)."""
    from sklearn.covariance import LedoitWolf

    from cxr_anomaly.models.features import fitting
    from cxr_anomaly.models.features.torch_model import FeatureDetector

    started = time.perf_counter()
    pixels = load_images(rows, config.data).pixels  # (N, 224, 224) uint8
    decode_seconds = time.perf_counter() - started
    clock = StageClock()
    with clock.watch(
        {
            "fine-tuning the whole backbone (MSC; its preprocessing counted under preprocessing)": (
                fitting,
                "finetune_backbone",
            ),
            "fine-tuning the later stages on the trunk's cached maps (MSC)": (fitting, "finetune_head"),
            "frozen trunk pass (its preprocessing counted under preprocessing)": (fitting, "trunk_pass"),
            "preprocessing": (FeatureDetector, "model_input"),
            "features pass": (fitting, "features_of_maps"),
            "coreset selection": (fitting, "greedy_coreset"),
            "Gaussian (Ledoit-Wolf)": (LedoitWolf, "fit"),
        }
    ):
        fit_started = time.perf_counter()
        result = fit_detector(config, pixels, device=device, progress=False)
        fit_seconds = time.perf_counter() - fit_started
    seconds = {"decode": decode_seconds, **clock.seconds}
    seconds["other (patch collection, projection, radius, weights)"] = fit_seconds - sum(clock.seconds.values())
    # every backbone stage the films go through once: the trunk pass (if any) and the features pass
    backbone = sum(
        clock.seconds.get(stage, 0.0) for stage in clock.seconds if stage.startswith(("frozen trunk", "features pass"))
    ) or float("nan")
    record = result.record
    figures = FitFigures(
        len(pixels),
        decode_seconds + fit_seconds,
        seconds,
        len(pixels) / backbone,
        int(record.get("memory_bank_size", 0)),
        int(record.get("num_patches_seen", 0)),
    )
    if clock.missing:
        figures.note += f"; stages not found in the library (not timed): {clock.missing}"
    return result.detector, figures


# ---------------------------------------------------------------- the ceiling


def flops_per_film(detector: Any, image_size: int) -> tuple[float, float]:
    """FLOPs of one film through the backbone and through the whole scoring graph (torch's count)."""
    images = torch.zeros(2, 3, image_size, image_size)  # (N, 3, S, S)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as backbone:
            detector.backbone(images)
        with FlopCounterMode(display=False) as whole:
            detector(images)
    return backbone.get_total_flops() / 2, whole.get_total_flops() / 2


def backbone_conv_calls(detector: Any, pixels: np.ndarray) -> list[Any]:
    """The backbone's convolutions on a scoring batch of ``pixels``, as the scoring path feeds them."""
    inputs = detector.model_input(pixels)  # (B, 3, S, S)
    return record_conv_calls(lambda: detector.backbone(inputs))


def layer_seconds(calls: list[Any], precision: str, layout: torch.memory_format, repeats: int = 1) -> list[float]:
    """Median seconds of each convolution run alone in one precision and layout."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    seconds = []
    for call in calls:
        layer = copy.deepcopy(call.layer).to(dtype=dtype, memory_format=layout)
        inputs = torch.randn(call.input_shape).to(dtype=dtype, memory_format=layout)
        with torch.inference_mode():
            seconds.append(time_call(lambda: layer(inputs), repeats).median)
    return seconds


def layer_kind(call: Any) -> str:
    """stem, depthwise, 1x1 expand or 1x1 project: the four kinds of convolution in the trunk."""
    layer = call.layer
    if layer.groups > 1:
        return "depthwise"
    if layer.kernel_size != (1, 1):
        return "stem 3x3"
    return "1x1 expand" if layer.out_channels > layer.in_channels else "1x1 project"


@dataclass
class CeilingRepeat:
    """The ceilings measured in one repeat."""

    channels_last_films_per_second: float  # same layout as scoring
    best_layout_films_per_second: float  # faster layout per layer, as bench_model
    gemm_gflops: float
    seconds_by_kind: dict[str, float]  # channels_last seconds per batch, per kind of layer
    one_thread_films_per_second: float | None = None  # channels_last on one thread, for the 1-thread variant


def measure_ceiling(
    calls: list[Any], batch: int, precision: str, backbone_flops_batch: float, gemm_size: int
) -> CeilingRepeat:
    """One measurement of the convolution ceilings (channels_last, best layout) and the GEMM rate."""
    same_layout = layer_seconds(calls, precision, torch.channels_last)
    best_gflops = conv_ceiling_gflops(calls, precision, 1)
    by_kind: dict[str, float] = {}
    for call, seconds in zip(calls, same_layout):
        by_kind[layer_kind(call)] = by_kind.get(layer_kind(call), 0.0) + seconds
    one_thread = None
    if torch.get_num_threads() > 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one_thread = batch / sum(layer_seconds(calls, precision, torch.channels_last))
        finally:
            torch.set_num_threads(previous)
    return CeilingRepeat(
        batch / sum(same_layout),
        best_gflops * 1e9 / (backbone_flops_batch / batch),
        gemm_gflops(precision, 1, gemm_size),
        by_kind,
        one_thread,
    )


# ---------------------------------------------------------------- scoring variants


@dataclass
class Variant:
    """A way of scoring films: name, precision, a call returning (films, stage seconds), a note."""

    name: str
    precision: str
    run: Callable[[], tuple[int, dict[str, float]]]
    note: str = ""
    batch: int = DEFAULT_SCORING_BATCH_SIZE
    decode_included: bool = False
    warm_up: bool = True  # False where another variant already set up the same shapes
    one_thread: bool = False  # compared with the ceiling measured on one thread


@dataclass
class VariantFigures:
    """Medians of one variant over the repeats, and its ratio to the ceiling of each repeat."""

    name: str
    precision: str
    batch: int
    films: int
    decode_included: bool
    films_per_second: float
    films_per_second_repeats: list[float]
    fraction_of_ceiling: float  # channels_last conv ceiling of the same repeat
    fraction_of_best_layout_ceiling: float
    fraction_of_whole_graph_ceiling: float
    seconds_per_film: dict[str, float]  # median per stage
    note: str = ""


def nearest_search_target() -> tuple[object, str]:
    """The function the patch memory-bank search runs through (module, name)."""
    from cxr_anomaly.models.features import torch_model

    name = "nearest_distances" if hasattr(torch_model, "nearest_distances") else "squared_distances"
    return torch_model, name


def staged_score(detector: Any, pixels: np.ndarray, **options: Any) -> dict[str, float]:
    """score_films with its time split into preprocessing, backbone, nearest-neighbour search, rest."""
    clock = StageClock()
    with clock.watch(
        {
            "preprocessing": (detector, "model_input"),
            "backbone": (detector.backbone, "forward"),
            "nearest-neighbour search": nearest_search_target(),
        }
    ):
        started = time.perf_counter()
        score_films(detector, pixels, **options)
        total = time.perf_counter() - started
    seconds = dict(clock.seconds)
    seconds["other heads and copies"] = total - sum(seconds.values())
    seconds["total"] = total
    return seconds


def score_from_files(detector: Any, rows: pd.DataFrame, config: Config) -> tuple[int, dict[str, float]]:
    """The package's path from files: load_images (its decoding threads, no cache), then score_films."""
    started = time.perf_counter()
    pixels = load_images(rows, config.data).pixels
    decode = time.perf_counter() - started
    seconds = staged_score(detector, pixels)
    seconds = {"decode": decode, **seconds, "total": decode + seconds["total"]}
    return len(pixels), seconds


def manual_score(
    detector: Any,
    pixels: np.ndarray,
    batch: int,
    inference_mode: bool,
    precision: str,
    channels_last_input: bool = False,
) -> tuple[int, dict[str, float]]:
    """A hand loop over batches (no output handling), under no_grad or inference_mode, in ``precision``
    (bf16 autocast or fp32, as the library scores)."""
    started = time.perf_counter()
    context = torch.inference_mode if inference_mode else torch.no_grad
    for begin in range(0, len(pixels), batch):
        images = detector.model_input(pixels[begin : begin + batch])
        if channels_last_input:
            images = images.contiguous(memory_format=torch.channels_last)
        with context(), inference_autocast(torch.device("cpu"), precision):
            detector(images)
    return len(pixels), {"total": time.perf_counter() - started}


def with_threads(threads: int, run: Callable[[], tuple[int, dict[str, float]]]) -> tuple[int, dict[str, float]]:
    """``run()`` on ``threads`` torch threads, then back."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


def bank_variant(detector: Any, size: int) -> Any:
    """A copy of the detector whose patch memory bank keeps its first ``size`` patches (speed only)."""
    variant = copy.deepcopy(detector)
    variant.patch_bank = detector.patch_bank[:size].clone()
    return variant


def grid_variant(detector: Any, grid: int) -> Any:
    """The detector at another ``features.patch_grid``, the same fitted banks (speed only)."""
    config = with_overrides(detector.config, "features", patch_grid=grid)
    variant = build_detector(config, pretrained=False)
    variant.load_state_dict(detector.state_dict())
    return variant.eval()


def speed_variants(
    detector: Any,
    config: Config,
    pixels: np.ndarray,
    settings: Settings,
    precision: str,
    work_dir: Path,
    library_batch: int,
) -> list[Variant]:
    """The speed-ups to compare on decoded films (decode excluded); ``library_batch`` is
    ``score_films``' own batch here, the detector's ``scoring_batch_size`` on the CPU."""
    batch = settings.score_batch
    naive = copy.deepcopy(detector).to(memory_format=torch.contiguous_format).eval()
    fast = to_channels_last(copy.deepcopy(detector).eval())
    bank = len(detector.patch_bank)
    grid = config.features.patch_grid

    def library(model: Any = detector, **options: Any) -> Callable[[], tuple[int, dict[str, float]]]:
        return lambda: (len(pixels), staged_score(model, pixels, **options))

    def backbone_only() -> tuple[int, dict[str, float]]:
        started = time.perf_counter()
        for begin in range(0, len(pixels), batch):
            images = fast.model_input(pixels[begin : begin + batch])
            with torch.inference_mode(), inference_autocast(torch.device("cpu"), precision):
                fast.backbone(images)
        return len(pixels), {"total": time.perf_counter() - started}

    variants = [
        Variant(
            "naive: contiguous weights, no_grad",
            precision,
            lambda: manual_score(naive, pixels, batch, inference_mode=False, precision=precision),
        ),
        Variant(
            "channels_last weights, no_grad",
            precision,
            lambda: manual_score(fast, pixels, batch, inference_mode=False, precision=precision),
        ),
        Variant(
            "channels_last weights + inference_mode",
            precision,
            lambda: manual_score(fast, pixels, batch, inference_mode=True, precision=precision),
        ),
        Variant(
            "channels_last weights and input + inference_mode",
            precision,
            lambda: manual_score(
                fast, pixels, batch, inference_mode=True, precision=precision, channels_last_input=True
            ),
        ),
        Variant(
            f"score_films (library defaults, batch {library_batch})",
            precision,
            library(),
            "channels_last, inference_mode, precision auto",
            batch=library_batch,
        ),
    ]
    for size in sorted({min(size, batch) for size in (16, 32, 64)} - {library_batch}):
        variants.append(Variant(f"score_films, batch {size}", precision, library(batch_size=size), batch=size))
    if torch.get_num_threads() > 1:
        variants.append(
            Variant(
                "score_films, 1 thread",
                precision,
                lambda: with_threads(1, library()),
                "ratios to the ceiling measured on 1 thread",
                warm_up=False,
                one_thread=True,
            )
        )
    for size in sorted({bank // 4, bank // 16, 1} - {bank}, reverse=True):
        if size >= 1:
            variants.append(
                Variant(
                    f"memory bank {size} patches (default {bank})",
                    precision,
                    library(bank_variant(detector, size)),
                    "speed only: an accuracy setting, not changed"
                    + ("; 1 patch = almost no search" if size == 1 else ""),
                    warm_up=False,
                )
            )
    for other_grid in sorted({grid // 2} - {grid}):
        variants.append(
            Variant(
                f"patch grid {other_grid} (default {grid})",
                precision,
                library(grid_variant(detector, other_grid)),
                "speed only: an accuracy setting, not changed",
                warm_up=False,
            )
        )
    variants.append(
        Variant(
            "backbone only (preprocessing + convolutions, no heads)",
            precision,
            backbone_only,
            "what the ceiling bounds directly",
            warm_up=False,
        )
    )
    if native_bf16("cpu"):
        other = "fp32" if precision == "bf16" else "bf16"
        variants.append(Variant(f"score_films, precision {other}", other, library(precision=other)))
    variants.extend(onnx_variants(detector, config, pixels, work_dir))
    return variants


def onnx_variants(detector: Any, config: Config, pixels: np.ndarray, work_dir: Path) -> list[Variant]:
    """onnxruntime through OnnxScorer (fp32), at batch 16: its graph holds the (batch x 784, bank)
    distance matrix whole, several GB at batch 64."""
    try:
        from cxr_anomaly.export import OnnxScorer, export_onnx
    except ImportError as error:
        logger.warning("onnxruntime variant skipped: %s", error)
        return []
    path = work_dir / "features.onnx"
    try:
        export_onnx(copy.deepcopy(detector), config, path)
        scorer = OnnxScorer(path)
    except Exception as error:  # the export's own errors and onnxruntime's
        logger.warning("onnxruntime variant skipped: %s", error)
        return []
    batch = min(16, len(pixels))

    def run() -> tuple[int, dict[str, float]]:
        started = time.perf_counter()
        scorer.score_films(pixels, batch_size=batch)
        return len(pixels), {"total": time.perf_counter() - started}

    return [
        Variant(
            f"onnxruntime fp32 (OnnxScorer, batch {batch})",
            "fp32",
            run,
            "CPUExecutionProvider, its default threads; compare with score_films at the same batch",
            batch=batch,
        )
    ]


# ---------------------------------------------------------------- bf16 where emulated


@dataclass
class Bf16Probe:
    """One-shot bf16 figures on a tiny batch, for CPUs that emulate bf16."""

    films: int
    bf16_films_per_second: float
    fp32_films_per_second: float
    bf16_ceiling_films_per_second: float
    fp32_ceiling_films_per_second: float
    note: str


def bf16_probe(detector: Any, pixels: np.ndarray) -> Bf16Probe:
    """score_films in bf16 and fp32 once each on ``pixels``, beside both ceilings of that batch."""
    count = len(pixels)
    calls = backbone_conv_calls(detector, pixels)
    bf16_ceiling = count / sum(layer_seconds(calls, "bf16", torch.channels_last))
    fp32_ceiling = count / sum(layer_seconds(calls, "fp32", torch.channels_last))
    rates = {}
    for precision in ("fp32", "bf16"):
        started = time.perf_counter()  # no warm-up: at emulated speed one call dwarfs oneDNN's set-up
        score_films(detector, pixels, batch_size=count, precision=precision)
        rates[precision] = count / (time.perf_counter() - started)
    return Bf16Probe(
        count,
        rates["bf16"],
        rates["fp32"],
        bf16_ceiling,
        fp32_ceiling,
        f"this CPU has no native bf16 (no AVX512-BF16/AMX): bf16 is emulated, timed once on "
        f"{count} film(s); precision 'auto' scores in fp32 here",
    )


# ---------------------------------------------------------------- the run


@dataclass
class FeaturesBenchmarkResult:
    """Everything :func:`run_features_benchmark` measured."""

    smoke: bool
    commit: str
    uncommitted_files: list[str]
    machine_before: dict[str, Any]
    machine_after: dict[str, Any]
    data: dict[str, str]
    settings: dict[str, Any]
    config: dict[str, Any]
    precision_auto: str
    backbone_gflop_per_film: float
    scoring_gflop_per_film: float
    fit: FitFigures
    ceiling_films_per_second: float  # channels_last, median over repeats
    ceiling_films_per_second_repeats: list[float]
    one_thread_ceiling_films_per_second: float | None
    best_layout_ceiling_films_per_second: float
    gemm_gflops: float
    whole_graph_ceiling_films_per_second: float
    ceiling_seconds_by_kind: dict[str, float]
    ceiling_gflops_by_kind: dict[str, float]  # each kind of convolution's rate, channels_last
    conv_layers: int
    scoring: list[VariantFigures]
    bf16: Bf16Probe | None
    profile: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def run_features_benchmark(
    *,
    smoke: bool = False,
    repeats: int | None = None,
    fit_films: int | None = None,
    data_root: Path = DEFAULT_DATA,
    profile: bool = True,
) -> FeaturesBenchmarkResult:
    """Fit, then score from files and from decoded films against the ceiling; see the module docstring.

    Raises:
        FileNotFoundError: ``data_root`` lacks ``rsna_normal224`` or ``nih_fullres``.
    """
    started = time.perf_counter()
    settings = Settings.for_run(smoke, repeats, fit_films)
    for folder in ("rsna_normal224", "nih_fullres"):
        if not (data_root / folder / "manifest.csv").is_file():
            raise FileNotFoundError(
                f"{data_root / folder / 'manifest.csv'} is missing: the features benchmark "
                "reads real films (set CXR_ANOMALY_DATA)"
            )
    commit, dirty = git_commit(), uncommitted_files()
    machine_before = machine_facts()
    config = benchmark_config(settings)
    precision = resolve_precision("auto", "cpu")
    notes: list[str] = []
    logger.info(
        "features benchmark: %s, %d threads, native bf16 %s, load %s",
        machine_before["cpu_model"],
        torch.get_num_threads(),
        machine_before["native_bf16"],
        machine_before["load_average"],
    )

    logger.info("fitting on %d rsna_normal224 films", settings.fit_films)
    detector, fit = measure_fit(config, rsna_rows(data_root, settings.fit_films))
    logger.info("fit: %.1f s %s", fit.seconds_total, {k: round(v, 1) for k, v in fit.seconds.items()})
    backbone_flops, scoring_flops = flops_per_film(detector, config.data.image_size)

    with tempfile.TemporaryDirectory(prefix="bench_features_") as work:
        work_dir = Path(work)
        sources = fullres_paths(data_root)
        png_rows = replicate(sources, settings.file_films, work_dir / "png", ".png")
        dicom_rows = dicom_copies(sources, settings.file_films, work_dir / "dicom")
        pixels = load_images(png_rows.iloc[: settings.variant_films], config.data).pixels  # (N, 224, 224)
        calls = backbone_conv_calls(detector, pixels[: settings.score_batch])
        batch = min(settings.score_batch, len(pixels))
        backbone_flops_batch = sum(call.flops for call in calls)
        library_batch = detector.scoring_batch_size(torch.device("cpu"))  # what score_films uses here
        file_variants = [
            Variant(
                "from 1024 px PNG: load_images + score_films",
                precision,
                lambda: score_from_files(detector, png_rows, config),
                "decode included",
                decode_included=True,
                batch=library_batch,
            ),
            Variant(
                "from DICOM: load_images + score_films",
                precision,
                lambda: score_from_files(detector, dicom_rows, config),
                "decode included",
                decode_included=True,
                batch=library_batch,
            ),
        ]
        variants = file_variants + speed_variants(
            detector, config, pixels, settings, precision, work_dir, library_batch
        )
        for variant in variants:  # warm-up: oneDNN primitives (cached by shape), onnxruntime's arenas
            if variant.warm_up and not variant.decode_included:
                variant.run()
        ceilings: list[CeilingRepeat] = []
        rates: dict[str, list[float]] = {variant.name: [] for variant in variants}
        ratios: dict[str, list[tuple[float, float, float]]] = {variant.name: [] for variant in variants}
        stages: dict[str, list[dict[str, float]]] = {variant.name: [] for variant in variants}
        heads_flops = scoring_flops - backbone_flops
        for repeat in range(settings.repeats):
            ceiling = measure_ceiling(calls, batch, precision, backbone_flops_batch, 256 if smoke else GEMM_SIZE)
            ceilings.append(ceiling)
            whole_graph = 1.0 / (
                1.0 / ceiling.channels_last_films_per_second + heads_flops / (ceiling.gemm_gflops * 1e9)
            )
            logger.info(
                "repeat %d: ceiling %.1f films/s (best layout %.1f), GEMM %.1f GFLOP/s, whole graph %.1f",
                repeat + 1,
                ceiling.channels_last_films_per_second,
                ceiling.best_layout_films_per_second,
                ceiling.gemm_gflops,
                whole_graph,
            )
            for variant in variants:
                films, seconds = variant.run()
                rate = films / seconds["total"]
                rates[variant.name].append(rate)
                # the 1-thread variant against the 1-thread ceiling (whole graph: scaled alike)
                scale = (
                    ceiling.one_thread_films_per_second / ceiling.channels_last_films_per_second
                    if variant.one_thread and ceiling.one_thread_films_per_second
                    else 1.0
                )
                ratios[variant.name].append(
                    (
                        rate / (scale * ceiling.channels_last_films_per_second),
                        rate / (scale * ceiling.best_layout_films_per_second),
                        rate / (scale * whole_graph),
                    )
                )
                stages[variant.name].append({stage: value / films for stage, value in seconds.items()})
                logger.info(
                    "  %s: %.2f films/s (%.0f%% of the ceiling)",
                    variant.name,
                    rate,
                    100 * rate / ceiling.channels_last_films_per_second,
                )
            logger.info("repeat %d/%d done (load %s)", repeat + 1, settings.repeats, os.getloadavg())
        figures = [
            summarise(
                variant,
                len(pixels) if not variant.decode_included else settings.file_films,
                rates[variant.name],
                ratios[variant.name],
                stages[variant.name],
            )
            for variant in variants
        ]
        bf16 = None
        if not native_bf16("cpu") and not smoke:
            bf16 = bf16_probe(detector, pixels[: settings.bf16_films])
            notes.append(bf16.note)
        elif not native_bf16("cpu"):
            notes.append("bf16 is emulated on this CPU: left out of the smoke run (a minute per film)")
        profile_table = profile_scoring(detector, pixels[: settings.profile_films]) if profile else ""

    ceiling_cl = [c.channels_last_films_per_second for c in ceilings]
    gemm = statistics.median(c.gemm_gflops for c in ceilings)
    ceiling_median = statistics.median(ceiling_cl)
    whole_graph_median = 1.0 / (1.0 / ceiling_median + (scoring_flops - backbone_flops) / (gemm * 1e9))
    by_kind = {
        kind: statistics.median(c.seconds_by_kind[kind] for c in ceilings) for kind in ceilings[0].seconds_by_kind
    }
    machine_after = machine_facts()
    load = max(machine_before["load_average"][0], machine_after["load_average"][0])
    if load > 0.5 * (os.cpu_count() or 1) + 0.5:
        notes.append(
            f"machine loaded by other processes (1-min load {machine_before['load_average'][0]:.1f} -> "
            f"{machine_after['load_average'][0]:.1f} on {os.cpu_count()} cores): absolute rates are low "
            "and noisy; the ratios to the ceiling measured in the same repeat are the figure"
        )
    library = next(item for item in figures if item.name.startswith("from 1024 px PNG"))
    if library.fraction_of_ceiling < TARGET_FRACTION:
        notes.append(
            f"target not met: scoring from PNG runs at {100 * library.fraction_of_ceiling:.0f}% of the "
            f"backbone's convolution ceiling (target {100 * TARGET_FRACTION:.0f}%); the whole graph costs "
            f"{scoring_flops / backbone_flops:.1f}x the backbone's FLOPs"
        )
    return FeaturesBenchmarkResult(
        smoke=smoke,
        commit=commit,
        uncommitted_files=dirty,
        machine_before=machine_before,
        machine_after=machine_after,
        data={
            "fit": str(data_root / "rsna_normal224"),
            "scoring": str(data_root / "nih_fullres")
            + f" ({len(sources)} films replicated to {settings.file_films}; DICOM copies written with pydicom)",
        },
        settings=asdict(settings),
        config={
            **{key: getattr(config.data, key) for key in ("image_size", "intensity", "border_crop", "detail_size")},
            **{
                key: getattr(config.features, key)
                for key in ("backbone", "score", "patch_grid", "memory_bank_size", "pooled_bank_size", "batch_size")
            },
        },
        precision_auto=precision,
        backbone_gflop_per_film=backbone_flops / 1e9,
        scoring_gflop_per_film=scoring_flops / 1e9,
        fit=fit,
        ceiling_films_per_second=ceiling_median,
        ceiling_films_per_second_repeats=ceiling_cl,
        one_thread_ceiling_films_per_second=(
            statistics.median(c.one_thread_films_per_second for c in ceilings)
            if ceilings[0].one_thread_films_per_second
            else None
        ),
        best_layout_ceiling_films_per_second=statistics.median(c.best_layout_films_per_second for c in ceilings),
        gemm_gflops=gemm,
        whole_graph_ceiling_films_per_second=whole_graph_median,
        ceiling_seconds_by_kind=by_kind,
        conv_layers=len(calls),
        ceiling_gflops_by_kind={
            kind: sum(call.flops for call in calls if layer_kind(call) == kind) / seconds / 1e9
            for kind, seconds in by_kind.items()
        },
        scoring=figures,
        bf16=bf16,
        profile=profile_table,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


def summarise(
    variant: Variant,
    films: int,
    rates: list[float],
    ratios: list[tuple[float, float, float]],
    stages: list[dict[str, float]],
) -> VariantFigures:
    """Medians of one variant's repeats."""
    return VariantFigures(
        variant.name,
        variant.precision,
        variant.batch,
        films,
        variant.decode_included,
        statistics.median(rates),
        rates,
        statistics.median(r[0] for r in ratios),
        statistics.median(r[1] for r in ratios),
        statistics.median(r[2] for r in ratios),
        {stage: statistics.median(s[stage] for s in stages) for stage in stages[0]},
        variant.note,
    )


def profile_scoring(detector: Any, pixels: np.ndarray, rows: int = 15) -> str:
    """torch.profiler's table of one score_films call (operators by self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    score_films(detector, pixels)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        score_films(detector, pixels, batch_size=len(pixels))
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# ---------------------------------------------------------------- reporting


def summary_lines(result: FeaturesBenchmarkResult) -> list[str]:
    """Human-readable lines of the headline figures."""
    machine = result.machine_before
    fit = result.fit
    lines = [
        f"features detector, commit {result.commit}{' + uncommitted changes' if result.uncommitted_files else ''}; "
        f"CPU {machine['cpu_model']}, {machine['cores']} cores, {machine['torch_threads']} threads, native bf16: "
        f"{machine['native_bf16']}; load {machine['load_average'][0]:.2f} -> "
        f"{result.machine_after['load_average'][0]:.2f}",
        f"FLOPs per film: backbone {result.backbone_gflop_per_film:.3f} GFLOP, whole scoring graph "
        f"{result.scoring_gflop_per_film:.3f} GFLOP ({result.scoring_gflop_per_film / result.backbone_gflop_per_film:.1f}x)",
        f"fit on {fit.films} films: {fit.seconds_total:.1f} s = "
        + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in fit.seconds.items())
        + f"; backbone pass {fit.backbone_films_per_second:.1f} films/s",
        f"ceiling (backbone convolutions alone, channels_last, batch {result.settings['score_batch']}): "
        f"{result.ceiling_films_per_second:.1f} films/s (best layout {result.best_layout_ceiling_films_per_second:.1f}"
        + (
            f", one thread {result.one_thread_ceiling_films_per_second:.1f}"
            if result.one_thread_ceiling_films_per_second
            else ""
        )
        + ");"
        f" GEMM {result.gemm_gflops:.1f} GFLOP/s; whole-graph ceiling {result.whole_graph_ceiling_films_per_second:.2f}"
        " films/s",
        "ceiling by kind of convolution (seconds per batch, GFLOP/s): "
        + ", ".join(
            f"{kind} {seconds:.2f} s, {result.ceiling_gflops_by_kind[kind]:.1f}"
            for kind, seconds in result.ceiling_seconds_by_kind.items()
        ),
        "scoring: films/s | fraction of the ceiling | of the whole-graph ceiling | seconds per film by stage",
    ]
    for item in result.scoring:
        stages = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in item.seconds_per_film.items() if k != "total")
        lines.append(
            f"  {item.name:<58} {item.films_per_second:7.2f} | {item.fraction_of_ceiling:5.2f} | "
            f"{item.fraction_of_whole_graph_ceiling:5.2f}"
            + (f" | {stages}" if stages else "")
            + (f"  ({item.note})" if item.note else "")
        )
    if result.bf16 is not None:
        probe = result.bf16
        lines.append(
            f"bf16 (emulated, {probe.films} film(s), once): {probe.bf16_films_per_second:.3f} films/s "
            f"against fp32 {probe.fp32_films_per_second:.3f}; bf16 ceiling "
            f"{probe.bf16_ceiling_films_per_second:.3f}, fp32 ceiling {probe.fp32_ceiling_films_per_second:.3f}"
        )
    lines.extend(f"note: {note}" for note in result.notes)
    return lines


def markdown_table(result: FeaturesBenchmarkResult) -> str:
    """The scoring figures as a Markdown table, for docs/results.md."""
    rows = [
        "| variant | batch | films/s | of the conv ceiling | of the whole-graph ceiling | decode | preprocessing | "
        "backbone | NN search | other | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in result.scoring:
        stage = item.seconds_per_film

        def ms(name: str) -> str:
            return f"{1000 * stage[name]:.0f} ms" if name in stage else ""

        rows.append(
            f"| {item.name} | {item.batch} | {item.films_per_second:.2f} | {100 * item.fraction_of_ceiling:.0f}% | "
            f"{100 * item.fraction_of_whole_graph_ceiling:.0f}% | {ms('decode')} | {ms('preprocessing')} | "
            f"{ms('backbone')} | {ms('nearest-neighbour search')} | {ms('other heads and copies')} | "
            f"{item.note} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; writes the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI (checks that it works)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the scoring figures (default 3)")
    parser.add_argument("--fit-films", type=int, default=None, help="normals to fit on (default 5000)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--output", type=Path, default=Path("runs/bench_features.json"))
    parser.add_argument("--fit-only", action="store_true", help="time the default fit and its stages, nothing else")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if arguments.fit_only:
        before = os.getloadavg()
        fit_films = arguments.fit_films or Settings.for_run(arguments.smoke).fit_films
        _, fit = measure_fit(benchmark_config(Settings.for_run(arguments.smoke)), rsna_rows(arguments.data, fit_films))
        record = {
            "commit": git_commit(),
            "load_average_before": before,
            "load_average_after": os.getloadavg(),
            **machine_facts(),
            **asdict(fit),
        }
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
        return 0
    result = run_features_benchmark(
        smoke=arguments.smoke, repeats=arguments.repeats, fit_films=arguments.fit_films, data_root=arguments.data
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(asdict(result), indent=2) + "\n")
    for line in summary_lines(result):
        print(line)
    print(markdown_table(result))
    if result.profile:
        print(f"\nprofile of one scoring batch:\n{result.profile}")
    logger.info("written to %s", arguments.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
