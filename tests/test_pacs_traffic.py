"""The storage SCP against bad traffic: each refused with a DICOM status and a log line, and it keeps serving.

The listener runs in this process on a free loopback port (no Orthanc needed); a pynetdicom SCU
sends real films and hostile ones. Received films carry fake patient identifiers that no log
record may contain, under 16 concurrent associations too.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynetdicom", reason="the listener needs the pacs extra: pip install 'cxr-anomaly[pacs]'")

from cxr_anomaly.pacs.listener import (  # noqa: E402 - after the skip above
    STATUS_DATASET_MISMATCH,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    STATUS_SUCCESS,
    STATUS_TOO_LARGE,
    STATUS_TOO_MANY_FRAMES,
    FilmIntake,
    ListenerSettings,
    StorageListener,
)
from cxr_anomaly.pacs.spool import Spool  # noqa: E402
from cxr_anomaly.pacs.store import FilmStore  # noqa: E402

PATIENT_ID = "PHI-TRAFFIC-4711"
PATIENT_NAME = "Secret^Person"


@dataclass
class RunningScp:
    listener: StorageListener
    store: FilmStore
    wakes: list[int]


@pytest.fixture()
def scp(tmp_path: Path) -> Iterator[RunningScp]:
    store = FilmStore(tmp_path / "films.sqlite")
    wakes: list[int] = []
    intake = FilmIntake(store, Spool(tmp_path / "spool"), lambda: wakes.append(1), max_side=4096)
    listener = StorageListener(ListenerSettings(port=0, network_timeout=2.0, max_associations=20), intake)
    listener.start()
    try:
        yield RunningScp(listener, store, wakes)
    finally:
        listener.stop()
        store.close()


@pytest.fixture(scope="module")
def real_film(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real NIH film as a 12-bit DX DICOM with fake patient identifiers."""
    from cxr_anomaly.pacs.testing import film_dataset_from_png

    dataset = film_dataset_from_png(
        shared_data / "nih_fullres" / _first_png(shared_data / "nih_fullres"),
        patient_id=PATIENT_ID,
        study_uid=None,
        bits=12,
    )
    dataset.PatientName = PATIENT_NAME
    path = tmp_path_factory.mktemp("traffic") / "film.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def _first_png(folder: Path) -> str:
    import pandas as pd

    return str(pd.read_csv(folder / "manifest.csv")["path"].iloc[0])


def send(port: int, dataset_or_path: object, sop_class: str) -> int:
    """C-STORE one data set (or a file's raw bytes) and return the status (-1: no association)."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    application = AE(ae_title="TESTSCU")
    application.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    association = application.associate("127.0.0.1", port, ae_title="CXRANOMALY")
    if not association.is_established:
        return -1
    try:
        status = association.send_c_store(dataset_or_path)
        return int(status.Status) if "Status" in status else -1
    finally:
        association.release()


def film_like(real_film: Path, **changes: object):
    import pydicom

    dataset = pydicom.dcmread(real_film)
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    return dataset


def test_a_film_is_kept_then_a_resend_is_only_counted(scp: RunningScp, real_film: Path) -> None:
    import pydicom

    dataset = pydicom.dcmread(real_film)
    assert send(scp.listener.port, dataset, str(dataset.SOPClassUID)) == STATUS_SUCCESS
    assert send(scp.listener.port, dataset, str(dataset.SOPClassUID)) == STATUS_SUCCESS
    films = scp.store.films()
    assert len(films) == 1 and films[0].times_received == 2 and films[0].state == "received"
    assert Path(films[0].path).is_file() and pydicom.dcmread(films[0].path).SOPInstanceUID == dataset.SOPInstanceUID
    assert len(scp.wakes) == 1  # the resend woke nobody


def test_hostile_instances_are_refused_with_a_status_and_a_log_line(
    scp: RunningScp, real_film: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pydicom.uid import generate_uid

    port = scp.listener.port
    caplog.set_level(logging.INFO)
    # a non-image SOP class (Basic Text SR)
    report = film_like(real_film, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11", SOPInstanceUID=generate_uid())
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    assert send(port, report, report.SOPClassUID) == STATUS_SOP_CLASS_NOT_SUPPORTED
    # 300 frames
    frames = film_like(real_film, SOPInstanceUID=generate_uid(), NumberOfFrames=300)
    assert send(port, frames, frames.SOPClassUID) == STATUS_TOO_MANY_FRAMES
    # sides over the limit, declared in the header (the pixel data is short)
    huge = film_like(real_film, SOPInstanceUID=generate_uid(), Rows=65535, Columns=65535)
    assert send(port, huge, huge.SOPClassUID) == STATUS_TOO_LARGE
    # a truncated file: sent as raw bytes, so the listener gets a data set cut mid-element
    from pynetdicom import _config

    whole = real_film.read_bytes()
    statuses = []
    for cut in (900, int(len(whole) * 0.9)):  # inside the header; inside the pixel data
        truncated = tmp_path / f"truncated{cut}.dcm"
        truncated.write_bytes(whole[:cut])
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            statuses.append(send(port, truncated, film_like(real_film).SOPClassUID))
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
    assert statuses == [STATUS_DATASET_MISMATCH, STATUS_DATASET_MISMATCH]
    assert scp.store.films() == []
    refusals = [record.getMessage() for record in caplog.records if "refused instance" in record.getMessage()]
    assert len(refusals) == 5, refusals
    # and it still serves a film
    dataset = film_like(real_film)
    assert send(port, dataset, dataset.SOPClassUID) == STATUS_SUCCESS


def test_a_stalled_association_is_cut_and_the_listener_keeps_serving(scp: RunningScp, real_film: Path) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", scp.listener.port), timeout=15) as stalled:
        stalled.sendall(b"\x01\x00")  # the first bytes of an A-ASSOCIATE-RQ, then nothing
        while stalled.recv(1024):  # an A-ABORT may come first; the close ends the loop
            pass
    waited = time.monotonic() - started
    assert waited < 10, f"the stalled association was kept {waited:.1f} s (timeout 2 s)"
    dataset = film_like(real_film)
    assert send(scp.listener.port, dataset, dataset.SOPClassUID) == STATUS_SUCCESS


def test_sixteen_concurrent_associations_keep_patient_identifiers_out_of_the_logs(
    scp: RunningScp, real_film: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pydicom.uid import generate_uid

    caplog.set_level(logging.DEBUG)
    statuses: list[int] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        dataset = film_like(real_film, SOPInstanceUID=generate_uid())
        if index % 4 == 3:  # a quarter of them hostile
            dataset.NumberOfFrames = 300
        status = send(scp.listener.port, dataset, dataset.SOPClassUID)
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == sorted([STATUS_SUCCESS] * 12 + [STATUS_TOO_MANY_FRAMES] * 4)
    assert len(scp.store.films()) == 12
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert PATIENT_ID not in text and "Secret" not in text and "TEST^" not in text
    assert np.sum(["received and kept" in record.getMessage() for record in caplog.records]) == 12


def test_a_deflated_instance_is_refused_before_inflating(real_film: Path, tmp_path: Path) -> None:
    """Deflate is never negotiated; a deflated file reaching the check (the Orthanc feed) is refused."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from cxr_anomaly.pacs.listener import RefusedInstance, check_received_header

    dataset = pydicom.dcmread(real_film)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = tmp_path / "deflated.dcm"
    dataset.save_as(deflated, enforce_file_format=True)
    with pytest.raises(RefusedInstance, match="deflated") as refused:
        check_received_header(deflated, max_side=4096, max_bytes=1 << 30)
    assert refused.value.status == STATUS_DATASET_MISMATCH
    assert check_received_header(real_film, max_side=4096, max_bytes=1 << 30).sop_instance_uid == dataset.SOPInstanceUID


def test_only_allowed_callers_are_accepted(tmp_path: Path, real_film: Path) -> None:
    import pydicom

    store = FilmStore(tmp_path / "films.sqlite")
    intake = FilmIntake(store, Spool(tmp_path / "spool"), lambda: None)
    listener = StorageListener(ListenerSettings(port=0, allowed_callers=("MODALITY1",)), intake)
    listener.start()
    try:
        dataset = pydicom.dcmread(real_film)
        assert send(listener.port, dataset, dataset.SOPClassUID) == -1  # TESTSCU is not allowed
        assert store.films() == []
    finally:
        listener.stop()
        store.close()
