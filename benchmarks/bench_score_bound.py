"""Scoring from files against the bound of its slower stage (issue 31, points 3 and 5).

Run: ``.venv/bin/python -m benchmarks.bench_score_bound [--smoke] [--device cpu|cuda] [--output FILE]``
(``make bench`` runs it through :mod:`benchmarks.run`). The detector is the default one,
``Config()``, saved as a checkpoint and scored by ``cxr-anomaly score``'s own job
(:func:`cxr_anomaly.jobs.score.score_job`) at the default precision (``auto``) and batch.

For each kind of source file (1024 px 8-bit PNG; uncompressed 12-bit MONOCHROME2 DICOM; the same
DICOM compressed as JPEG 2000 lossless, the common PACS storage), each repeat measures on the
same films each stage alone, the whole job, then each stage alone again (a stage's time is the
mean of its two measurements):

- **decode**: :func:`cxr_anomaly.data.dataset.load_images` of every file, as the job calls it
  (its decoding threads, one per core; no cache): decoding and the reduction to the model's codes;
- **model**: the checkpoint's ``score_films`` on those decoded films, as the job calls it
  (default precision and scoring batch; on a GPU synchronised by the copy of each batch's scores);
- **score**: the whole job from the files to its CSV: the checkpoint's load, the DICOM headers,
  decoding, scoring, the scope and link columns, the CSV.

The **bound** is the rate scoring would reach if it did nothing but its two stages, measured in
the same repeat: on a CPU, where decode and model share the cores, ``1 / (decode + model)``
seconds a film; on a GPU, where decoding runs on the CPU's cores while the device computes,
``min(decode rate, model rate)``. The **ratio** is the score rate over the bound; each kind's
figures are those of its median repeat by ratio (target: at least 0.8), with the range over
the repeats beside them.

The fit does not change the cost of scoring, only its values: the detector is fitted frozen
(``features.finetune_epochs = 0``) on 32 normals, with the default bank sizes, and
its pooled bank is tiled to the size a fit of 5,000 normals gives (speed only), so the scoring
graph is the default's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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

from benchmarks.bench_features import DEFAULT_DATA, fullres_paths, replicate, rsna_rows
from benchmarks.common import StageClock, git_commit, machine_facts, uncommitted_files
from cxr_anomaly.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.cache import default_workers
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.jobs import score as score_module
from cxr_anomaly.models.registry import fit_detector
from cxr_anomaly.scoring import fit_calibration

logger = logging.getLogger(__name__)

TARGET_RATIO = 0.8  # issue 31, point 3
FULL_FIT_NORMALS = 5000  # the fit make bench times: the pooled bank holds this many normals


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: full (``make bench``) or smoke (CI: checks that it works, not how fast)."""

    smoke: bool
    films: int  # files of each kind scored per repeat
    repeats: int
    fit_films: int

    @classmethod
    def for_run(cls, smoke: bool, device: str, repeats: int | None = None, films: int | None = None) -> Settings:
        """The full run's sizes for ``device``, or the smoke run's."""
        if smoke:
            return cls(True, films or 4, repeats or 1, 24)
        if device == "cuda":  # a few seconds a stage, within a lent GPU's minutes
            return cls(False, films or 1024, repeats or 3, 32)
        return cls(False, films or 64, repeats or 5, 32)  # 32 films: more patches than the bank's 4,096


def bound_films_per_second(decode_seconds_per_film: float, model_seconds_per_film: float, device_type: str) -> float:
    """The rate of a scorer that did nothing but decode and run the model.

    On a CPU both stages share the cores, so their times add; on a GPU decoding runs on the CPU's
    cores while the device computes, so the slower stage sets the rate.

    Raises:
        ValueError: a stage time that is not positive.
    """
    if decode_seconds_per_film <= 0 or model_seconds_per_film <= 0:
        raise ValueError(
            f"stage times must be positive: decode {decode_seconds_per_film} s, model {model_seconds_per_film} s"
        )
    if device_type == "cpu":
        return 1.0 / (decode_seconds_per_film + model_seconds_per_film)
    return min(1.0 / decode_seconds_per_film, 1.0 / model_seconds_per_film)


# ---------------------------------------------------------------- source files


def twelve_bit_film(eight_bit: np.ndarray) -> np.ndarray:
    """A 12-bit film (uint16, 0-4080) made from an 8-bit one: a 3x3 mean of 16 x its codes, so it
    has about 2,000 grey levels, as a detector's output has, not 256 spread apart."""
    from scipy.ndimage import uniform_filter

    smoothed = uniform_filter(eight_bit.astype(np.float32) * 16.0, size=3, mode="nearest")
    return np.clip(np.rint(smoothed), 0, 4095).astype(np.uint16)


def write_twelve_bit_dicom(pixels: np.ndarray, path: Path, uid_suffix: int, *, jpeg_2000: bool) -> Path:
    """Save a 12-bit film (rows, columns) as a frontal DX MONOCHROME2 DICOM film, uncompressed or
    JPEG 2000 lossless, without patient identifiers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, JPEG2000Lossless

    uid = f"1.2.826.0.1.3680043.10.1459.31.{uid_suffix}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.StudyInstanceUID = uid + ".1"
    dataset.SeriesInstanceUID = uid + ".2"
    dataset.Modality = "DX"
    dataset.ViewPosition = "PA"
    dataset.BodyPartExamined = "CHEST"
    dataset.set_pixel_data(np.ascontiguousarray(pixels, dtype=np.uint16), "MONOCHROME2", 12)
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = uid
    if jpeg_2000:
        dataset.compress(JPEG2000Lossless)
    dataset.save_as(path, enforce_file_format=True)
    return path


def jpeg_2000_unavailable() -> str | None:
    """None where pydicom can write JPEG 2000 lossless here; otherwise what to install."""
    from pydicom.pixels.encoders import JPEG2000LosslessEncoder

    if JPEG2000LosslessEncoder.is_available:
        return None
    return "no JPEG 2000 encoder: pip install pylibjpeg-openjpeg (the dev extra has it)"


@dataclass(frozen=True)
class SourceFiles:
    """The files of one kind of source, as a manifest the score job reads."""

    name: str
    manifest: Path
    rows: pd.DataFrame
    megabytes_per_file: float


def write_sources(sources: list[Path], count: int, folder: Path) -> tuple[list[SourceFiles], dict[str, str]]:
    """PNG copies of ``sources`` and their 12-bit DICOM versions, uncompressed and JPEG 2000,
    each replicated to ``count`` files; the kinds that could not be written, with why."""
    from cxr_anomaly.io import read_image

    written = {"1024 px PNG (8-bit)": replicate(sources, count, folder / "png", ".png")}
    plain, compressed = folder / "dicom_originals", folder / "j2k_originals"
    plain.mkdir(parents=True)
    compressed.mkdir(parents=True)
    skipped: dict[str, str] = {}
    j2k_missing = jpeg_2000_unavailable()
    plain_files, j2k_files = [], []
    for index, source in enumerate(sources[:count]):
        grey = read_image(source).array  # (H, W) float in [0, 1]
        film = twelve_bit_film(np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8))
        plain_files.append(write_twelve_bit_dicom(film, plain / f"{index:03d}.dcm", index + 1, jpeg_2000=False))
        if j2k_missing is None:
            j2k_files.append(write_twelve_bit_dicom(film, compressed / f"{index:03d}.dcm", index + 1, jpeg_2000=True))
    written["DICOM 12-bit uncompressed"] = replicate(plain_files, count, folder / "dicom", ".dcm")
    if j2k_missing is None:
        written["DICOM 12-bit JPEG 2000 lossless"] = replicate(j2k_files, count, folder / "j2k", ".dcm")
    else:
        skipped["DICOM 12-bit JPEG 2000 lossless"] = j2k_missing
    files = []
    for index, (name, rows) in enumerate(written.items()):
        manifest = folder / f"manifest_{index}.csv"
        rows.to_csv(manifest, index=False)
        size = statistics.mean(os.path.getsize(path) for path in rows["path"]) / 1e6
        files.append(SourceFiles(name, manifest, rows, size))
    return files, skipped


def first_files(files: SourceFiles, count: int, folder: Path) -> SourceFiles:
    """The first ``count`` files of ``files`` (all when fewer), with their own manifest."""
    rows = files.rows.iloc[:count].reset_index(drop=True)
    manifest = folder / f"first_{count}_{files.manifest.name}"
    rows.to_csv(manifest, index=False)
    return SourceFiles(files.name, manifest, rows, files.megabytes_per_file)


# ---------------------------------------------------------------- the detector


def scoring_checkpoint(data_root: Path, settings: Settings, folder: Path, weights: str = "") -> Path:
    """The default detector (frozen fit, the default banks; the pooled bank tiled to a 5,000-normal
    fit's size) with a calibration, saved as a checkpoint the score job loads."""
    config = with_overrides(Config(), "features", finetune_epochs=0, weights_path=weights)
    if settings.smoke:
        config = with_overrides(config, "features", memory_bank_size=64, pooled_bank_size=16, batch_size=8)
    pixels = load_images(rsna_rows(data_root, settings.fit_films), config.data).pixels
    detector = fit_detector(config, pixels, progress=False).detector
    wanted = min(config.features.pooled_bank_size, FULL_FIT_NORMALS)
    bank = detector.pooled_bank
    if len(bank) < wanted:  # speed only: the search costs the same whatever the rows hold
        detector.pooled_bank = bank.repeat(-(-wanted // len(bank)), 1)[:wanted].clone()
    calibration_films = load_images(rsna_rows(data_root, settings.fit_films + 16).iloc[-16:], config.data).pixels
    scores = LoadedModel(detector, config, None, "benchmark").score_films(calibration_films).raw
    return save_checkpoint(folder / "model.pt", detector, config, calibration=fit_calibration(scores, 0.95))


# ---------------------------------------------------------------- the measurement


@dataclass
class BoundRepeat:
    """One repeat on one kind of source: seconds a film of each stage alone and of the job."""

    decode_seconds_per_film: float
    model_seconds_per_film: float
    score_seconds_per_film: float
    bound_films_per_second: float
    ratio: float
    job_seconds_by_stage: dict[str, float]  # inside the score job, seconds a film
    load_average: float


@dataclass
class SourceFigures:
    """One kind of source: the figures of its median repeat by ratio, and every repeat."""

    source: str
    films: int
    megabytes_per_file: float
    decode_films_per_second: float
    model_films_per_second: float
    bound_films_per_second: float
    score_films_per_second: float
    ratio: float  # the median of the repeats' ratios
    ratio_range: tuple[float, float]  # the lowest and highest repeat's
    meets_target: bool
    job_milliseconds_per_film: dict[str, float]
    repeats: list[BoundRepeat]


def synchronised(device: torch.device) -> Callable[[], None]:
    """A call that waits for the device's queued work (nothing to wait for on a CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def job_stages() -> dict[str, tuple[object, str]]:
    """The score job's steps, as StageClock targets."""
    return {
        "checkpoint load": (score_module, "load_scoring_model"),
        "DICOM headers (view)": (score_module, "fill_from_dicom_headers"),
        "decode": (score_module, "load_images"),
        "model": (LoadedModel, "score_films"),
        "scope (headers, pixels)": (score_module, "scope_column"),
        "DICOM links (headers)": (score_module, "add_dicom_links"),
    }


def timed_stages(model: LoadedModel, rows: pd.DataFrame, device: torch.device) -> tuple[float, float]:
    """Seconds a film of decoding ``rows`` alone, then of the model alone on the decoded films."""
    wait = synchronised(device)
    started = time.perf_counter()
    pixels = load_images(rows, model.config.data).pixels
    decode = (time.perf_counter() - started) / len(rows)
    wait()
    started = time.perf_counter()
    model.score_films(pixels)
    wait()
    return decode, (time.perf_counter() - started) / len(rows)


def measure_repeat(files: SourceFiles, model_path: Path, device: torch.device, out_dir: Path) -> BoundRepeat:
    """Each stage alone, the whole score job, then each stage alone again, on ``files``.

    A stage's time is the mean of its two measurements, one before the job and one after, so a
    load from other processes that rises or falls during the repeat reaches the bound and the job
    alike.
    """
    model = load_checkpoint(model_path, device=device)
    count = len(files.rows)
    decode_before, model_before = timed_stages(model, files.rows, device)
    clock = StageClock()
    with clock.watch(job_stages()):
        started = time.perf_counter()
        score_module.score_job(model_path, [files.manifest], out_dir / "scores.csv", device=device.type, progress=False)
        synchronised(device)()
        job = time.perf_counter() - started
    decode_after, model_after = timed_stages(model, files.rows, device)
    decode, model_seconds = (decode_before + decode_after) / 2, (model_before + model_after) / 2
    stages = {stage: seconds / count for stage, seconds in clock.seconds.items()}
    stages["rest (table, CSV)"] = job / count - sum(stages.values())
    bound = bound_films_per_second(decode, model_seconds, device.type)
    return BoundRepeat(
        decode, model_seconds, job / count, bound, 1.0 / (job / count) / bound, stages, os.getloadavg()[0]
    )


def summarise(files: SourceFiles, repeats: list[BoundRepeat]) -> SourceFigures:
    """One kind of source's figures: those of its median repeat by ratio (the lower of the middle
    two for an even count), so that a row's stages, bound, rate and ratio belong together."""
    ranked = sorted(repeats, key=lambda item: item.ratio)
    middle = ranked[(len(ranked) - 1) // 2]
    return SourceFigures(
        files.name,
        len(files.rows),
        files.megabytes_per_file,
        1.0 / middle.decode_seconds_per_film,
        1.0 / middle.model_seconds_per_film,
        middle.bound_films_per_second,
        1.0 / middle.score_seconds_per_film,
        middle.ratio,
        (ranked[0].ratio, ranked[-1].ratio),
        middle.ratio >= TARGET_RATIO,
        {stage: 1000 * seconds for stage, seconds in middle.job_seconds_by_stage.items()},
        repeats,
    )


def measure_kinds(
    kinds: list[SourceFiles], model_path: Path, device: torch.device, repeats: int, work_dir: Path
) -> list[SourceFigures]:
    """A warm-up on two scoring batches of each kind, then ``repeats`` rounds over the kinds."""
    warm_films = 2 * load_checkpoint(model_path, device=device).detector.scoring_batch_size(device)
    for files in kinds:  # oneDNN's primitives or CUDA's context and kernels, the imports
        measure_repeat(first_files(files, warm_films, work_dir), model_path, device, work_dir)
    by_kind: dict[str, list[BoundRepeat]] = {files.name: [] for files in kinds}
    for repeat in range(repeats):
        for files in kinds:  # the kinds alternate, so a change of load reaches each alike
            item = measure_repeat(files, model_path, device, work_dir)
            by_kind[files.name].append(item)
            logger.info(
                "repeat %d, %s: decode %.1f ms, model %.1f ms a film -> bound %.2f films/s; score %.2f "
                "films/s = %.2f of the bound (load %.2f)",
                repeat + 1,
                files.name,
                1000 * item.decode_seconds_per_film,
                1000 * item.model_seconds_per_film,
                item.bound_films_per_second,
                1.0 / item.score_seconds_per_film,
                item.ratio,
                item.load_average,
            )
    return [summarise(files, by_kind[files.name]) for files in kinds]


@dataclass
class ScoreBoundResult:
    """Everything :func:`run_score_bound_benchmark` measured."""

    smoke: bool
    commit: str
    uncommitted_files: list[str]
    device: str
    device_name: str
    bound_formula: str
    precision: str
    scoring_batch: int
    decode_threads: int
    torch_threads: int
    machine_before: dict[str, Any]
    machine_after: dict[str, Any]
    data: str
    settings: dict[str, Any]
    sources: list[SourceFigures]
    skipped: dict[str, str]
    seconds: float
    notes: list[str] = field(default_factory=list)


def run_score_bound_benchmark(
    *,
    smoke: bool = False,
    device: str = "cpu",
    repeats: int | None = None,
    films: int | None = None,
    data_root: Path = DEFAULT_DATA,
    weights: str = "",
) -> ScoreBoundResult:
    """Score each kind of source file against its bound; see the module docstring.

    Raises:
        FileNotFoundError: ``data_root`` lacks ``rsna_normal224`` or ``nih_fullres``.
        RuntimeError: ``device`` is cuda and there is no CUDA device.
    """
    started = time.perf_counter()
    for folder in ("rsna_normal224", "nih_fullres"):
        if not (data_root / folder / "manifest.csv").is_file():
            raise FileNotFoundError(f"{data_root / folder / 'manifest.csv'} is missing (set CXR_ANOMALY_DATA)")
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("bench_score_bound: --device cuda, but torch sees no CUDA device")
    settings = Settings.for_run(smoke, torch_device.type, repeats, films)
    commit, dirty = git_commit(), uncommitted_files()
    machine_before = machine_facts()
    logger.info("score bound: %s, load %s", machine_before["cpu_model"], machine_before["load_average"])
    with tempfile.TemporaryDirectory(prefix="bench_score_bound_") as work:
        work_dir = Path(work)
        model_path = scoring_checkpoint(data_root, settings, work_dir, weights)
        sources = fullres_paths(data_root)
        kinds, skipped = write_sources(sources, settings.films, work_dir / "files")
        model = load_checkpoint(model_path, device=torch_device)
        figures = measure_kinds(kinds, model_path, torch_device, settings.repeats, work_dir)
    machine_after = machine_facts()
    notes = [f"{name}: not measured ({why})" for name, why in skipped.items()]
    notes += [
        f"{item.source}: {item.ratio:.2f} of the bound, under the target of {TARGET_RATIO}"
        for item in figures
        if not item.meets_target
    ]
    return ScoreBoundResult(
        smoke=smoke,
        commit=commit,
        uncommitted_files=dirty,
        device=torch_device.type,
        device_name=torch.cuda.get_device_name() if torch_device.type == "cuda" else machine_before["cpu_model"],
        bound_formula="1 / (decode + model)" if torch_device.type == "cpu" else "min(decode rate, model rate)",
        precision=model.computes_in,
        scoring_batch=model.detector.scoring_batch_size(torch_device),
        decode_threads=default_workers(),
        torch_threads=torch.get_num_threads(),
        machine_before=machine_before,
        machine_after=machine_after,
        data=f"{data_root / 'nih_fullres'}: {len(sources)} films, each kind replicated to {settings.films} files",
        settings=asdict(settings),
        sources=figures,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


# ---------------------------------------------------------------- reporting


def summary_lines(result: ScoreBoundResult) -> list[str]:
    """Human-readable lines: each kind's ratio beside its bound."""
    before, after = result.machine_before["load_average"][0], result.machine_after["load_average"][0]
    lines = [
        f"scoring from files against its bound ({result.bound_formula}), {result.device_name}, "
        f"{result.precision}, batch {result.scoring_batch}, {result.decode_threads} decoding threads, "
        f"{result.torch_threads} torch threads; commit {result.commit}"
        f"{' + uncommitted changes' if result.uncommitted_files else ''}; load {before:.2f} -> {after:.2f}",
        f"  {'source':<34} {'decode':>8} {'model':>8} {'bound':>8} {'score':>8} {'ratio':>6}  (films/s; the median "
        f"repeat by ratio of {result.settings['repeats']}, {result.settings['films']} films each; ratio range)",
    ]
    for item in result.sources:
        low, high = item.ratio_range
        lines.append(
            f"  {item.source:<34} {item.decode_films_per_second:8.2f} {item.model_films_per_second:8.2f} "
            f"{item.bound_films_per_second:8.2f} {item.score_films_per_second:8.2f} {item.ratio:6.2f}"
            f"  {'meets' if item.meets_target else 'under'} {TARGET_RATIO} ({low:.2f}-{high:.2f})"
        )
    for item in result.sources:
        lines.append(
            f"  inside the job, {item.source}: "
            + ", ".join(f"{stage} {ms:.1f}" for stage, ms in item.job_milliseconds_per_film.items())
            + " ms a film"
        )
    lines.extend(f"note: {note}" for note in result.notes)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; writes the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI (checks that it works)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 5; 3 on a GPU)")
    parser.add_argument("--films", type=int, default=None, help="files of each kind (default 64; 1024 on a GPU)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--weights", default="", help="the backbone's weight file (default: the package's)")
    parser.add_argument("--output", type=Path, default=Path("runs/bench_score_bound.json"))
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run_score_bound_benchmark(
        smoke=arguments.smoke,
        device=arguments.device,
        repeats=arguments.repeats,
        films=arguments.films,
        data_root=arguments.data,
        weights=arguments.weights,
    )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(asdict(result), indent=2) + "\n")
    for line in summary_lines(result):
        print(line)
    logger.info("written to %s in %.0f s", arguments.output, result.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
