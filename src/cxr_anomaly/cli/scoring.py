"""``score``, ``serve`` and ``export``: using a fitted detector."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..cli_checks import (
    check_port_free,
)
from ..config import (
    DEFAULT_METHOD,
    methods,
    preset_config,
)
from .common import add_data_options, method_list

logger = logging.getLogger("cxr_anomaly")


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
    from ..serve_options import add_serve_limit_options  # argparse only: --help stays fast

    add_serve_limit_options(serve)


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


def run_score(args: argparse.Namespace, progress: bool) -> None:
    """``score``: score films with a checkpoint, write the CSV and, with ``--report``, the worklist."""
    from ..jobs import score  # after parsing, so --help stays fast

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


def run_serve(args: argparse.Namespace, progress: bool) -> None:
    """``serve``: the triage service and its page."""
    check_port_free(args.host, args.port)  # before minutes of model loading, not after
    from ..serve import ServiceSettings, run_server
    from ..serve_options import serve_limit_values

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


def run_export(args: argparse.Namespace, progress: bool) -> None:
    """``export``: the checkpoint's scoring graph as ONNX."""
    from ..export import export_checkpoint

    exported = export_checkpoint(args.model, args.out)
    print(f"exported the {exported.detector} scoring graph: {exported.path} ({exported.size_bytes} bytes)")
