"""Command-line interface: argument parsing and one short handler a command; the work is done in
:mod:`cxr_anomaly.jobs` and the modules they name.

Run ``cxr-anomaly COMMAND --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .cli_checks import (
    check_output_path,
    check_port_free,
    describe_os_error,
    missing_extra_hint,
    new_folders,
    output_paths,
    remove_if_empty,
)
from .config import (
    DEFAULT_METHOD,
    Config,
    FamilySettings,
    family_settings,
    load_config,
    methods,
    paper_method,
    preset_config,
    with_overrides,
)
from .errors import ConfigError, CxrAnomalyError
from .pacs.cli import add_pacs_commands

logger = logging.getLogger("cxr_anomaly")

DESCRIPTION = """\
{methods}

Typical use:
  cxr-anomaly train --data normals/ --out runs/first
  cxr-anomaly evaluate --model runs/first/model.pt --data manifest.csv --out runs/first/eval
  cxr-anomaly score --model runs/first/model.pt new_films/ --out scores.csv

Data can be a folder of PNG/JPEG/DICOM files (subfolders named normal/abnormal give labels,
train/val/test give splits), a manifest CSV (columns path, label [0 normal, 1 abnormal, empty
unknown], and optionally split, patient_id, view) or a MedMNIST-style .npz file.
"""


def method_list(text: Callable[[str, FamilySettings], str], default: str = " (default)") -> str:
    """``text(name, settings)`` for each registered family, the default's name followed by
    ``default``, joined by "; "; families without a text are left out."""
    parts = []
    for name in methods():
        part = text(name, family_settings(name))
        if part:
            parts.append(part.replace(name, name + default, 1) if name == DEFAULT_METHOD else part)
    return "; ".join(parts)


def introduction() -> str:
    """The first paragraph of ``cxr-anomaly --help``: what it does, with which methods."""
    return (
        "Find abnormal chest X-rays with a detector fitted on normal films only. The methods (--method): "
        + method_list(lambda name, settings: f"{name}, {settings.help}")
        + "."
    )


def variant_families() -> list[str]:
    """The families with network variants (``model.variant``)."""
    return [name for name in methods() if family_settings(name).variants]


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that reads images."""
    parser.add_argument(
        "--on-bad-file",
        choices=("error", "skip"),
        default="error",
        help="what to do with an unreadable file: stop with an error naming it "
        "(default), or skip it and list it with its reason in skipped_files.csv "
        "(score: CSV_skipped.csv beside its CSV)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="folder for the preprocessing cache (decoded, resized films); "
        "a second run with the same files and settings reuses it",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_train_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly train``: train a detector on the normal films of a data set."""
    train = commands.add_parser(
        "train",
        help="train a detector on the normal films of a data set",
        description="Train on the label-0 (normal) films of DATA; abnormal and unlabelled films are "
        "never used for training. With a split column, train rows train the model and "
        f"normal val rows calibrate the score; without one, {Config().train.calibration_fraction:.0%} "
        "of the normals are held out for calibration (by patient where the data has patient "
        "ids, else film by film). Writes RUN_DIR/model.pt and prints its path.",
    )
    train.add_argument(
        "--data",
        required=True,
        nargs="+",
        type=Path,
        metavar="MANIFEST_OR_DIR",
        help="folder, manifest CSV or .npz of training films",
    )
    train.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="output folder")
    train.add_argument(
        "--method",
        choices=methods(),
        default=None,
        help="detector family: " + method_list(lambda name, settings: f"{name}: {settings.help}"),
    )
    train.add_argument(
        "--variant",
        choices=list(
            dict.fromkeys(variant for name in variant_families() for variant in family_settings(name).variants)
        ),
        default=None,
        help="ablation variant of a family with network variants: "
        + method_list(
            lambda name, settings: settings.variants and f"with --method {name}: {', '.join(settings.variants)}", ""
        ),
    )
    train.add_argument("--epochs", type=int, default=None, help="training epochs (paper: 15)")
    train.add_argument("--seed", type=int, default=None, help="seed of initialisation, order and noise")
    train.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML or JSON config file; command-line options override it",
    )
    train.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    train.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="fitting, both families: auto (default: bf16 autocast where the device computes "
        "bf16 natively, else fp32), fp32 or bf16",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from RUN_DIR/training_state.pt (with its stored "
        "settings; a fresh start when there is none yet)",
    )
    train.add_argument(
        "--checkpoint-every-steps",
        type=int,
        default=None,
        metavar="N",
        help="also save the training state every N steps (default: after each epoch only)",
    )
    train.add_argument(
        "--sync-batchnorm",
        action="store_true",
        help="under torchrun, pool BatchNorm statistics over all GPUs (SyncBatchNorm; "
        "CUDA only) instead of each rank's own batch",
    )
    add_data_options(train)


def add_score_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly score``: score films with a trained detector."""
    score = commands.add_parser(
        "score",
        help="score films with a trained detector",
        description="Score every film of each INPUT (a file, a folder or a manifest) and write a CSV "
        "with path, score, the detector's score components ("
        + method_list(
            lambda name, settings: (
                f"{'the default ' + name + ' detector' if name == DEFAULT_METHOD else name}: "
                + ", ".join(settings.components)
            ),
            "",
        )
        + ") and scope (in_scope, or why the model was not made for the film: "
        "lateral_view, not_chest, for_processing, rotated, paediatric, unknown_view).",
    )
    score.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="MODEL",
        help="checkpoint (model.pt), or a graph from `cxr-anomaly export` (*.onnx), "
        "scored with onnxruntime (pip install 'cxr-anomaly[onnx]')",
    )
    score.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="file, folder or manifest")
    score.add_argument("--out", required=True, type=Path, metavar="CSV", help="scores CSV to write")
    score.add_argument(
        "--normalisation",
        choices=("calibrated", "minmax", "raw"),
        default="calibrated",
        help="what the score column holds: calibrated (default; a robust z-score against "
        "normal validation films, the same for a film alone or in a batch), minmax "
        "(the paper's, over this set) or raw (eq. 6)",
    )
    score.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="HTML",
        help="also write a self-contained HTML worklist (thumbnail, reconstruction, "
        "heatmap, score, percentile, decision per film) and rank the CSV by score, "
        "most suspicious first",
    )
    score.add_argument(
        "--keep-patient-identifiers",
        action="store_true",
        help="write DICOM PatientName, PatientID and PatientBirthDate into the CSV and "
        "report (off by default; StudyInstanceUID and SOPInstanceUID are always kept)",
    )
    score.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto (default: bf16 where the CPU or GPU computes it natively, else fp32), "
        "fp32 (the exported graph's precision: the same scores on every machine) or bf16",
    )
    score.add_argument(
        "--device",
        default="auto",
        help="auto (default: cuda when available; an exported graph runs on the CPU), cpu, cuda or cuda:N",
    )
    add_data_options(score)


def add_calibrate_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly calibrate``: refit a checkpoint's operating point on labelled validation films."""
    calibrate = commands.add_parser(
        "calibrate",
        help="refit a checkpoint's operating point on labelled validation films",
        description="Score the labelled films of SPLIT and store a new calibration in the checkpoint: "
        "percentiles among the normal films and a threshold for --target-specificity, or, "
        "when the films include abnormal ones and --target-sensitivity is given, the "
        "threshold that flags that fraction of them (its specificity is reported). "
        "Without abnormal films a sensitivity target falls back to the specificity target.",
    )
    calibrate.add_argument("--model", required=True, type=Path, metavar="CKPT", help="checkpoint to update")
    calibrate.add_argument(
        "--data", required=True, nargs="+", type=Path, metavar="MANIFEST_OR_DIR", help="labelled validation films"
    )
    calibrate.add_argument(
        "--split",
        choices=("val", "train", "test", "all", "auto"),
        default="val",
        help="rows to calibrate on (default val)",
    )
    calibrate.add_argument(
        "--target-specificity",
        type=float,
        default=None,
        help="fraction of normal films below the threshold (default: the config's, 0.95)",
    )
    calibrate.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        help="fraction of abnormal validation films the threshold must flag",
    )
    calibrate.add_argument(
        "--out", type=Path, default=None, metavar="CKPT", help="write the updated checkpoint here instead of in place"
    )
    add_data_options(calibrate)


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly serve``: run the scoring REST service and web page (FastAPI under uvicorn)."""
    serve = commands.add_parser(
        "serve",
        help="run the scoring REST service and web page (FastAPI under uvicorn)",
        description="Serve POST /v1/score (PNG, JPEG or DICOM in; score, components, percentile, "
        "decision and model version out; optional heatmap), GET /healthz, GET /v1/model, "
        "the OpenAPI schema at /openapi.json and a web page at /.",
    )
    serve.add_argument(
        "--model",
        required=True,
        type=Path,
        metavar="CKPT",
        help="checkpoint (model.pt), or a graph written by export (*.onnx, scored with onnxruntime on the CPU)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--token",
        default=None,
        help="bearer token every scoring request must carry (default: the "
        "CXR_ANOMALY_TOKEN environment variable; none = open)",
    )
    serve.add_argument("--max-upload-mb", type=float, default=32.0, help="largest accepted upload (MB)")
    serve.add_argument(
        "--max-image-side", type=int, default=8192, help="largest accepted image width or height, in pixels"
    )
    serve.add_argument(
        "--max-batch-size", type=int, default=32, help="most concurrent requests scored together in one forward pass"
    )
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long the first request of a batch waits for others to join",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for scoring, PyTorch's and onnxruntime's (default: one per core; "
        "1 is faster when the cores are shared with other busy processes)",
    )
    serve.add_argument(
        "--device",
        default="auto",
        help="auto (default: cuda when available; an exported graph runs on the CPU), cpu, cuda or cuda:N",
    )
    from .serve_options import add_serve_limit_options  # argparse only: --help stays fast

    add_serve_limit_options(serve)


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly evaluate``: measure AUC and draw ROC and reconstruction figures on labelled films."""
    evaluate = commands.add_parser(
        "evaluate",
        help="measure AUC and draw ROC and reconstruction figures on labelled films",
        description="Score labelled films and write metrics.json (AUC, average precision, counts per "
        "class, AUC per view), roc.png, films.png (the highest-scoring films of each class "
        "with their heatmaps) and scores.csv into DIR.",
    )
    evaluate.add_argument("--model", required=True, type=Path, metavar="CKPT", help="checkpoint (model.pt)")
    evaluate.add_argument(
        "--data", required=True, nargs="+", type=Path, metavar="MANIFEST_OR_DIR", help="labelled films"
    )
    evaluate.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    evaluate.add_argument(
        "--split",
        choices=("auto", "train", "val", "test", "all"),
        default="auto",
        help="rows to evaluate; auto = the test split when the data has one, else all",
    )
    evaluate.add_argument(
        "--label-column",
        default="label",
        metavar="NAME",
        help="manifest column holding the labels, 0 normal and 1 abnormal (default "
        "label; e.g. abnormal for NIH's nih_fullres manifest)",
    )
    evaluate.add_argument(
        "--baseline-train",
        nargs="+",
        type=Path,
        default=None,
        metavar="DATA",
        help="the model's training data, where it has moved: the pixel baselines (PCA(5), "
        "5-NN at 64 px) are fitted on the normals the model trained on, and patients "
        "with training films are looked for among the evaluated films; default: the "
        "data the checkpoint recorded",
    )
    evaluate.add_argument("--no-baselines", action="store_true", help="leave the pixel baselines out")
    evaluate.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda or cuda:N")
    evaluate.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto (default: bf16 where the CPU or GPU computes it natively, else fp32), "
        "fp32 (the same scores on every machine) or bf16",
    )
    add_data_options(evaluate)


def add_export_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly export``: export a checkpoint's scoring graph to ONNX."""
    export = commands.add_parser(
        "export",
        help="export a checkpoint's scoring graph to ONNX",
        description="Write the whole scoring graph (model tensor (N, 1, S, S) in [-1, 1], S the "
        "checkpoint's image size: "
        + ", ".join(
            f"{preset_config(name).data.image_size} for "
            + (f"the default {name} detector" if name == DEFAULT_METHOD else name)
            for name in methods()
        )
        + " -> raw score and its components) as an ONNX file for onnxruntime, "
        "with the config and calibration in its metadata.",
    )
    export.add_argument("--model", required=True, type=Path, metavar="CKPT", help="checkpoint (model.pt)")
    export.add_argument("--out", required=True, type=Path, metavar="ONNX", help="ONNX file to write")


def add_split_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly split``: write a patient-disjoint split of a data set as a manifest CSV."""
    split = commands.add_parser(
        "split",
        help="write a patient-disjoint split of a data set as a manifest CSV",
        description="Re-split INPUT (a manifest CSV, a folder with manifest.csv, a Kermany tree) so that "
        "no patient is in two splits; or, with --paper, build Tang et al.'s exact-size split "
        "from the official NIH or RSNA tables (INPUT is then the label table).",
    )
    split.add_argument("input", type=Path, metavar="INPUT", help="data set, or the label table with --paper")
    split.add_argument("--out", required=True, type=Path, metavar="CSV", help="manifest CSV to write")
    split.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    split.add_argument("--val-fraction", type=float, default=0.15, help="share of films for validation")
    split.add_argument("--test-fraction", type=float, default=0.15, help="share of films for testing")
    split.add_argument(
        "--paper",
        choices=("nih", "rsna"),
        default=None,
        help="build experiment 1 (nih) or 2 (rsna) of the paper from the official tables",
    )
    split.add_argument("--images", type=Path, default=None, help="with --paper: folder of the films")
    split.add_argument("--view", choices=("all", "PA", "AP"), default="all", help="with --paper: view filter")
    split.add_argument(
        "--class-info", type=Path, default=None, help="with --paper rsna: stage_2_detailed_class_info.csv"
    )
    split.add_argument(
        "--headers", type=Path, default=None, help="with --paper rsna: DICOM header table giving ViewPosition"
    )
    split.add_argument(
        "--skip-missing-images",
        action="store_true",
        help="with --paper and --images: leave out films absent from --images",
    )


def add_reproduce_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly reproduce``: the paper's Table 1 and Figure 2 on labelled data, with baselines."""
    reproduce = commands.add_parser(
        "reproduce",
        help="the paper's Table 1 and Figure 2 on labelled data, with baselines",
        description="Train and score every ablation variant for every seed on one patient-disjoint "
        "split, beside PCA and kNN baselines fitted on the same training normals, and "
        "write table.md, table.csv, roc.png and figure2.png into DIR. Finished (variant, "
        "seed) cells are kept in DIR/cells; running again skips them.",
    )
    reproduce.add_argument(
        "--data",
        required=True,
        nargs="+",
        type=Path,
        metavar="MANIFEST_OR_DIR",
        help="labelled films (normal and abnormal); only normals train",
    )
    reproduce.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    reproduce.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per variant (default 5)")
    variants = family_settings(paper_method()).variants
    reproduce.add_argument(
        "--variants", default=",".join(variants), help=f"comma-separated variants (default {','.join(variants)})"
    )
    reproduce.add_argument(
        "--split",
        dest="split_strategy",
        choices=("resplit", "given"),
        default="resplit",
        help="resplit (default): a new patient-disjoint train/val/test split; given: the data's own split column",
    )
    reproduce.add_argument("--split-seed", type=int, default=0, help="seed of the re-split")
    reproduce.add_argument("--val-fraction", type=float, default=0.2, help="validation share (by patient)")
    reproduce.add_argument("--test-fraction", type=float, default=0.2, help="test share (by patient)")
    reproduce.add_argument("--view", default=None, help="keep only films of this view, e.g. PA")
    reproduce.add_argument(
        "--max-train-normals",
        type=int,
        default=None,
        help="train on at most this many normals (seeded draw), for short runs",
    )
    reproduce.add_argument("--epochs", type=int, default=None, help="training epochs per cell")
    reproduce.add_argument(
        "--preset",
        choices=(paper_method(), *family_settings(paper_method()).presets),
        default=paper_method(),
        help=f"base configuration of the {paper_method()} networks: this package's defaults "
        f"({paper_method()}), or paper (eq. 6 score, BatchNorm running statistics from training)",
    )
    reproduce.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML or JSON config file, applied over the preset; command-line options override it",
    )
    reproduce.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    reproduce.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="training precision: auto (default: bf16 where native), fp32 or bf16",
    )
    add_data_options(reproduce)


def add_benchmark_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly benchmark``: fit methods on one collection's normals and test them on several, per view."""
    benchmark = commands.add_parser(
        "benchmark",
        help="fit methods on one collection's normals and test them on several, per view",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Fit every method and seed on the normal films of --train (its train split when it has one; normal
val films, else 10% of the normals held out by patient, calibrate) and score each --test collection
(its test split when it has one, else every labelled film). Writes into DIR:
  table.csv, table.md  a row per method, per pixel baseline (PCA(5) reconstruction error and 5-NN
                       distance at 64 px, fitted on the same normals) and for the view-only score
                       (AP = 1); per test collection the AUC overall, within PA and AP, view-balanced,
                       adults' AUC within each view (where ages are known) and how well the score
                       predicts AP among normals: mean ± std over seeds, each seed in the CSV
  roc_NAME.png         ROC curves per test collection, a panel per view
  films_NAME_CELL.png  highest-scoring normal and abnormal films with heatmaps (and reconstructions
                       where the detector reconstructs), per test collection and fitted detector (first seed)
  cells/KIND-seedN/    one finished fit each; a rerun with the same settings reuses it

{rows}""".replace(
            "{rows}",
            textwrap.fill(
                "Methods (comma-separated): "
                + ", ".join(row for name in methods() for row in family_settings(name).benchmark_rows)
                + ".",
                width=96,
            ),
        ),
    )
    benchmark.add_argument(
        "--train",
        required=True,
        nargs="+",
        type=Path,
        metavar="DATA",
        help="folder, manifest CSV or .npz whose normal films train every method",
    )
    benchmark.add_argument(
        "--test",
        required=True,
        nargs="+",
        metavar="NAME=DATA",
        help="test collections, each a name (letters, digits, _.-) and a folder, manifest or .npz",
    )
    benchmark.add_argument(
        "--methods",
        default=DEFAULT_METHOD,
        help=f"comma-separated method rows (default {DEFAULT_METHOD}), e.g. "
        + ",".join(row.split(" (")[0] for name in methods() for row in family_settings(name).benchmark_rows[-2:]),
    )
    benchmark.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method (default 3)")
    benchmark.add_argument(
        "--first-seed",
        type=int,
        default=0,
        metavar="K",
        help="start the seeds at K (K..K+N-1), to add seeds to a table run before",
    )
    benchmark.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    benchmark.add_argument(
        "--max-train-normals",
        type=int,
        default=None,
        metavar="K",
        help="fit on at most K training normals (a seeded draw; smaller K gives a subset of a larger one's films)",
    )
    benchmark.add_argument(
        "--epochs", type=int, default=None, help="training epochs of the families that train (paper: 15)"
    )
    benchmark.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML or JSON config applied over each family's preset ("
        + method_list(
            lambda name, settings: (
                settings.sections and f"{'/'.join(f'[{section}]' for section in settings.sections)} for {name}"
            ),
            "",
        )
        + "; [data]/[train]/[score] for all); must not set method",
    )
    benchmark.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    benchmark.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="training precision of the families that train: auto (default: bf16 where native), fp32 or bf16",
    )
    benchmark.add_argument(
        "--bootstrap-resamples",
        type=int,
        default=1000,
        metavar="N",
        help="resamples of the 95%% bootstrap intervals (default 1000; 0: none)",
    )
    add_data_options(benchmark)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cxr-anomaly``."""
    parser = argparse.ArgumentParser(
        prog="cxr-anomaly",
        description=DESCRIPTION.replace("{methods}", textwrap.fill(introduction(), width=96)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cxr-anomaly {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_command(commands)
    add_score_command(commands)
    add_calibrate_command(commands)
    add_serve_command(commands)
    add_evaluate_command(commands)
    add_export_command(commands)
    add_split_command(commands)
    add_reproduce_command(commands)
    add_benchmark_command(commands)
    for name, command in commands.choices.items():  # main() calls the chosen command's handler
        command.set_defaults(handler=HANDLERS[name])
    add_pacs_commands(commands)  # listen, worklist: they set their own handlers
    return parser


def training_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with command-line overrides applied."""
    base = preset_config(args.method or DEFAULT_METHOD)
    config = load_config(args.config, base=base) if args.config else base
    if args.method is not None and config.method != args.method:
        raise ConfigError(f"--method {args.method} but {args.config} sets method = {config.method!r}")
    if args.variant is not None:
        from .models.registry import family_of  # after parsing, so --help stays fast

        if "model" not in family_of(config.method).config_sections:
            raise ConfigError(
                f"--variant {args.variant} applies to a family with network variants "
                f"(a [model] section), not {config.method}"
            )
        config = with_overrides(config, "model", variant=args.variant)
    train_changes = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("seed", args.seed),
            ("device", args.device),
            ("precision", args.precision),
            ("checkpoint_every_steps", args.checkpoint_every_steps),
            ("sync_batchnorm", True if args.sync_batchnorm else None),
        )
        if value is not None
    }
    if train_changes:
        config = with_overrides(config, "train", **train_changes)
    return config


def run_train(args: argparse.Namespace, progress: bool) -> None:
    """``train``: fit a detector on the normal films of ``--data`` and write RUN_DIR/model.pt."""
    from .jobs import train  # after parsing, so --help stays fast

    outcome = train.train_job(
        args.data,
        args.out,
        training_config(args),
        on_bad_file=args.on_bad_file,
        cache_dir=args.cache_dir,
        progress=progress,
        resume=args.resume,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        print(f"trained on {outcome.num_train_images} normal images; checkpoint: {outcome.checkpoint}")


def run_score(args: argparse.Namespace, progress: bool) -> None:
    """``score``: score films with a checkpoint, write the CSV and, with ``--report``, the worklist."""
    from .jobs import score  # after parsing, so --help stays fast

    table = score.score_job(
        args.model,
        args.inputs,
        args.out,
        normalisation=args.normalisation,
        on_bad_file=args.on_bad_file,
        cache_dir=args.cache_dir,
        progress=progress,
        report=args.report,
        keep_patient_identifiers=args.keep_patient_identifiers,
        precision=args.precision,
        device=args.device,
    )
    outside = int((table["scope"] != "in_scope").sum()) if "scope" in table else 0
    print(
        f"scored {len(table)} images: {args.out}"
        + (f"; {outside} outside the model's scope (see the scope column)" if outside else "")
    )
    if args.report is not None:
        ranked = table[table["scope"] == "in_scope"] if "scope" in table else table
        flagged = int((ranked["decision"] == "flag").sum()) if "decision" in table else None
        print(f"worklist report: {args.report}" + ("" if flagged is None else f" ({flagged} of {len(ranked)} flagged)"))


def run_calibrate(args: argparse.Namespace, progress: bool) -> None:
    """``calibrate``: refit a checkpoint's operating point on labelled films."""
    from .jobs import calibrate  # after parsing, so --help stays fast

    outcome = calibrate.calibrate_job(
        args.model,
        args.data,
        split=args.split,
        target_specificity=args.target_specificity,
        target_sensitivity=args.target_sensitivity,
        out_path=args.out,
        on_bad_file=args.on_bad_file,
        cache_dir=args.cache_dir,
        progress=progress,
    )
    calibration = outcome.calibration
    sensitivity = (
        "n/a (no abnormal films)"
        if calibration.validation_sensitivity is None
        else f"{calibration.validation_sensitivity:.3f}"
    )
    print(
        f"operating point: {calibration.operating_point}, threshold {calibration.threshold:.4g}; on "
        f"{outcome.num_normal} normal + {outcome.num_abnormal} abnormal {outcome.split} films: "
        f"specificity {calibration.validation_specificity:.3f}, sensitivity {sensitivity}; "
        f"stored in {outcome.checkpoint}"
    )
    if calibration.note:
        print(f"note: {calibration.note}")


def run_serve(args: argparse.Namespace, progress: bool) -> None:
    """``serve``: the triage service and its page."""
    check_port_free(args.host, args.port)  # before minutes of model loading, not after
    from .serve import ServiceSettings, run_server
    from .serve_options import serve_limit_values

    settings = ServiceSettings.from_environment(
        token=args.token,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_image_side=args.max_image_side,
        max_batch_size=args.max_batch_size,
        batch_wait_seconds=args.batch_wait_ms / 1000.0,
        **serve_limit_values(args),
    )
    run_server(
        args.model,
        settings,
        host=args.host,
        port=args.port,
        threads=args.threads,
        device=args.device,
        allow_open=args.allow_open,
    )


def run_evaluate(args: argparse.Namespace, progress: bool) -> None:
    """``evaluate``: metrics, ROC and film grid of a checkpoint on labelled films."""
    from .jobs import evaluate  # after parsing, so --help stays fast

    outcome = evaluate.evaluate_job(
        args.model,
        args.data,
        args.out,
        split=args.split,
        label_column=args.label_column,
        on_bad_file=args.on_bad_file,
        cache_dir=args.cache_dir,
        progress=progress,
        baselines=not args.no_baselines,
        baseline_train=args.baseline_train,
        device=args.device,
        precision=args.precision,
    )
    auc = "n/a" if outcome.metrics.auc is None else f"{outcome.metrics.auc:.3f}"
    print(f"AUC {auc} on {outcome.split} split; metrics: {outcome.metrics_path}")
    summary = json.loads(outcome.metrics_path.read_text())
    rows = [("detector", summary), *((name, values) for name, values in (summary.get("baselines") or {}).items())]
    views = list(summary.get("auc_per_view") or {})
    for name, values in rows:
        per_view = ", ".join(f"{view} {_rounded(values['auc_per_view'].get(view))}" for view in views)
        print(f"  {name}: AUC {_rounded(values['auc'])}" + (f"; within {per_view}" if per_view else ""))
    if views:
        print(f"  view only (AP = 1): AUC {_rounded(summary.get('auc_view_only'))}; 0.5 within each view")
    if outcome.intervals is not None:
        intervals = outcome.intervals
        print(
            f"at the stored threshold {intervals.threshold:.4g}: sensitivity "
            f"{intervals.sensitivity.describe()}, specificity {intervals.specificity.describe()}, "
            f"AUC {intervals.auc.describe()} (95% intervals: Wilson for sensitivity and specificity, "
            f"bootstrap for the AUC)"
        )


def _rounded(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run_export(args: argparse.Namespace, progress: bool) -> None:
    """``export``: the checkpoint's scoring graph as ONNX."""
    from .export import export_checkpoint

    exported = export_checkpoint(args.model, args.out)
    print(f"exported the {exported.detector} scoring graph: {exported.path} ({exported.size_bytes} bytes)")


def run_split(args: argparse.Namespace, progress: bool) -> None:
    """``split``: a patient-disjoint train/val/test manifest (or the paper's split)."""
    from .data.splits import resplit_manifest, write_paper_split

    if args.paper is not None:
        written = write_paper_split(
            args.paper,
            args.out,
            labels_csv=args.input,
            seed=args.seed,
            view=args.view,
            image_root=args.images,
            class_info_csv=args.class_info,
            headers_csv=args.headers,
            on_missing="skip" if args.skip_missing_images else "error",
        )
        films = written.summary.films
    else:
        films = resplit_manifest(
            args.input, args.out, seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction
        ).summary.films
    counts = ", ".join(
        f"{name} {films.get((name, 0), 0)} normal + {films.get((name, 1), 0)} abnormal"
        for name in ("train", "val", "test")
    )
    print(f"patient-disjoint split written to {args.out}: {counts}")


def run_reproduce(args: argparse.Namespace, progress: bool) -> None:
    """``reproduce``: the paper's Table 1 with baselines."""
    from .jobs.reproduce import ReproduceOptions, reproduce_job

    config = load_config(args.config, base=preset_config(args.preset)) if args.config else preset_config(args.preset)
    train_changes = {
        key: value
        for key, value in (("epochs", args.epochs), ("device", args.device), ("precision", args.precision))
        if value is not None
    }
    if train_changes:
        config = with_overrides(config, "train", **train_changes)
    options = ReproduceOptions(
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        seeds=tuple(range(args.seeds)),
        split=args.split_strategy,
        split_seed=args.split_seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        view=args.view,
        max_train_normals=args.max_train_normals,
    )
    outcome = reproduce_job(
        args.data, args.out, config, options, on_bad_file=args.on_bad_file, cache_dir=args.cache_dir, progress=progress
    )
    print(outcome.table_md.read_text())
    print(
        f"{len(outcome.cells_run)} cells run, {len(outcome.cells_skipped)} reused; "
        f"table: {outcome.table_md}, figures: {outcome.roc_path}, {outcome.figure2_path}"
    )


def run_benchmark(args: argparse.Namespace, progress: bool) -> None:
    """``benchmark``: every method and seed against the baselines on test collections."""
    from .jobs.benchmark import BenchmarkOptions, benchmark_configs, benchmark_job, parse_test_collections

    configs = benchmark_configs(args.config, epochs=args.epochs, device=args.device, precision=args.precision)
    options = BenchmarkOptions(
        methods=tuple(method.strip() for method in args.methods.split(",") if method.strip()),
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        max_train_normals=args.max_train_normals,
        bootstrap_resamples=args.bootstrap_resamples,
    )
    outcome = benchmark_job(
        args.train,
        parse_test_collections(args.test),
        args.out,
        configs,
        options,
        on_bad_file=args.on_bad_file,
        cache_dir=args.cache_dir,
        progress=progress,
    )
    print(outcome.table_md.read_text())
    print(
        f"{len(outcome.cells_run)} cells run, {len(outcome.cells_reused)} reused; table: "
        f"{outcome.table_md}; figures: {', '.join(str(path) for path in outcome.roc_paths.values())} "
        f"and {len(outcome.film_grids)} film grids"
    )


HANDLERS: dict[str, Callable[[argparse.Namespace, bool], None]] = {
    "train": run_train,
    "score": run_score,
    "calibrate": run_calibrate,
    "serve": run_serve,
    "evaluate": run_evaluate,
    "export": run_export,
    "split": run_split,
    "reproduce": run_reproduce,
    "benchmark": run_benchmark,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cxr-anomaly``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    progress = not getattr(args, "no_progress", False)  # serve has no progress bars
    outputs = output_paths(args)
    created = new_folders([output.path for output in outputs if output.kind == "folder"])
    succeeded = False
    try:
        for output in outputs:  # minutes of scoring must not end on an unwritable path
            check_output_path(output)
        args.handler(args, progress)
        succeeded = True
    except (CxrAnomalyError, ValueError) as error:
        logger.error("%s", " ".join(str(error).split()))  # one line, even where torch's text has many
        return 2
    except OSError as error:  # a write that failed after the checks (disk full, a folder removed)
        logger.error("%s", describe_os_error(error))
        return 2
    except ModuleNotFoundError as error:  # an optional extra that is not installed
        hint = missing_extra_hint(error, args.command)
        if hint is None:
            raise
        logger.error("%s", hint)
        return 2
    finally:
        if not succeeded:  # a failed train or evaluate leaves no empty --out behind
            remove_if_empty(created)
    return 0


if __name__ == "__main__":
    sys.exit(main())
