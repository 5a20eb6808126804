"""Command-line interface: argument parsing and one short handler a command; the work is done in
:mod:`cxr_anomaly.jobs` and the modules they name.

Run ``cxr-anomaly COMMAND --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from collections.abc import Callable, Sequence

from ..cli_checks import (
    check_output_path,
    describe_os_error,
    missing_extra_hint,
    new_folders,
    output_paths,
    remove_if_empty,
)
from ..errors import CxrAnomalyError
from ..pacs.cli import add_pacs_commands
from ..version import __version__
from .common import add_data_options, introduction, training_config
from .fitting import (
    add_calibrate_command,
    add_evaluate_command,
    add_split_command,
    add_train_command,
    run_calibrate,
    run_evaluate,
    run_split,
    run_train,
)
from .research import add_benchmark_command, add_reproduce_command, run_benchmark, run_reproduce
from .scoring import add_export_command, add_score_command, add_serve_command, run_export, run_score, run_serve

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


__all__ = ["build_parser", "main", "training_config", "add_data_options"]
