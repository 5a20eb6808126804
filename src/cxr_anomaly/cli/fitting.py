"""``train``, ``calibrate``, ``evaluate`` and ``split``: fitting a detector and judging it."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from ..config import (
    Config,
    family_settings,
    methods,
)
from ..errors import ConfigError
from .common import add_data_options, method_list, training_config, variant_families

logger = logging.getLogger("cxr_anomaly")


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
        "--resume-from",
        type=Path,
        default=None,
        metavar="MODEL",
        help="add the normal films of DATA to the fitted model MODEL (a features checkpoint) "
        "instead of fitting from scratch: its backbone and stored settings are kept, the one-class "
        "models are refitted on its normals and these, in time proportional to the new films, and "
        "the score is calibrated on DATA's calibration normals; only --device and --precision apply",
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


# train's options that set the configuration, which --resume-from takes from the model instead
CONFIGURATION_OPTIONS = (
    "method",
    "variant",
    "epochs",
    "seed",
    "config",
    "resume",
    "checkpoint_every_steps",
    "sync_batchnorm",
)


def run_train(args: argparse.Namespace, progress: bool) -> None:
    """``train``: fit a detector on the normal films of ``--data`` and write RUN_DIR/model.pt
    (with ``--resume-from``, add them to a fitted model)."""
    from ..jobs import train  # after parsing, so --help stays fast

    if args.resume_from is not None:
        run_add_normals(args, progress)
        return
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


def run_add_normals(args: argparse.Namespace, progress: bool) -> None:
    """``train --resume-from MODEL``: add the normal films of ``--data`` to a fitted model.

    Raises:
        ConfigError: an option that would change the stored configuration was given.
    """
    from ..jobs import train  # after parsing, so --help stays fast

    given = [name for name in CONFIGURATION_OPTIONS if getattr(args, name) not in (None, False)]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(
            f"--resume-from keeps the configuration stored in {args.resume_from}: {options} cannot change "
            "it (only --device and --precision apply); train from scratch to change it"
        )
    outcome = train.add_normals_job(
        args.resume_from,
        args.data,
        args.out,
        device=args.device,
        precision=args.precision,
        on_bad_file=args.on_bad_file,
        cache_dir=args.cache_dir,
        progress=progress,
    )
    print(
        f"added {outcome.films_added} normal images to a model trained on {outcome.previous_num_train_images} "
        f"in {outcome.seconds:.1f} s; calibrated on {outcome.num_calibration_images}; checkpoint: {outcome.checkpoint}"
    )


def run_calibrate(args: argparse.Namespace, progress: bool) -> None:
    """``calibrate``: refit a checkpoint's operating point on labelled films."""
    from ..jobs import calibrate  # after parsing, so --help stays fast

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


def run_evaluate(args: argparse.Namespace, progress: bool) -> None:
    """``evaluate``: metrics, ROC and film grid of a checkpoint on labelled films."""
    from ..jobs import evaluate  # after parsing, so --help stays fast

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


def run_split(args: argparse.Namespace, progress: bool) -> None:
    """``split``: a patient-disjoint train/val/test manifest (or the paper's split)."""
    from ..data.splits import resplit_manifest, write_paper_split

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
