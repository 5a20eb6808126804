"""The ``listen`` and ``worklist`` commands of ``cxr-anomaly`` (the PACS side).

Their modules import pynetdicom and highdicom lazily, so ``cxr-anomaly --help`` works without
the ``pacs`` extra; running either command without it fails in one line naming the extra.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ..errors import CxrAnomalyError

PACS_EXTRA_HINT = "pip install 'cxr-anomaly[pacs]'"


class MissingExtraError(CxrAnomalyError):
    """An optional package a command needs is not installed."""


def require_pacs_packages(command: str) -> None:
    """Raise :class:`MissingExtraError` in one line when pynetdicom or highdicom is missing."""
    missing = [name for name in ("pynetdicom", "highdicom") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"{command} needs {' and '.join(missing)}: {PACS_EXTRA_HINT}")


def add_pacs_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``listen`` and ``worklist`` to the CLI's subcommands."""
    add_listen_command(commands)
    add_worklist_command(commands)


def add_listen_command(commands: argparse._SubParsersAction) -> None:
    """Add ``listen`` (the DICOM storage SCP and Orthanc follower) to the CLI's subcommands."""
    listen = commands.add_parser(
        "listen",
        help="receive films over DICOM (C-STORE, or an Orthanc's feed), score them, send results back",
        description="A DICOM storage SCP for CR and DX films. Each film is kept durably before it is "
        "acknowledged, scored, and answered with a Structured Report and a heatmap Secondary "
        "Capture in the same study, sent by C-STORE (--send-to) or STOW-RS (--orthanc). "
        "State (films.sqlite, spool/) lives in --store; a restart scores what was left.",
    )
    listen.add_argument("--model", required=True, type=Path, metavar="CKPT", help="checkpoint (model.pt) or *.onnx")
    listen.add_argument("--ae-title", default="CXRANOMALY", help="this listener's AE title (default CXRANOMALY)")
    listen.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    listen.add_argument(
        "--port",
        type=int,
        default=None,
        help="DICOM port to listen on, e.g. 11112 (default: none, with --orthanc only)",
    )
    listen.add_argument(
        "--store",
        type=Path,
        default=Path("cxr-listener"),
        metavar="DIR",
        help="state folder: films.sqlite, spool/, thumbnails/ (default ./cxr-listener)",
    )
    listen.add_argument(
        "--send-to", default=None, metavar="AE_TITLE@HOST:PORT", help="C-STORE the results to this application entity"
    )
    listen.add_argument(
        "--orthanc",
        default=None,
        metavar="URL",
        help="follow this Orthanc's change feed for new films (REST API), and STOW-RS the "
        "results to its DICOMweb root (URL/dicom-web) unless --send-to is given",
    )
    listen.add_argument("--poll-seconds", type=float, default=1.0, help="change-feed poll interval (default 1 s)")
    listen.add_argument(
        "--timeout", type=float, default=30.0, help="seconds of silence before an association is aborted (default 30)"
    )
    listen.add_argument("--max-associations", type=int, default=16, help="associations at once (default 16)")
    listen.add_argument(
        "--allow-caller",
        action="append",
        default=[],
        metavar="AE_TITLE",
        help="accept associations only from this calling AE title (repeatable; default: any)",
    )
    listen.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    listen.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto (default: bf16 where the device has it natively), fp32 or bf16",
    )
    listen.set_defaults(handler=run_listen)


def add_worklist_command(commands: argparse._SubParsersAction) -> None:
    """Add ``worklist`` (the ranked worklist of a listener's store) to the CLI's subcommands."""
    worklist = commands.add_parser(
        "worklist",
        help="write the ranked worklist (HTML and CSV) of the films a listener received",
        description="Reads the listener's store (--store) and writes the worklist: in-scope films ranked by "
        "score, out-of-scope and failed films listed apart, none left out.",
    )
    worklist.add_argument(
        "--store",
        type=Path,
        default=Path("cxr-listener"),
        metavar="DIR",
        help="the listener's state folder (default ./cxr-listener)",
    )
    worklist.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="HTML",
        help="the HTML report to write (and a CSV of the same rows beside it)",
    )
    worklist.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="CKPT",
        help="the listener's model, to state its operating point in the summary",
    )
    worklist.set_defaults(handler=run_worklist)


def run_listen(args: argparse.Namespace, progress: bool) -> None:
    """``listen``: serve until interrupted."""
    require_pacs_packages("listen")
    from .listener import ListenerSettings
    from .service import ListenOptions, listen_until_stopped

    settings = (
        None
        if args.port is None
        else ListenerSettings(
            ae_title=args.ae_title,
            host=args.host,
            port=args.port,
            network_timeout=args.timeout,
            max_associations=args.max_associations,
            allowed_callers=tuple(args.allow_caller),
        )
    )
    options = ListenOptions(
        model=args.model,
        state_folder=args.store,
        listener=settings,
        send_to=args.send_to,
        orthanc_url=args.orthanc,
        poll_interval=args.poll_seconds,
        device=args.device,
        precision=args.precision,
    )
    listen_until_stopped(options)


def run_worklist(args: argparse.Namespace, progress: bool) -> None:
    """``worklist``: the HTML and CSV worklist of a listener's store."""
    from .worklist import write_store_worklist

    calibration = None
    if args.model is not None:
        from ..jobs.score import load_scoring_model

        calibration = load_scoring_model(args.model).calibration
    write_store_worklist(args.store, args.out, calibration=calibration)
