"""No header text in the service's logs under load (issue 13 point 7).

pydicom reports invalid header values both as a warning and as a record of its ``pydicom``
logger, quoting the value. Concurrent DICOM uploads of a real NIH film whose headers carry a
patient name in fields that pydicom validates (a code string, a date) must not put that name in
any log record, warning, stderr line or response.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxr_anomaly.serve import ServiceSettings, create_app, start_background_server

PATIENT = "Kowalska^Zofia"
THREADS = 12
UPLOADS_PER_THREAD = 3


def hostile_dicom(film: np.ndarray, *, broken: bool) -> bytes:
    """A DX film whose name also sits in a header value that pydicom quotes in its warnings."""
    import io

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.set_pixel_data(film, photometric_interpretation="MONOCHROME2", bits_stored=8)
    with disable_value_validation():  # pydicom would warn and log while the test builds the file
        dataset.PatientName = PATIENT
        # pydicom quotes a Specific Character Set it does not know ("Unknown encoding '...'")
        # each time it decodes a text element, such as the name when an error is scrubbed.
        dataset.SpecificCharacterSet = PATIENT
        if broken:
            dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 3]
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile_uploads(shared_data: Path) -> dict[bool, bytes]:
    """A whole and a truncated (broken) hostile DICOM of a real NIH film (256x256), by ``broken``.

    Built in a fixture: writing the unknown character set makes pydicom warn and log too, and
    that must not be mistaken for the service's output.
    """
    with Image.open(shared_data / "nih_fullres" / "00000427_000.png") as image:
        film = np.ascontiguousarray(np.asarray(image.convert("L"), dtype=np.uint8)[::4, ::4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {broken: hostile_dicom(film, broken=broken) for broken in (False, True)}


def test_concurrent_dicom_uploads_never_log_the_patient_name(
    tiny_nih_model,
    hostile_uploads: dict[bool, bytes],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    uploads = hostile_uploads
    caplog.set_level(logging.DEBUG)
    statuses: list[int] = []
    bodies: list[str] = []
    failures: list[BaseException] = []
    # Record every warning that gets past the filters; entered before any thread starts and left
    # after they all end, so this catch_warnings is not itself racing.
    with warnings.catch_warnings(record=True) as escaped:
        server = start_background_server(create_app(tiny_nih_model.checkpoint, ServiceSettings()))
        try:
            start = threading.Barrier(THREADS)

            def upload(index: int) -> None:
                try:
                    with httpx.Client(base_url=server.url, timeout=120) as client:
                        start.wait()
                        for round_ in range(UPLOADS_PER_THREAD):
                            data = uploads[(index + round_) % 2 == 1]
                            response = client.post(
                                "/v1/score", content=data, headers={"content-type": "application/dicom"}
                            )
                            statuses.append(response.status_code)
                            bodies.append(response.text)
                except BaseException as error:  # reported below; a thread must not die silently
                    failures.append(error)

            threads = [threading.Thread(target=upload, args=(index,)) for index in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            server.stop()
    assert not failures, failures
    assert sorted(set(statuses)) == [200, 422] and len(statuses) == THREADS * UPLOADS_PER_THREAD
    texts = [record.getMessage() for record in caplog.records] + [str(item.message) for item in escaped]
    texts += bodies + list(capfd.readouterr())
    for fragment in (PATIENT, "Kowalska", "Zofia"):
        leaks = [text for text in texts if fragment in text]
        assert not leaks, leaks[:3]
