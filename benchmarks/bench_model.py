"""Model speed against the machine's convolution ceiling, measured in the same run.

Run: ``.venv/bin/python -m benchmarks.bench_model [--smoke] [--output FILE]`` (``make bench``
runs it through :mod:`benchmarks.run`).

Figures (each a median over ``repeats``; the ceiling is re-measured inside every repeat, just
before the model, so that load from other processes hits both alike):

- **ceiling**: the model's own convolution layers (same shapes, batch and precision), each timed
  alone in its fastest layout. ``ceiling GFLOP/s = Σ layer FLOPs / Σ layer times``; divided by the
  FLOPs per image (counted with :class:`torch.utils.flop_counter.FlopCounterMode`) it gives the
  images/s a model would reach if it spent all its time in convolutions running at that speed.
  A 2048² GEMM (MKL) is timed beside it in every repeat as the machine's dense-math rate, the
  second ceiling (``gemm_*`` fields): convolutions lowered well can approach it, and a runtime
  with better convolution kernels than torch's (onnxruntime) can pass the first ceiling.
- **bf16**: where the CPU has no native bf16, bf16 is emulated and many times slower than fp32;
  it is then timed once, on small batches, beside a bf16 ceiling of the same batches.
- **scoring**: images/s of the U+D+E scoring graph at batch 256, 64x64, for each variant (eager
  fp32, channels_last, inference_mode, torch.compile, bf16 autocast, onnxruntime).
- **training**: images/s of one full training step (generator and discriminator updates, all
  three networks) at batch 64, for each variant.
- **latency**: p50/p99 of one film scored alone through :func:`cxr_anomaly.scoring.score_films`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cxr_anomaly.config import Config
from cxr_anomaly.inference import inference_autocast, native_bf16, to_channels_last
from cxr_anomaly.models.tang2019 import DiscriminatorLoss, GeneratorLoss, OneClassDetector, Tang2019Detector
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.training import build_detector
from cxr_anomaly.scoring import ScoreResult, score_films

logger = logging.getLogger(__name__)


def score_pixels(detector: OneClassDetector, pixels: np.ndarray, config: Config, **options: object) -> ScoreResult:
    """The library's scoring path (uint8 films in) for the tang2019 networks, in fp32."""
    return score_films(Tang2019Detector(config, detector), pixels, precision="fp32", **options)


SCORE_BATCH = 256
TRAIN_BATCH = 64
GEMM_SIZE = 2048


@dataclass
class Timing:
    """Seconds of each repeat and their median."""

    seconds: list[float]

    @property
    def median(self) -> float:
        """Median seconds."""
        return statistics.median(self.seconds)


def time_call(function: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Wall seconds of ``function()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return Timing(seconds)


def scoring_flops_per_image(detector: OneClassDetector, image_size: int = 64) -> float:
    """FLOPs (2 x multiply-adds) of one image through the scoring graph, counted by torch."""
    images = torch.zeros(2, 1, image_size, image_size)  # (N, 1, H, W)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        detector.eval().score_components(images)
    return counter.get_total_flops() / 2


def training_step(
    detector: OneClassDetector,
    config: Config,
    generator_optimizer: torch.optim.Optimizer,
    discriminator_optimizer: torch.optim.Optimizer | None,
    images: torch.Tensor,
    precision: str,
) -> None:
    """One generator and one discriminator update, as :func:`cxr_anomaly.models.tang2019.training.train_detector` does."""
    generator_loss = GeneratorLoss(config.loss)
    autocast = inference_autocast(images.device, precision)
    with autocast:
        output = detector(images)
        losses = generator_loss(images, output, detector.discriminator)
    generator_optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    generator_optimizer.step()
    if detector.discriminator is not None and discriminator_optimizer is not None:
        with inference_autocast(images.device, precision):
            loss_d = DiscriminatorLoss()(detector.discriminator, images, output.reconstruction.detach())
        discriminator_optimizer.zero_grad(set_to_none=True)
        loss_d.backward()
        discriminator_optimizer.step()


@dataclass
class TrainingRig:
    """A detector with its two optimizers, ready for :func:`training_step`."""

    detector: OneClassDetector
    generator_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer | None


def make_training_rig(config: Config, channels_last: bool) -> TrainingRig:
    """A fresh detector in train mode and Adam optimizers with the paper's settings."""
    detector = build_detector(config).train()
    if channels_last:
        to_channels_last(detector)
    betas = (config.train.beta1, config.train.beta2)
    generator_optimizer = torch.optim.Adam(detector.generator_parameters(), lr=config.train.learning_rate, betas=betas)
    discriminator_optimizer = None
    if detector.discriminator is not None:
        discriminator_optimizer = torch.optim.Adam(
            detector.discriminator.parameters(), lr=config.train.learning_rate, betas=betas
        )
    return TrainingRig(detector, generator_optimizer, discriminator_optimizer)


def training_flops_per_image(config: Config) -> float:
    """FLOPs of one image through one training step (forward and backward of both updates)."""
    rig = make_training_rig(config, channels_last=False)
    images = torch.zeros(4, 1, config.model.image_size, config.model.image_size)  # (N, 1, H, W)
    with FlopCounterMode(display=False) as counter:
        training_step(rig.detector, config, rig.generator_optimizer, rig.discriminator_optimizer, images, "fp32")
    return counter.get_total_flops() / 4


@dataclass
class ConvLayerCall:
    """One convolution of the scoring graph with the input it received."""

    layer: nn.Module
    input_shape: tuple[int, ...]
    flops: float  # for the whole batch


def scoring_conv_calls(detector: OneClassDetector, batch_size: int) -> list[ConvLayerCall]:
    """Every convolution the scoring graph runs at ``batch_size``, with its FLOPs."""
    seen: list[tuple[nn.Module, tuple[int, ...]]] = []

    def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append((layer, tuple(inputs[0].shape)))

    hooks = [
        module.register_forward_hook(record)
        for module in detector.modules()
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    try:
        with torch.no_grad():
            detector.eval().score_components(torch.zeros(batch_size, 1, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
    calls = []
    for layer, shape in seen:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            layer(torch.zeros(shape))
        calls.append(ConvLayerCall(layer, shape, counter.get_total_flops()))
    return calls


def conv_ceiling_gflops(calls: list[ConvLayerCall], precision: str, repeats: int) -> float:
    """Σ FLOPs / Σ best-layout time of the given convolutions, each run alone, in GFLOP/s."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    total_seconds = 0.0
    total_flops = 0.0
    for call in calls:
        best = float("inf")
        for layout in (torch.contiguous_format, torch.channels_last):
            layer = copy.deepcopy(call.layer).to(dtype=dtype, memory_format=layout)
            inputs = torch.randn(call.input_shape).to(dtype=dtype, memory_format=layout)
            with torch.inference_mode():
                best = min(best, time_call(lambda: layer(inputs), repeats).median)
        total_seconds += best
        total_flops += call.flops
    return total_flops / total_seconds / 1e9


def gemm_gflops(precision: str, repeats: int, size: int = GEMM_SIZE) -> float:
    """Rate of a square matrix multiply of side ``size`` in the given precision, GFLOP/s."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(dtype)
    right = torch.randn(size, size, generator=generator).to(dtype)
    timing = time_call(lambda: left @ right, repeats)
    return 2.0 * size**3 / timing.median / 1e9


@dataclass
class ScoringVariant:
    """A way to score a batch: a name, the precision its ceiling is measured in, and the call."""

    name: str
    precision: str
    run: Callable[[], object]
    note: str = ""


def scoring_variants(
    detector: OneClassDetector,
    config: Config,
    images: torch.Tensor,
    include_compile: bool,
    include_bf16: bool,
    work_dir: Path,
) -> list[ScoringVariant]:
    """Build the scoring variants to compare on one batch ``images`` (N, 1, 64, 64)."""
    eager = copy.deepcopy(detector).eval()
    channels_last = to_channels_last(copy.deepcopy(detector).eval())
    pixels = images_to_pixels(images)  # (N, H, W) uint8

    def eager_no_grad() -> object:
        with torch.no_grad():
            return eager.score_components(images)

    def channels_last_no_grad() -> object:
        with torch.no_grad():
            return channels_last.score_components(images)

    def channels_last_inference_mode() -> object:
        with torch.inference_mode():
            return channels_last.score_components(images)

    def one_thread() -> object:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return channels_last.score_components(images)
        finally:
            torch.set_num_threads(threads)

    variants = [
        ScoringVariant("fp32 eager (naive)", "fp32", eager_no_grad),
        ScoringVariant("fp32 channels_last", "fp32", channels_last_no_grad),
        ScoringVariant("fp32 channels_last + inference_mode", "fp32", channels_last_inference_mode),
        ScoringVariant(
            "fp32 channels_last + inference_mode, 1 thread",
            "fp32",
            one_thread,
            "against the ceiling measured with all threads",
        ),
        ScoringVariant(
            "score_pixels default (uint8 in, fp32)",
            "fp32",
            lambda: score_pixels(detector, pixels, config, batch_size=len(pixels)),
            "the library path: includes uint8 -> tensor conversion",
        ),
    ]
    if include_bf16:

        def bf16_channels_last() -> object:
            with torch.inference_mode(), inference_autocast("cpu", "bf16"):
                return channels_last.score_components(images)

        variants.append(ScoringVariant("bf16 autocast + channels_last", "bf16", bf16_channels_last, "native bf16"))
    if include_compile:
        compiled = torch.compile(channels_last)

        def compiled_inference_mode() -> object:
            with torch.no_grad():
                return compiled.score_components(images)

        variants.append(
            ScoringVariant(
                "fp32 channels_last + torch.compile",
                "fp32",
                compiled_inference_mode,
                "inductor; compile time excluded (warm-up call)",
            )
        )
    try:
        from cxr_anomaly.export import OnnxScorer, export_onnx

        onnx_path = work_dir / "bench.onnx"
        export_onnx(Tang2019Detector(config, copy.deepcopy(detector)), config, onnx_path)
        scorer = OnnxScorer(onnx_path)
        array = images.numpy()
        variants.append(
            ScoringVariant(
                "onnxruntime fp32", "fp32", lambda: scorer.score_tensor(array), "CPUExecutionProvider, default threads"
            )
        )
    except ImportError as error:  # onnx extras absent
        logger.warning("onnxruntime variant skipped: %s", error)
    return variants


@dataclass
class VariantResult:
    """Median throughput of one variant and its ratio to the ceiling measured beside it."""

    name: str
    precision: str
    images_per_second: float
    images_per_second_repeats: list[float]
    ceiling_images_per_second: float
    fraction_of_ceiling: float
    gemm_ceiling_images_per_second: float
    fraction_of_gemm_ceiling: float
    note: str = ""


@dataclass
class LatencyResult:
    """Single-film latency of the score path, milliseconds."""

    calls: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


@dataclass
class ProfileTable:
    """The operators that took the most time in one profiled call, as torch.profiler prints them."""

    what: str
    table: str


def profile_tables(config: Config, score_batch: int, train_batch: int, rows: int = 12) -> list[ProfileTable]:
    """Profile one fp32 channels_last scoring call and one training step (self CPU time order)."""
    from torch.profiler import ProfilerActivity, profile

    detector = to_channels_last(build_detector(config).eval())
    images = torch.rand(score_batch, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    tables = []
    with torch.inference_mode():
        detector.score_components(images)  # warm-up: oneDNN primitive creation
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            detector.score_components(images)
    tables.append(
        ProfileTable(
            f"scoring, fp32 channels_last, batch {score_batch}",
            profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows),
        )
    )
    rig = make_training_rig(config, channels_last=True)
    train_images = images[:train_batch].clone()

    def step() -> None:
        training_step(rig.detector, config, rig.generator_optimizer, rig.discriminator_optimizer, train_images, "fp32")

    step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    tables.append(
        ProfileTable(
            f"training step, fp32 channels_last, batch {train_batch}",
            profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows),
        )
    )
    return tables


@dataclass
class ModelBenchmarkResult:
    """Everything :func:`run_model_benchmark` measured."""

    smoke: bool
    repeats: int
    threads: int
    cpu_model: str
    native_bf16: bool
    scoring_batch: int
    training_batch: int
    scoring_gflop_per_image: float
    training_gflop_per_image: float
    conv_ceiling_gflops: dict[str, float]
    conv_ceiling_gflops_repeats: dict[str, list[float]]
    gemm_gflops: dict[str, float]
    gemm_gflops_repeats: dict[str, list[float]]
    scoring: list[VariantResult]
    training: list[VariantResult]
    latency: LatencyResult
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float]
    notes: list[str] = field(default_factory=list)
    profiles: list[ProfileTable] = field(default_factory=list)


@dataclass
class Bf16Probe:
    """One-shot bf16 figures on small batches, for CPUs that emulate bf16."""

    scoring: VariantResult
    training: VariantResult
    scoring_batch: int
    training_batch: int
    ceiling_gflops: float
    gemm_gflops: float


def bf16_probe(
    detector: OneClassDetector, config: Config, images: torch.Tensor, train_images: torch.Tensor
) -> Bf16Probe:
    """Time bf16 autocast scoring and training once each, beside a bf16 ceiling on the same batch."""
    channels_last = to_channels_last(copy.deepcopy(detector).eval())
    scoring_flops = scoring_flops_per_image(detector)
    training_flops = training_flops_per_image(config)
    ceiling = conv_ceiling_gflops(scoring_conv_calls(detector, len(images)), "bf16", 1)
    gemm = gemm_gflops("bf16", 1, 512)

    def score() -> object:
        with torch.inference_mode(), inference_autocast("cpu", "bf16"):
            return channels_last.score_components(images)

    # no warm-up calls: at emulated speed one call dwarfs oneDNN's set-up time
    score_rate = len(images) / time_call(score, 1, warmup=0).median
    rig = make_training_rig(config, channels_last=True)
    train_rate = (
        len(train_images)
        / time_call(
            lambda: training_step(
                rig.detector, config, rig.generator_optimizer, rig.discriminator_optimizer, train_images, "bf16"
            ),
            1,
            warmup=0,
        ).median
    )
    note = "emulated bf16, one timing on a batch of %d"
    score_ceiling = ceiling * 1e9 / scoring_flops
    train_ceiling = ceiling * 1e9 / training_flops
    score_gemm = gemm * 1e9 / scoring_flops
    train_gemm = gemm * 1e9 / training_flops
    return Bf16Probe(
        VariantResult(
            "bf16 autocast + channels_last",
            "bf16",
            score_rate,
            [score_rate],
            score_ceiling,
            score_rate / score_ceiling,
            score_gemm,
            score_rate / score_gemm,
            note % len(images),
        ),
        VariantResult(
            "bf16 autocast + channels_last",
            "bf16",
            train_rate,
            [train_rate],
            train_ceiling,
            train_rate / train_ceiling,
            train_gemm,
            train_rate / train_gemm,
            note % len(train_images),
        ),
        len(images),
        len(train_images),
        ceiling,
        gemm,
    )


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or 'unknown'."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def measure_latency(detector: OneClassDetector, config: Config, pixels: np.ndarray, calls: int) -> LatencyResult:
    """Score ``calls`` films one at a time through ``score_pixels``; p50/p99 in milliseconds."""
    score_pixels(detector, pixels[:1], config)  # warm-up
    seconds = []
    for index in range(calls):
        film = pixels[index % len(pixels)][None]  # (1, H, W)
        started = time.perf_counter()
        score_pixels(detector, film, config)
        seconds.append(time.perf_counter() - started)
    milliseconds = np.asarray(seconds) * 1000.0
    return LatencyResult(
        calls,
        float(np.percentile(milliseconds, 50)),
        float(np.percentile(milliseconds, 99)),
        float(milliseconds.mean()),
    )


def run_model_benchmark(
    *,
    smoke: bool = False,
    repeats: int | None = None,
    include_compile: bool | None = None,
    include_bf16: bool | None = None,
    latency_calls: int | None = None,
    profile: bool | None = None,
    seed: int = 0,
) -> ModelBenchmarkResult:
    """Measure ceilings, scoring, training and latency; see the module docstring.

    ``smoke`` shrinks everything (batches of 8, one repeat, no torch.compile) so that CI checks
    that the benchmark runs, not how fast.
    """
    config = tang2019_config()
    repeats = (1 if smoke else 5) if repeats is None else repeats
    include_compile = (not smoke) if include_compile is None else include_compile
    include_bf16 = (not smoke) if include_bf16 is None else include_bf16
    profile = (not smoke) if profile is None else profile
    score_batch = 8 if smoke else SCORE_BATCH
    train_batch = 4 if smoke else TRAIN_BATCH
    latency_calls = (5 if smoke else 200) if latency_calls is None else latency_calls
    inner_repeats = 1  # one call per variant per repeat; the repeats give the median
    generator = torch.Generator().manual_seed(seed)
    detector = build_detector(config).eval()
    images = torch.rand(score_batch, 1, 64, 64, generator=generator) * 2.0 - 1.0  # (N, 1, 64, 64) in [-1, 1]
    train_images = images[:train_batch].clone()
    load_before = os.getloadavg()
    notes: list[str] = []
    # Emulated bf16 is so slow that it is timed once, on small batches, by bf16_probe below.
    bf16_in_loop = include_bf16 and native_bf16("cpu")
    precisions = ["fp32", "bf16"] if bf16_in_loop else ["fp32"]
    scoring_flops = scoring_flops_per_image(detector)
    training_flops = training_flops_per_image(config)
    conv_calls = scoring_conv_calls(detector, score_batch)

    with tempfile.TemporaryDirectory(prefix="bench_model_") as work_dir:
        variants = scoring_variants(detector, config, images, include_compile, bf16_in_loop, Path(work_dir))
        training_variants: list[tuple[str, str, bool]] = [
            ("fp32 eager (naive)", "fp32", False),
            ("fp32 channels_last", "fp32", True),
        ]
        if bf16_in_loop:
            training_variants.append(("bf16 autocast + channels_last", "bf16", True))
        rigs = {name: make_training_rig(config, channels_last) for name, _, channels_last in training_variants}
        for variant in variants:  # warm-up (compiles, allocates) outside the timed repeats
            variant.run()
        for name, precision, _ in training_variants:
            rig = rigs[name]
            training_step(
                rig.detector, config, rig.generator_optimizer, rig.discriminator_optimizer, train_images, precision
            )

        ceiling_repeats: dict[str, list[float]] = {precision: [] for precision in precisions}
        gemm_repeats: dict[str, list[float]] = {precision: [] for precision in precisions}
        gemm_size = 256 if smoke else GEMM_SIZE
        scoring_repeats: dict[str, list[float]] = {variant.name: [] for variant in variants}
        scoring_ratio: dict[str, list[float]] = {variant.name: [] for variant in variants}
        training_repeats: dict[str, list[float]] = {name: [] for name, _, _ in training_variants}
        training_ratio: dict[str, list[float]] = {name: [] for name, _, _ in training_variants}
        for repeat in range(repeats):
            # the ceiling of this repeat, then every variant right after it
            # one timed call per layer and layout: the ceiling takes as long as several model runs
            ceiling = {precision: conv_ceiling_gflops(conv_calls, precision, 1) for precision in precisions}
            for precision, value in ceiling.items():
                ceiling_repeats[precision].append(value)
                gemm_repeats[precision].append(gemm_gflops(precision, inner_repeats, gemm_size))
            for variant in variants:
                rate = score_batch / time_call(variant.run, inner_repeats, warmup=0).median
                scoring_repeats[variant.name].append(rate)
                scoring_ratio[variant.name].append(rate / (ceiling[variant.precision] * 1e9 / scoring_flops))
                logger.info(
                    "  scoring %s: %.1f images/s (ceiling %.1f)",
                    variant.name,
                    rate,
                    ceiling[variant.precision] * 1e9 / scoring_flops,
                )
            for name, precision, _ in training_variants:
                rig = rigs[name]
                rate = (
                    train_batch
                    / time_call(
                        lambda: training_step(
                            rig.detector,
                            config,
                            rig.generator_optimizer,
                            rig.discriminator_optimizer,
                            train_images,
                            precision,
                        ),
                        inner_repeats,
                        warmup=0,
                    ).median
                )
                training_repeats[name].append(rate)
                training_ratio[name].append(rate / (ceiling[precision] * 1e9 / training_flops))
                logger.info(
                    "  training %s: %.1f images/s (ceiling %.1f)", name, rate, ceiling[precision] * 1e9 / training_flops
                )
            logger.info("repeat %d/%d done (load %s)", repeat + 1, repeats, os.getloadavg())

    ceiling_median = {precision: statistics.median(values) for precision, values in ceiling_repeats.items()}
    gemm_median = {precision: statistics.median(values) for precision, values in gemm_repeats.items()}

    def summarise(
        name: str, precision: str, rates: list[float], ratios: list[float], flops: float, note: str
    ) -> VariantResult:
        rate = statistics.median(rates)
        gemm_ceiling = gemm_median[precision] * 1e9 / flops
        return VariantResult(
            name,
            precision,
            rate,
            rates,
            ceiling_median[precision] * 1e9 / flops,
            statistics.median(ratios),
            gemm_ceiling,
            rate / gemm_ceiling,
            note,
        )

    scoring = [
        summarise(
            variant.name,
            variant.precision,
            scoring_repeats[variant.name],
            scoring_ratio[variant.name],
            scoring_flops,
            variant.note,
        )
        for variant in variants
    ]
    training = [
        summarise(name, precision, training_repeats[name], training_ratio[name], training_flops, "")
        for name, precision, _ in training_variants
    ]
    if include_bf16 and not bf16_in_loop:
        probe = bf16_probe(detector, config, images[: 4 if smoke else 16], train_images[: 2 if smoke else 8])
        scoring.append(probe.scoring)
        training.append(probe.training)
        ceiling_median["bf16"] = probe.ceiling_gflops
        gemm_median["bf16"] = probe.gemm_gflops
        notes.append(
            "this CPU has no native bf16 (oneDNN reports no AVX512-BF16/AMX): bf16 is emulated, "
            f"timed once on small batches (scoring {probe.scoring_batch}, training {probe.training_batch}) "
            "against a bf16 ceiling measured on the same batches; 'auto' precision therefore scores in "
            "fp32 here"
        )
    latency = measure_latency(detector, config, images_to_pixels(images), latency_calls)
    profiles = profile_tables(config, score_batch, train_batch) if profile else []
    load_after = os.getloadavg()
    if max(load_before[0], load_after[0]) > 2.5:
        notes.append(
            f"machine loaded by other processes (1-min load {load_before[0]:.1f} -> {load_after[0]:.1f} "
            f"on {os.cpu_count()} cores): absolute rates are low, ratios to the ceiling are the figure"
        )
    return ModelBenchmarkResult(
        smoke=smoke,
        repeats=repeats,
        threads=torch.get_num_threads(),
        cpu_model=cpu_model_name(),
        native_bf16=native_bf16("cpu"),
        scoring_batch=score_batch,
        training_batch=train_batch,
        scoring_gflop_per_image=scoring_flops / 1e9,
        training_gflop_per_image=training_flops / 1e9,
        conv_ceiling_gflops=ceiling_median,
        conv_ceiling_gflops_repeats=ceiling_repeats,
        gemm_gflops=gemm_median,
        gemm_gflops_repeats=gemm_repeats,
        scoring=scoring,
        training=training,
        latency=latency,
        load_average_before=load_before,
        load_average_after=load_after,
        notes=notes,
        profiles=profiles,
    )


def images_to_pixels(images: torch.Tensor) -> np.ndarray:
    """Model tensor (N, 1, H, W) in [-1, 1] back to uint8 films (N, H, W)."""
    return np.clip(np.rint((images.squeeze(1).numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; writes the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--output", type=Path, default=Path("runs/bench_model.json"))
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_model_benchmark(
        smoke=arguments.smoke, repeats=arguments.repeats, include_compile=False if arguments.no_compile else None
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(asdict(result), indent=2) + "\n")
    logger.info("written to %s", arguments.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
