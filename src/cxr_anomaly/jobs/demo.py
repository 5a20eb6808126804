"""``make demo``: fit the default detector on one collection, test it on others, write a verdict.

The detector is fitted on the normal films of ``rsna_normal224`` (RSNA challenge "Normal" films,
exported by another pipeline than the NIH PNGs) and tested on collections it never saw: NIH1000's
test split, the test half of ``nih_pneumonia256`` (half of its patients; the other half is a
validation half on which settings were chosen, see docs/results.md) and the test half of
``rsna_dev256`` (radiologists' labels; normal vs lung opacity and normal vs any abnormality,
:mod:`cxr_anomaly.data.rsna_dev`). Pixel
baselines (PCA(5) reconstruction error and 5-NN distance on 64 px films), fitted on the same
normals, and the view alone (AP = abnormal) are scored on the same films. The report gives AUC
overall, within each view, view-balanced and for adults, with 95% bootstrap intervals, and says
in words whether the detector beats each baseline within each view.

Usage: ``python -m cxr_anomaly.jobs.demo --out runs/demo`` (data from ``$CXR_ANOMALY_DATA`` or
``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..baselines import BASELINE_IMAGE_SIZE, named_baseline_scores
from ..checkpoint import load_checkpoint
from ..config import DEFAULT_METHOD, Config, DataConfig, config_differences, methods, preset_config, with_overrides
from ..data.copies import COPY_CORRELATION, FilmCopy, film_signatures, matching_signatures
from ..data.dataset import load_images
from ..data.manifest import load_inputs
from ..data.rsna_dev import TASKS, validation_and_test_halves
from ..data.selection import read_label_column
from ..data.splits import split_patients_in_halves
from ..errors import CheckpointError
from ..evaluation import Interval, metrics_by_name, plot_roc_panels
from ..files import atomic_write_text
from ..inference import native_bf16
from ..models.registry import family_of
from .evaluate import evaluate_job
from .train import CHECKPOINT_NAME, TrainOutcome, train_job

logger = logging.getLogger(__name__)
# Fit and score in one precision on every machine: bf16 (auto on a CPU with native bf16) moves AUCs
# and flips verdicts, and the README quotes this report.
DEMO_PRECISION = "fp32"

VIEWS = ("PA", "AP")


@dataclass
class TestCollection:
    """A labelled collection the demo tests on, and which of its rows form the test part."""

    name: str
    manifest: pd.DataFrame


def test_collections(data_root: Path) -> list[TestCollection]:
    """NIH1000's given test split, the test half (by patient) of nih_pneumonia256 and the test half
    of rsna_dev256 for each of its two tasks (:data:`cxr_anomaly.data.rsna_dev.TASKS`)."""
    collections = []
    nih1000 = data_root / "nih1000" / "manifest.csv"
    if nih1000.is_file():
        manifest = load_inputs(nih1000)
        collections.append(TestCollection("NIH1000 test", manifest[manifest["split"] == "test"]))
    pneumonia = data_root / "nih_pneumonia256" / "manifest.csv"
    if pneumonia.is_file():
        halves = split_patients_in_halves(load_inputs(pneumonia), seed=0)
        collections.append(TestCollection("nih_pneumonia256 test half", halves[halves["split"] == "test"]))
    rsna = data_root / "rsna_dev256" / "manifest.csv"
    if rsna.is_file():
        halves = validation_and_test_halves(load_inputs(rsna))
        test = halves[halves["split"] == "test"]
        for task in TASKS:
            # the task's column becomes the label; films it does not judge (empty) are left out
            labelled = read_label_column(test, task.label_column, str(rsna))
            collections.append(
                TestCollection(f"rsna_dev256 test half, {task.description}", labelled[labelled["label"].notna()])
            )
    return collections


@dataclass
class BaselineResults:
    """Pixel-baseline scores and metrics per test collection.

    Attributes:
        scores: collection -> baseline name -> scores (N,) in the collection's row order.
        metrics: collection -> baseline name -> :meth:`Metrics.to_dict` values.
        copies: collection -> its films that are copies of training films (:mod:`.data.copies`).
    """

    scores: dict[str, dict[str, np.ndarray]]
    metrics: dict[str, dict[str, dict[str, object]]]
    copies: dict[str, list[FilmCopy]]


def baseline_metrics(train_manifest: pd.DataFrame, tests: list[TestCollection], num_resamples: int) -> BaselineResults:
    """The pixel baselines, fitted on the training normals at 64 px, scored on every test collection;
    and, from the same pixels, the test films that are copies of training films."""
    data_config = DataConfig(image_size=BASELINE_IMAGE_SIZE)
    normals = load_images(train_manifest[train_manifest["label"] == 0], data_config).pixels
    sets = {test.name: load_images(test.manifest, data_config).pixels for test in tests}
    normal_signatures = film_signatures(normals)  # once, for every test collection
    copies = {name: matching_signatures(film_signatures(pixels), normal_signatures) for name, pixels in sets.items()}
    scores = named_baseline_scores(normals, sets)
    metrics = {
        test.name: metrics_by_name(
            test.manifest["label"].to_numpy().astype(int), scores[test.name], test.manifest, num_resamples=num_resamples
        )
        for test in tests
    }
    return BaselineResults(scores, metrics, copies)


def roc_panels(
    test: TestCollection,
    detector_name: str,
    detector_scores: np.ndarray,
    baseline_scores: dict[str, np.ndarray],
    path: Path,
) -> Path:
    """ROC curves of the detector, the baselines and the view alone: all films, PA films, AP films."""
    labels = test.manifest["label"].to_numpy().astype(int)
    views = test.manifest["view"].to_numpy(dtype=object)
    curves = {detector_name: detector_scores, **baseline_scores}
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {
        "all films": {
            **{name: (labels, values) for name, values in curves.items()},
            "view only (AP = abnormal)": (labels, (views == "AP").astype(float)),
        }
    }
    for view in VIEWS:
        mask = views == view
        if mask.any():
            panels[f"{view} films"] = {name: (labels[mask], values[mask]) for name, values in curves.items()}
    return plot_roc_panels(panels, path, title=test.name)


def git_commit() -> str:
    """The current commit, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_description() -> str:
    """CPU model, cores and whether bf16 is native: every speed figure needs it."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, bf16 {'native' if native_bf16('cpu') else 'not native'}"


def cell(metrics: dict[str, object], key: str) -> str:
    """A metric with its interval for a table cell ("n/a" where undefined)."""
    return interval_of(metrics, key).describe()


def adult_cell(metrics: dict[str, object], key: str) -> str:
    """The adults' figure of a metric, or n/a."""
    adults = metrics.get("adults")
    return cell(adults, key) if isinstance(adults, dict) else "n/a"


def interval_of(metrics: dict[str, object], key: str) -> Interval:
    """The interval of a metric key as an :class:`Interval`."""
    intervals = metrics.get("intervals") or {}
    value = intervals.get(key) if isinstance(intervals, dict) else None
    return Interval(None, None, None) if not isinstance(value, dict) else Interval(**value)


def verdict(detector: dict[str, object], baselines: dict[str, dict[str, object]]) -> list[str]:
    """Sentences saying whether the detector beats each baseline overall and within each view."""
    lines = []
    view_only = interval_of(detector, "auc_view_only").estimate
    overall = interval_of(detector, "auc").estimate
    if overall is not None and view_only is not None:
        lines.append(
            f"- Against the view alone (AP = abnormal, AUC {view_only:.3f}): the detector's overall AUC "
            f"is {overall:.3f}, {'above' if overall > view_only else 'NOT above'} it."
        )
    for view in VIEWS:
        inside = interval_of(detector, f"auc_view_{view}")
        if inside.estimate is None:
            continue
        certain = inside.low is not None and inside.low > 0.5
        lines.append(
            f"- Within {view} films, where the view says nothing (0.5): {inside.describe()}, "
            f"{'above 0.5 with 95% confidence' if certain else 'not clearly above 0.5'}."
        )
    for name, values in baselines.items():
        wins = []
        beaten_views = 0
        for key, label in (("auc", "overall"), *((f"auc_view_{view}", f"within {view}") for view in VIEWS)):
            ours, theirs = interval_of(detector, key).estimate, interval_of(values, key).estimate
            if ours is None or theirs is None:
                continue
            wins.append(f"{label} {ours:.3f} vs {theirs:.3f} ({'beats' if ours > theirs else 'does NOT beat'})")
            beaten_views += key != "auc" and ours > theirs
        per_view_wins = beaten_views == len(VIEWS)
        lines.append(
            f"- Against {name}: {'; '.join(wins)}. "
            f"{'Beats it within each view.' if per_view_wins else 'Does not beat it within each view.'}"
        )
    return lines


def describe_copy(manifest: pd.DataFrame, copy: FilmCopy) -> str:
    """``file name (normal|abnormal, correlation)`` of a test film that copies a training film."""
    row = manifest.iloc[copy.film]
    label = "abnormal" if row["label"] == 1 else "normal"
    return f"{Path(str(row['path'])).name} ({label}, {copy.correlation:.4f})"


def copies_lines(copies: list[str] | None) -> list[str]:
    """The report's sentence on test films that are copies of training films (none without a check)."""
    if copies is None:
        return []
    rule = (
        f"same film through another pipeline: signatures correlating at {COPY_CORRELATION} or more, "
        "see cxr_anomaly.data.copies"
    )
    if not copies:
        return [f"No film here is a copy of a training film ({rule}).", ""]
    return [
        f"**{len(copies)} film(s) here are copies of training films** ({rule}); a normal one makes the "
        f"results optimistic: {', '.join(copies)}.",
        "",
    ]


def _report_preamble(facts: dict[str, object]) -> list[str]:
    """The lines of ``report.md`` above the collections' sections: the run's facts and how to read the tables."""
    return [
        "# cxr-anomaly demo report",
        "",
        f"Detector: {facts['detector']}, fitted on {facts['num_train']} normal films of {facts['train_data']} "
        f"({facts['num_calibration']} more held out for calibration). Commit {facts['commit']}; machine: "
        f"{facts['machine']}; fitted and scored in {facts.get('precision', DEMO_PRECISION)} on every machine; "
        + (
            f"fit reused from an earlier run (it took {facts['fit_seconds']:.0f} s then), "
            f"{facts['seconds']:.0f} s for the rest."
            if facts.get("fit_reused")
            else f"{facts['seconds']:.0f} s in all (fit {facts['fit_seconds']:.0f} s)."
        ),
        "",
        "AUC with 95% stratified-bootstrap intervals. *View-balanced* is the mean of the PA and AP AUCs; "
        "*view only* scores a film 1 when it is AP; *score predicts AP* is the AUC of the score for AP "
        "against PA among normal films (0.5: the score ignores the view). Adults: age 18 or more.",
        "",
    ]


def write_report(
    out_dir: Path,
    results: dict[str, dict[str, object]],
    baselines: dict[str, dict[str, dict[str, object]]],
    facts: dict[str, object],
) -> Path:
    """Write ``report.md``: per test collection a table (detector, baselines, view only) and a verdict."""
    lines = _report_preamble(facts)
    for name, metrics in results.items():
        counts = metrics.get("num_per_view") or {}
        count_text = ", ".join(
            f"{view} {values['normal']} normal + {values['abnormal']} abnormal" for view, values in counts.items()
        )  # type: ignore[union-attr]
        lines += [
            f"## {name}",
            "",
            f"{metrics['num_normal']} normal + {metrics['num_abnormal']} abnormal films ({count_text}).",
            "",
            *copies_lines(facts.get("copies", {}).get(name)),  # type: ignore[union-attr]
            "| score | overall | PA | AP | view-balanced | PA, adults | AP, adults | score predicts AP |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = [(f"**detector** ({facts['detector']})", metrics)] + list(baselines[name].items())
        for row_name, values in rows:
            lines.append(
                f"| {row_name} | {cell(values, 'auc')} | {cell(values, 'auc_view_PA')} | "
                f"{cell(values, 'auc_view_AP')} | {cell(values, 'auc_view_balanced')} | "
                f"{adult_cell(values, 'auc_view_PA')} | {adult_cell(values, 'auc_view_AP')} | "
                f"{cell(values, 'auc_score_predicts_ap_in_normals')} |"
            )
        lines.append(f"| view only (AP = abnormal) | {cell(metrics, 'auc_view_only')} | 0.5 | 0.5 | 0.5 | | | |")
        components = metrics.get("component_auc") or {}
        lines += [
            "",
            "Each component alone (overall AUC): "
            + ", ".join(
                f"{component} {value:.3f}"
                for component, value in components.items()  # type: ignore[union-attr]
                if value is not None
            )
            + ".",
            "",
        ]
        if metrics.get("sensitivity_at_threshold") is not None:
            ci = metrics["bootstrap_95ci"]
            lines += [
                f"At the stored threshold (95% specificity on held-out training-collection normals): "
                f"sensitivity {Interval(**ci['sensitivity']).describe()}, specificity "  # type: ignore[index]
                f"{Interval(**ci['specificity']).describe()}.",
                "",
            ]  # type: ignore[index]
        lines += [
            "Verdict:",
            "",
            *verdict(metrics, baselines[name]),
            "",
            f"![ROC, {name}](eval/{facts['folders'][name]}/roc_with_baselines.png)",  # type: ignore[index]
            "",
            f"![Films and heatmaps, {name}](eval/{facts['folders'][name]}/films.png)",
            "",
        ]  # type: ignore[index]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def folder_name(name: str) -> str:
    """A file-system-safe folder name for a collection."""
    return "".join(character if character.isalnum() else "_" for character in name).strip("_").lower()


@dataclass
class ReusedFit:
    """A fit found in the demo's run folder, and how long it took when it ran."""

    outcome: TrainOutcome
    seconds: float


def reuse_fit(run_dir: Path, config: Config, train_path: Path, num_normals: int) -> ReusedFit:
    """The checkpoint a previous demo wrote in ``run_dir``, when it was fitted as this one would be.

    It must hold the same configuration and have been trained and calibrated on ``train_path``
    with ``num_normals`` films in all, so that the report describes the model it scores.

    Raises:
        CheckpointError: no checkpoint there, or one fitted with other settings or other films.
    """
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(path, "no fitted model to reuse; run the demo without --reuse-fit")
    loaded = load_checkpoint(path)
    record = loaded.training
    differences = config_differences(loaded.config, config)
    if differences:
        raise CheckpointError(
            path, f"fitted with other settings {differences} (stored, now); run the demo without --reuse-fit"
        )
    used = record.get("num_train_images", 0) + record.get("num_calibration_images", 0)
    # resolved on both sides: checkpoints record absolute paths now, relative ones before
    recorded = [str(Path(source).resolve()) for source in record.get("data") or []]
    if recorded != [str(train_path.resolve())] or used != num_normals:
        raise CheckpointError(
            path,
            f"fitted on {used} films of {record.get('data')}, not on the {num_normals} "
            f"of {train_path}; run the demo without --reuse-fit",
        )
    seconds = float(record.get("seconds", float("nan")))
    logger.info(
        "reusing the fit in %s (%d training films, fitted in %.0f s)", path, record["num_train_images"], seconds
    )
    outcome = TrainOutcome(path, int(record["num_train_images"]), int(record["num_calibration_images"]), [])
    return ReusedFit(outcome, seconds)


def demo_config(method: str, seed: int) -> Config:
    """The family's preset at the demo's precision, with ``seed`` where the fit reads ``train.seed``."""
    config = with_overrides(preset_config(method), "train", precision=DEMO_PRECISION)
    if "train" in family_of(method).config_sections:  # a fit that reads train.seed (not a one-pass fit)
        config = with_overrides(config, "train", seed=seed)
    return config


def described_copies(tests: list[TestCollection], baselines: BaselineResults) -> dict[str, list[str]]:
    """Per test collection, its films that copy training films (:func:`describe_copy`), each found one logged."""
    copies = {test.name: [describe_copy(test.manifest, copy) for copy in baselines.copies[test.name]] for test in tests}
    for name, found in copies.items():
        if found:
            logger.warning("%s: %d film(s) are copies of training films: %s", name, len(found), found)
    return copies


def run_demo(
    data_root: Path,
    out_dir: Path,
    *,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    max_train_normals: int | None = None,
    num_resamples: int = 1000,
    progress: bool = True,
    reuse: bool = False,
) -> Path:
    """Fit on ``rsna_normal224``, test on the NIH collections, and return the report's path.

    With ``reuse`` the checkpoint a previous run left in ``out_dir/run`` is scored instead of
    fitting again (:func:`reuse_fit` checks that it was fitted the same way).
    """
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    train_manifest = load_inputs(data_root / "rsna_normal224" / "manifest.csv")
    if max_train_normals is not None:
        train_manifest = train_manifest.iloc[:max_train_normals]
    train_path = out_dir / "train_manifest.csv"
    train_manifest.to_csv(train_path, index=False)
    config = demo_config(method, seed)
    if reuse:
        reused = reuse_fit(out_dir / "run", config, train_path, len(train_manifest))
        trained, fit_seconds = reused.outcome, reused.seconds
    else:
        trained = train_job([train_path], out_dir / "run", config, progress=progress)
        fit_seconds = time.perf_counter() - started
    tests = test_collections(data_root)
    results: dict[str, dict[str, object]] = {}
    detector_scores: dict[str, np.ndarray] = {}
    folders = {}
    for test in tests:
        folders[test.name] = folder_name(test.name)
        test_path = out_dir / f"test_{folders[test.name]}.csv"
        test.manifest.to_csv(test_path, index=False)
        # baselines=False: the report's baselines below are fitted once, on every training normal
        evaluation = evaluate_job(
            trained.checkpoint,
            [test_path],
            out_dir / "eval" / folders[test.name],
            split="all",
            progress=progress,
            bootstrap_resamples=num_resamples,
            baselines=False,
            precision=DEMO_PRECISION,
        )
        results[test.name] = json.loads(evaluation.metrics_path.read_text())
        detector_scores[test.name] = pd.read_csv(evaluation.scores_path)["score_raw"].to_numpy()
    baselines = baseline_metrics(train_manifest, tests, num_resamples)
    atomic_write_text(out_dir / "baselines.json", json.dumps(baselines.metrics, indent=2))
    copies = described_copies(tests, baselines)
    for test in tests:
        roc_panels(
            test,
            "detector",
            detector_scores[test.name],
            baselines.scores[test.name],
            out_dir / "eval" / folders[test.name] / "roc_with_baselines.png",
        )
    facts = {
        "detector": results[tests[0].name]["detector"] if tests else method,
        "train_data": str(data_root / "rsna_normal224"),
        "num_train": trained.num_train_images,
        "num_calibration": trained.num_calibration_images,
        "commit": git_commit(),
        "machine": machine_description(),
        "seconds": time.perf_counter() - started,
        "fit_seconds": fit_seconds,
        "fit_reused": reuse,
        "folders": folders,
        "copies": copies,
        "precision": DEMO_PRECISION,
    }
    return write_report(out_dir, results, baselines.metrics, facts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cxr_anomaly.jobs.demo``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("CXR_ANOMALY_DATA", "../shared/data")),
        help="folder holding rsna_normal224, nih1000, nih_pneumonia256 and rsna_dev256 "
        "(default $CXR_ANOMALY_DATA or ../shared/data)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument(
        "--method", choices=methods(), default=DEFAULT_METHOD, help=f"detector family (default {DEFAULT_METHOD})"
    )
    parser.add_argument(
        "--max-train-normals",
        type=int,
        default=None,
        help="fit on the first N normals of rsna_normal224 only (default: all 5,000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of training (families whose fit reads train.seed)")
    parser.add_argument(
        "--reuse-fit",
        action="store_true",
        help="score the model a previous run left in OUT/run instead of fitting again "
        "(refused unless it was fitted with the same settings on the same films)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.data / "rsna_normal224" / "manifest.csv").is_file():
        logger.error("%s holds no rsna_normal224/manifest.csv; set CXR_ANOMALY_DATA or pass --data", args.data)
        return 2
    report = run_demo(
        args.data,
        args.out,
        method=args.method,
        seed=args.seed,
        max_train_normals=args.max_train_normals,
        reuse=args.reuse_fit,
    )
    print(f"report: {report}")
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
