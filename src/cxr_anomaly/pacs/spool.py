"""Where the listener keeps received instances: one file per SOP Instance UID, written durably.

File names are a hash of the UID (UIDs are long and reach 64 characters; a hash keeps names
fixed-length and spreads them over 256 folders). A file is written through :func:`cxr_anomaly.files.atomic_write`
(temporary name, fsync, rename, folder fsync): after a crash a kept film is whole or absent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..files import atomic_write


class Spool:
    """A folder of received instances.

    Args:
        folder: created if missing.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, sop_instance_uid: str) -> Path:
        """Where the instance of this UID is kept."""
        digest = hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.dcm"

    def keep(self, received: Path, sop_instance_uid: str) -> Path:
        """Copy a received file into the spool durably and return its new path."""
        target = self.path_for(sop_instance_uid)
        with received.open("rb") as source:
            atomic_write(target, lambda stream: shutil.copyfileobj(source, stream, 1 << 20))
        return target

    def keep_bytes(self, data: bytes, sop_instance_uid: str) -> Path:
        """Write received bytes into the spool durably (the DICOMweb path) and return the path."""
        handle, temporary = tempfile.mkstemp(prefix=".incoming.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            return self.keep(Path(temporary), sop_instance_uid)
        finally:
            Path(temporary).unlink(missing_ok=True)
