"""Writing files atomically and reading checkpoint files safely: the bottom of the package.

Writes are atomic (temporary file, fsync, rename): a crash never leaves a half-written file under
the final name. Checkpoint files are read with ``torch.load(weights_only=True)``, whose restricted
unpickler refuses anything but tensors and plain values, so a file from an untrusted source cannot
run code on load. This module imports nothing of the package but its errors and image sniffing, so
every layer can use it; torch only where it is needed, so that decoding starts without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import CheckpointError
from .image_base import sniff_format
from .version import __version__

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cxr-anomaly-checkpoint"
FORMAT_VERSION = 2  # bump when the layout changes incompatibly (2: several detector families)
TEMPORARY_SUFFIX = ".tmp"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(stream)`` atomically: temporary file, fsync, rename.

    A process killed at any moment leaves either the previous file or the new one under
    ``path``, never a partial one; at worst a hidden ``.NAME.*.tmp`` file remains, which
    :func:`remove_stale_temporaries` deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide the file from the group
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _current_umask() -> int:
    """The process's umask (reading it means setting it, so it is restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_torch_save(payload: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    import torch  # here: decoding workers import this module and need no torch

    atomic_write(path, lambda stream: torch.save(payload, stream))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the hidden temporary files that a killed :func:`atomic_write` left in ``folder``.

    Call it only when no other process is writing to ``folder``. Returns the deleted paths.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for candidate in folder.glob(f".*{TEMPORARY_SUFFIX}"):
            if candidate.is_file():
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
    if removed:
        logger.info("removed %d temporary files left by an interrupted write in %s", len(removed), folder)
    return removed


def read_checkpoint_payload(
    path: str | Path,
    *,
    expected_format: str = CHECKPOINT_FORMAT,
    supported_version: int = FORMAT_VERSION,
) -> dict[str, Any]:
    """Load a checkpoint's raw dictionary safely and check its format and version.

    Args:
        path: the file.
        expected_format: the ``format`` marker it must carry (a model checkpoint by default,
            or the marker of another file kind, such as a family's training state).
        supported_version: the newest layout version this package reads for that format.

    Raises:
        CheckpointError: missing file, unsafe content (a pickle that would run code), not a
            cxr-anomaly checkpoint, or a format newer than this package understands.
    """
    import torch  # here: decoding workers import this module and need no torch

    path = Path(path)
    if path.is_dir():
        inside = path / "model.pt"
        raise CheckpointError(
            path, "is a folder, not a checkpoint file" + (f" (did you mean {inside}?)" if inside.is_file() else "")
        )
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file does not exist")
    try:
        with path.open("rb") as stream:
            head = stream.read(132)  # enough for sniff_format to recognise DICOM's preamble
    except OSError as error:
        raise CheckpointError(path, f"cannot read the checkpoint: {error.strerror or error}") from error
    foreign = _describe_foreign_file(head)
    if foreign is not None:
        raise CheckpointError(path, foreign)
    try:
        with warnings.catch_warnings():
            # torch asks for an issue to be filed whenever a pickle's protocol is not the one it
            # writes; only foreign files do that, and they are refused below with a plain message.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            path,
            f"refused to load: the file holds objects other than tensors and plain values ({_unpickler_reason(error)})",
        ) from error
    except Exception as error:
        # On damaged bytes torch.load fails with whatever its reader trips over (RuntimeError,
        # KeyError, AttributeError, UnicodeDecodeError, ...): all of them mean "damaged file".
        raise CheckpointError(
            path, f"not a readable checkpoint, damaged or truncated ({type(error).__name__}: {_one_line(error)})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(path, f"not a {expected_format} file (format marker {found!r})")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > supported_version:
        raise CheckpointError(
            path,
            f"checkpoint format version {version} written by cxr-anomaly "
            f"{payload.get('package_version')} is newer than this cxr-anomaly {__version__} "
            f"understands (format version {supported_version}); upgrade cxr-anomaly",
        )
    return payload


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_PROTOCOL = b"\x80"  # the legacy torch.save format opens with a pickle PROTO opcode


def _describe_foreign_file(head: bytes) -> str | None:
    """Why a file opening with ``head`` cannot be a checkpoint, or None when it may be one.

    Recognising images and text before ``torch.load`` sees them gives the most common mistake
    (an image or a CSV passed as ``--model``) a plain answer instead of an unpickler's.
    """
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTOCOL):
        return None
    if not head:
        return "the file is empty, not a checkpoint"
    image_format = sniff_format(head)
    if image_format is not None:
        return (
            f"the file is a {image_format.upper()} image, not a checkpoint "
            "(--model takes the model.pt that `cxr-anomaly train` writes)"
        )
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return "the file is text, not a checkpoint (--model takes the model.pt that `cxr-anomaly train` writes)"
    return "not a checkpoint: the file is neither a PyTorch zip archive nor a pickle"


def _one_line(error: BaseException) -> str:
    """An exception's message on one line, shortened: torch's run over many lines."""
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The restricted unpickler's own reason, without torch's advice to turn the restriction off."""
    text = " ".join(str(error).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0].strip()
    return _one_line(RuntimeError(text))


def version_note(payload: dict[str, Any]) -> str:
    """A hint naming both versions when a file comes from another cxr-anomaly release."""
    written_by = payload.get("package_version")
    if written_by == __version__:
        return ""
    return (
        f" (the file was written by cxr-anomaly {written_by}; this is cxr-anomaly {__version__}, "
        "which does not understand it: use the version that wrote it, or retrain)"
    )


def model_version(path: str | Path) -> str:
    """``sha256:`` and the first 12 hex digits of a model file's hash: the version results name."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:12]
