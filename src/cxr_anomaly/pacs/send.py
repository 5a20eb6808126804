"""Where a film's results go: a PACS by C-STORE (pynetdicom SCU), or an Orthanc by STOW-RS.

Both send a batch of DICOM data sets and raise :class:`SendError` unless every one was stored,
so the caller records a film as returned only once its results are in the PACS.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

_AE_ADDRESS = re.compile(r"^(?P<ae>[^@\\]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


class SendError(Exception):
    """The PACS did not store a result (unreachable, refused, or a failure status)."""


class ResultSink(Protocol):
    """Stores DICOM data sets in a PACS."""

    def send(self, datasets: list[Any]) -> None:
        """Store every data set or raise :class:`SendError`."""
        ...


@dataclass(frozen=True)
class RemoteEntity:
    """A DICOM application entity to send to: ``AE_TITLE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> RemoteEntity:
        """Parse ``AE_TITLE@HOST:PORT``.

        Raises:
            ValueError: naming the text and the expected form.
        """
        match = _AE_ADDRESS.match(text.strip())
        if match is None or not 0 < int(match["port"]) <= 65535:
            raise ValueError(f"--send-to {text!r}: expected AE_TITLE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        return cls(match["ae"], match["host"], int(match["port"]))


class CStoreSink:
    """Sends results by C-STORE, one association per batch.

    Args:
        remote: the PACS's application entity.
        calling_ae_title: this side's AE title.
        timeout: seconds for the network, association and each response.
    """

    def __init__(self, remote: RemoteEntity, calling_ae_title: str, *, timeout: float = 30.0) -> None:
        self.remote = remote
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout

    def send(self, datasets: list[Any]) -> None:
        """Store each data set; raise :class:`SendError` at the first failure."""
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        application = AE(ae_title=self.calling_ae_title)
        application.network_timeout = application.acse_timeout = application.dimse_timeout = self.timeout
        for sop_class in sorted({str(dataset.SOPClassUID) for dataset in datasets}):
            application.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        association = application.associate(self.remote.host, self.remote.port, ae_title=self.remote.ae_title)
        if not association.is_established:
            raise SendError(f"no association with {self.remote.ae_title}@{self.remote.host}:{self.remote.port}")
        try:
            for dataset in datasets:
                status = association.send_c_store(dataset)
                code = getattr(status, "Status", None)
                if code is None or int(code) not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise SendError(
                        f"C-STORE of {dataset.SOPInstanceUID} answered "
                        f"{'no status' if code is None else f'0x{int(code):04X}'}"
                    )
        finally:
            association.release()


class StowSink:
    """Sends results by DICOMweb STOW-RS (``POST {base}/studies``).

    Args:
        base_url: the DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``; user and password
            in the URL are sent as HTTP basic authentication and never logged.
        timeout: seconds for the request.
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.url, self.headers = split_credentials(base_url.rstrip("/") + "/studies")
        self.timeout = timeout

    def send(self, datasets: list[Any]) -> None:
        """POST every data set in one multipart request; raise :class:`SendError` on any failure."""
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        for dataset in datasets:
            part = io.BytesIO()
            dataset.save_as(part, enforce_file_format=True)
            body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
            body.write(part.getvalue())
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode("ascii"))
        headers = {
            **self.headers,
            "Accept": "application/dicom+json",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        }
        request = urllib.request.Request(self.url, data=body.getvalue(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = response.read()
        except (urllib.error.URLError, OSError) as error:
            raise SendError(
                f"STOW-RS to {self.url} failed: {getattr(error, 'code', '')} {type(error).__name__}"
            ) from None
        failed = _failed_sop_count(reply)
        if failed:
            raise SendError(f"STOW-RS to {self.url}: the server refused {failed} of {len(datasets)} instances")


def _failed_sop_count(reply: bytes) -> int:
    """Items of the STOW-RS reply's FailedSOPSequence (0008,1198); a reply that is not JSON counts as none."""
    try:
        parsed = json.loads(reply or b"{}")
    except ValueError:
        return 0
    if isinstance(parsed, list):
        parsed = parsed[0] if parsed else {}
    return len((parsed.get("00081198") or {}).get("Value") or [])


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without ``user:password@`` and the basic-authentication header it implies."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, {}
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    token = base64.b64encode(
        f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}".encode()
    ).decode("ascii")
    return clean, {"Authorization": f"Basic {token}"}
