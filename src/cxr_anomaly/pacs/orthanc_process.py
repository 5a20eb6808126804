"""A throwaway Orthanc on loopback, for the listener's tests and throughput benchmark.

Debian's ``Orthanc`` is started with its own configuration and storage folder (nothing outside
that folder is touched) and a ``cxr`` C-STORE peer pointing at the listener's port; the DICOMweb
plugin is loaded where installed. Never for production: it has no authentication.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLUGIN_FOLDER = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGIN_FOLDER / "libOrthancDicomWeb.so"


class OrthancUnavailableError(RuntimeError):
    """The ``Orthanc`` program is not installed, or did not start."""


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class OrthancProcess:
    """A running Orthanc.

    Attributes:
        url: its REST root on loopback.
        dicom_port: its DICOM port (AE title ``ORTHANC``).
        listener_port: the port its ``cxr`` peer (AE title ``CXRANOMALY``) is expected on.
        process: the server process.
    """

    url: str
    dicom_port: int
    listener_port: int
    process: subprocess.Popen

    def get(self, path: str) -> bytes:
        """GET a REST path."""
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return response.read()

    def post(self, path: str, body: bytes, content_type: str = "application/dicom") -> Any:
        """POST to a REST path and parse the JSON reply."""
        request = urllib.request.Request(
            self.url + path, data=body, headers={"Content-Type": content_type}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read() or b"null")

    def post_json(self, path: str, value: Any) -> Any:
        """POST a JSON body."""
        return self.post(path, json.dumps(value).encode(), "application/json")

    def instances_of(self, modality: str) -> list[str]:
        """Orthanc IDs of the instances whose series has this modality (``SR``, ``OT``...)."""
        return list(self.post_json("/tools/find", {"Level": "Instance", "Query": {"Modality": modality}}))

    def stop(self) -> None:
        """Terminate the server (killed after 15 s)."""
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_orthanc(folder: Path, *, startup_timeout: float = 30.0) -> OrthancProcess:
    """Start Orthanc with its storage and log in ``folder``.

    Raises:
        OrthancUnavailableError: not installed, or no answer within ``startup_timeout``.
    """
    binary = shutil.which("Orthanc")
    if binary is None:
        raise OrthancUnavailableError(
            "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb; make pacs-server)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port, listener_port = free_port(), free_port(), free_port()
    config = {
        "Name": "cxr-anomaly-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"cxr": ["CXRANOMALY", "127.0.0.1", listener_port]},
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "OverwriteInstances": True,
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 2,
        "HttpTimeout": 60,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    with (folder / "orthanc.log").open("wb") as log:
        process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = OrthancProcess(f"http://127.0.0.1:{http_port}", dicom_port, listener_port, process)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        try:
            server.get("/system")
            return server
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    server.stop()
    raise OrthancUnavailableError(
        f"Orthanc did not answer within {startup_timeout:.0f} s; see {folder / 'orthanc.log'}"
    )
