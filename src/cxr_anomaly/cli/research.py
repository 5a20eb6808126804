"""``reproduce`` and ``benchmark``: the paper's experiment and the cross-collection benchmark."""

from __future__ import annotations

import argparse
import logging
import textwrap
from pathlib import Path

from ..config import (
    DEFAULT_METHOD,
    family_settings,
    load_config,
    methods,
    paper_method,
    preset_config,
    with_overrides,
)
from .common import add_data_options, method_list

logger = logging.getLogger("cxr_anomaly")


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


def benchmark_description() -> str:
    """The long description of ``cxr-anomaly benchmark --help``: what it writes, and the method rows."""
    return """\
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
    )


def add_benchmark_command(commands: argparse._SubParsersAction) -> None:
    """``cxr-anomaly benchmark``: fit methods on one collection's normals and test them on several, per view."""
    benchmark = commands.add_parser(
        "benchmark",
        help="fit methods on one collection's normals and test them on several, per view",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=benchmark_description(),
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


def run_reproduce(args: argparse.Namespace, progress: bool) -> None:
    """``reproduce``: the paper's Table 1 with baselines."""
    from ..jobs.reproduce import ReproduceOptions, reproduce_job

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
    from ..jobs.benchmark import BenchmarkOptions, benchmark_configs, benchmark_job, parse_test_collections

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
