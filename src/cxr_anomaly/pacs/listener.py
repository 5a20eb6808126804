"""A DICOM storage SCP (pynetdicom) that keeps each chest film durably before acknowledging it.

A C-STORE request is received in chunks to a temporary file (pynetdicom's
``STORE_RECV_CHUNKED_DATASET``), so a large instance never sits whole in memory. Its header alone
is then checked: the SOP class (CR or DX image storage; anything else is answered 0x0122, "SOP
class not supported"), one frame, declared sides within the limit, a file within the byte
budget. An accepted film is copied into the spool with fsync and recorded in the
:class:`~cxr_anomaly.pacs.store.FilmStore` before the status 0x0000 goes back, so a film the
sender saw acknowledged survives ``kill -9``. A resend of a known SOP Instance UID is
acknowledged and ignored. Scoring happens elsewhere (:mod:`cxr_anomaly.pacs.worker`).

Every refusal is a DICOM status and one log line naming the instance UID (never a patient
field); pynetdicom's own loggers are kept at WARNING, since its debug output dumps data sets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spool import Spool
from .store import FilmStore

logger = logging.getLogger(__name__)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
FILM_SOP_CLASSES: frozenset[str] = frozenset({CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING})

STATUS_SUCCESS = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_TOO_MANY_FRAMES = 0xC211
STATUS_TOO_LARGE = 0xC212
STATUS_PROCESSING_FAILURE = 0x0110

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
DEFAULT_MAX_SIDE = 8192
DEFAULT_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class ListenerSettings:
    """How the storage SCP listens and what it accepts.

    Attributes:
        ae_title: this application entity's title (the one senders address).
        host: the address to bind (``0.0.0.0`` for every interface).
        port: the TCP port.
        network_timeout: seconds without traffic before an association is aborted (stalled peers).
        max_associations: associations served at once; more are rejected by pynetdicom.
        allowed_callers: the calling AE titles accepted (an association from any other is
            rejected); empty: any.
    """

    ae_title: str = "CXRANOMALY"
    host: str = "127.0.0.1"
    port: int = 11112
    network_timeout: float = 30.0
    max_associations: int = 16
    allowed_callers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= len(self.ae_title) <= 16 or not self.ae_title.isascii() or "\\" in self.ae_title:
            raise ValueError(f"ae_title={self.ae_title!r}: an AE title is 1 to 16 ASCII characters without '\\'")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: expected 0 to 65535")
        if self.network_timeout <= 0 or self.max_associations < 1:
            raise ValueError(
                f"network_timeout={self.network_timeout}, max_associations={self.max_associations}: "
                "both must be positive"
            )


@dataclass(frozen=True)
class HeaderCheck:
    """What the header of a received instance says, once it passed the checks.

    Attributes:
        sop_instance_uid, sop_class_uid, study_instance_uid: the instance's identity.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str


class RefusedInstance(Exception):
    """A received instance the listener will not keep; ``status`` goes back to the sender."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_received_header(path: Path, *, max_side: int, max_bytes: int) -> HeaderCheck:
    """Check a received instance from its header alone (pixel data is not read).

    Raises:
        RefusedInstance: with the DICOM status to answer and a reason that quotes no header value
            other than UIDs, SOP classes and sizes.
    """
    import pydicom

    size = path.stat().st_size
    if size > max_bytes:
        raise RefusedInstance(STATUS_OUT_OF_RESOURCES, f"{size} bytes; the limit is {max_bytes}")
    try:
        syntax = str(pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID", "") or "")
        if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:  # never negotiated; refused before any inflating
            raise RefusedInstance(STATUS_DATASET_MISMATCH, "deflated transfer syntax")
        # Values over 1 KiB (the pixel data) stay on disk until asked for, so this reads the header only.
        dataset = pydicom.dcmread(path, defer_size=1024, force=True)
        sop_class = str(dataset.get("SOPClassUID", "") or "")
        sop_instance = str(dataset.get("SOPInstanceUID", "") or "")
        study = str(dataset.get("StudyInstanceUID", "") or "")
        rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
        frames = int(str(dataset.get("NumberOfFrames", 1) or 1))
        has_pixels = "PixelData" in dataset
        native_bytes = _native_pixel_bytes(dataset, rows, columns, frames)
    except RefusedInstance:
        raise
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for damaged or hostile headers
        raise RefusedInstance(STATUS_CANNOT_UNDERSTAND, f"unreadable header ({type(error).__name__})") from None
    if sop_class not in FILM_SOP_CLASSES:
        raise RefusedInstance(
            STATUS_SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class or '(none)'} is not CR or DX image storage"
        )
    if not sop_instance or not study:
        raise RefusedInstance(STATUS_DATASET_MISMATCH, "no SOPInstanceUID or StudyInstanceUID")
    if frames != 1:
        raise RefusedInstance(STATUS_TOO_MANY_FRAMES, f"{frames} frames; a chest film has one")
    if not 1 <= rows <= max_side or not 1 <= columns <= max_side:
        raise RefusedInstance(STATUS_TOO_LARGE, f"{columns}x{rows} pixels; each side must be 1 to {max_side}")
    if not has_pixels:
        raise RefusedInstance(STATUS_DATASET_MISMATCH, "no pixel data")
    if native_bytes is not None and size < native_bytes:
        raise RefusedInstance(
            STATUS_DATASET_MISMATCH, f"{size} bytes received; the uncompressed pixel data alone declares {native_bytes}"
        )
    return HeaderCheck(sop_instance, sop_class, study)


def _native_pixel_bytes(dataset: Any, rows: int, columns: int, frames: int) -> int | None:
    """Bytes the pixel data must hold in an uncompressed transfer syntax; None for compressed ones."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed:
        return None
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    bits = int(dataset.get("BitsAllocated", 8) or 8)
    return rows * columns * frames * samples * ((bits + 7) // 8)


class FilmIntake:
    """Keeps a checked instance: into the spool, then into the store, then wakes the scorer.

    Args:
        store: the durable film store.
        spool: where received instances are kept.
        on_received: called (without arguments) after a new film is recorded.
        max_side: the largest accepted Rows or Columns.
        max_bytes: the largest accepted instance, in bytes as received.
    """

    def __init__(
        self,
        store: FilmStore,
        spool: Spool,
        on_received: Callable[[], None],
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.store = store
        self.spool = spool
        self.on_received = on_received
        self.max_side = max_side
        self.max_bytes = max_bytes

    def check(self, received: Path) -> HeaderCheck:
        """:func:`check_received_header` with this intake's limits."""
        return check_received_header(received, max_side=self.max_side, max_bytes=self.max_bytes)

    def keep(self, received: Path, header: HeaderCheck, *, source: str) -> int:
        """Copy a checked instance into the spool and record it; a resend is only counted."""
        if self.store.knows(header.sop_instance_uid):
            self.store.record_received(
                header.sop_instance_uid, header.sop_class_uid, header.study_instance_uid, "", source
            )
            logger.info("film %s: received again, already kept; no second result", header.sop_instance_uid)
            return STATUS_SUCCESS
        kept = self.spool.keep(received, header.sop_instance_uid)
        if self.store.record_received(
            header.sop_instance_uid, header.sop_class_uid, header.study_instance_uid, kept, source
        ):
            logger.info("film %s: received and kept", header.sop_instance_uid)
        self.on_received()
        return STATUS_SUCCESS


class StorageListener:
    """The storage SCP: checks each received instance and hands films to the intake.

    Args:
        settings: where and how to listen.
        intake: keeps accepted films.
    """

    def __init__(self, settings: ListenerSettings, intake: FilmIntake) -> None:
        self.settings = settings
        self.intake = intake
        self._server: Any = None

    def handle_store(self, event: Any) -> int:
        """pynetdicom's ``EVT_C_STORE`` handler: check, keep, record, then acknowledge."""
        received = Path(event.dataset_path)
        try:
            header = self.intake.check(received)
        except RefusedInstance as refusal:
            uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "(unknown)")
            logger.warning("refused instance %s: %s (status 0x%04X)", uid, refusal.reason, refusal.status)
            return refusal.status
        try:
            return self.intake.keep(received, header, source="c-store")
        except OSError as error:
            logger.error(
                "instance %s: cannot keep it (%s); answered out of resources",
                header.sop_instance_uid,
                type(error).__name__,
            )
            return STATUS_OUT_OF_RESOURCES

    def start(self) -> None:
        """Start serving in pynetdicom's background threads."""
        from pynetdicom import (
            AE,
            ALL_TRANSFER_SYNTAXES,
            AllStoragePresentationContexts,
            _config,
            evt,
        )

        _config.STORE_RECV_CHUNKED_DATASET = True  # received instances go to disk, not memory
        for name in ("pynetdicom", "pynetdicom.events", "pynetdicom.assoc", "pynetdicom.acse", "pynetdicom.dimse"):
            logging.getLogger(name).setLevel(logging.WARNING)
        application = AE(ae_title=self.settings.ae_title)
        application.network_timeout = self.settings.network_timeout
        application.acse_timeout = self.settings.network_timeout
        application.dimse_timeout = self.settings.network_timeout
        application.maximum_associations = self.settings.max_associations
        if self.settings.allowed_callers:
            application.require_calling_aet = list(self.settings.allowed_callers)
        # Every storage class is negotiated so that a non-film instance gets a C-STORE status
        # (0x0122) and a log line, instead of a silent presentation-context rejection.
        # Deflated data sets are not negotiated: inflating one is unbounded before any check.
        syntaxes = [syntax for syntax in ALL_TRANSFER_SYNTAXES if syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN]
        for context in AllStoragePresentationContexts:
            application.add_supported_context(context.abstract_syntax, syntaxes)
        application.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_ABORTED, _log_abort),
            (evt.EVT_CONN_OPEN, _time_out_stalled_peers),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
        ]
        self._server = application.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )
        logger.info("listening for DICOM as %s on %s:%d", self.settings.ae_title, self.settings.host, self.port)

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting associations and close the server."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _time_out_stalled_peers(event: Any) -> None:
    """Give an accepted connection's socket the network timeout: accepted sockets do not inherit the
    listening one's, so a peer that stops mid-PDU would otherwise hold its thread forever."""
    connection = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if connection is not None:
        connection.settimeout(event.assoc.network_timeout)


def _log_abort(event: Any) -> None:
    address = getattr(getattr(event.assoc, "requestor", None), "address", "?")
    logger.warning("association from %s aborted (timeout or peer abort)", address)
