"""The DICOM listener against a real Orthanc, and against bad traffic.

The Orthanc tests start Debian's ``Orthanc`` on loopback with their own configuration and storage
folder, and stop it afterwards; they skip, naming the package, where it is not installed
(``.ci/run`` installs it; ``make test`` never does). Films are real: NIH films from
``../shared/data`` written as DICOM with fake patient identifiers, which no log line may contain.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("pynetdicom", reason="the listener needs the pacs extra: pip install 'cxr-anomaly[pacs]'")
pytest.importorskip("highdicom", reason="the listener needs the pacs extra: pip install 'cxr-anomaly[pacs]'")

from cxr_anomaly.pacs.orthanc_process import (
    DICOMWEB_PLUGIN,
    OrthancProcess,
    OrthancUnavailableError,
    start_orthanc,
)

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = REPOSITORY_ROOT / "docs" / "images" / "pacs-heatmap-in-orthanc.png"
NUM_FILMS = 50
PATIENT_PREFIX = "PHI-PATIENT-"
Orthanc = OrthancProcess


def wait_until(condition, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``condition()`` until true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture()
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    """Orthanc on loopback with its own folder, stopped after the test; skipped where not installed."""
    try:
        server = start_orthanc(tmp_path / "orthanc")
    except OrthancUnavailableError as error:
        pytest.skip(str(error))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def real_films(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """50 real NIH films as 12-bit DX DICOM with fake patient identifiers, one study per patient."""
    from cxr_anomaly.pacs.testing import film_dataset_from_png

    folder = shared_data / "nih_pneumonia256"
    manifest = pd.read_csv(folder / "manifest.csv").head(NUM_FILMS)
    out = tmp_path_factory.mktemp("films")
    paths = []
    for index, row in enumerate(manifest.itertuples()):
        view = str(row.view) if str(getattr(row, "view", "")) in ("PA", "AP") else "PA"
        dataset = film_dataset_from_png(
            folder / row.path,
            patient_id=f"{PATIENT_PREFIX}{index:03d}",
            study_uid=None,
            bits=12,
            view_position=view,
            patient_age="045Y",
        )
        path = out / f"film{index:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def start_listener(model: Path, state: Path, log_path: Path, *extra: str) -> subprocess.Popen:
    """``cxr-anomaly listen`` in a subprocess, its log (stdout and stderr) appended to ``log_path``."""
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "cxr_anomaly.cli",
        "listen",
        "--model",
        str(model),
        "--store",
        str(state),
        "--precision",
        "fp32",
        *extra,
    ]
    return subprocess.Popen(command, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, env=environment)


def listener_ready(port: int) -> bool:
    """Whether a C-ECHO to the listener succeeds."""
    from pynetdicom import AE

    application = AE(ae_title="PROBE")
    application.add_requested_context("1.2.840.10008.1.1")
    association = application.associate("127.0.0.1", port, ae_title="CXRANOMALY")
    if not association.is_established:
        return False
    association.send_c_echo()
    association.release()
    return True


def store_rows(state: Path) -> list[dict]:
    """The listener's store, read as a second process would."""
    database = state / "films.sqlite"
    if not database.exists():
        return []
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM films")]
    except sqlite3.OperationalError:
        return []
    finally:
        connection.close()


def upload(orthanc: Orthanc, films: list[Path]) -> dict[str, str]:
    """Store films in Orthanc over its REST API; Orthanc ID by SOP Instance UID."""
    import pydicom

    ids = {}
    for path in films:
        reply = orthanc.post("/instances", path.read_bytes())
        ids[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = reply["ID"]
    return ids


def check_results(orthanc: Orthanc, film_uids: set[str]) -> None:
    """Exactly one SR and one heatmap per film in Orthanc, each referencing its film in its study."""
    import io

    import pydicom

    from cxr_anomaly.pacs.results import read_structured_report

    reports = orthanc.instances_of("SR")
    captures = orthanc.instances_of("OT")
    assert len(reports) == len(film_uids), f"{len(reports)} SRs in Orthanc for {len(film_uids)} films"
    assert len(captures) == len(film_uids), f"{len(captures)} heatmaps in Orthanc for {len(film_uids)} films"
    referenced = []
    for orthanc_id in reports:
        dataset = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{orthanc_id}/file")))
        reported = read_structured_report(dataset)
        assert reported.raw_score is not None and reported.decision
        referenced.append(reported.source_sop_instance_uid)
    assert sorted(referenced) == sorted(film_uids)
    for orthanc_id in captures[:5]:
        capture = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{orthanc_id}/file")))
        assert capture.SamplesPerPixel == 3 and capture.pixel_array.ndim == 3
    verify_with_dciodvfy(orthanc.get(f"/instances/{reports[0]}/file"))


def verify_with_dciodvfy(data: bytes) -> None:
    """dicom3tools' dciodvfy finds no error in an SR as Orthanc stored it (skipped where not installed)."""
    import tempfile

    binary = shutil.which("dciodvfy")
    if binary is None:
        return  # tests/test_pacs_results.py says so in a skip; the round trip still counts
    with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:
        handle.write(data)
        handle.flush()
        checked = subprocess.run([binary, handle.name], check=False, capture_output=True, text=True, timeout=60)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


def assert_no_phi(log_text: str) -> None:
    """No fake patient ID or name of the test films in a log."""
    assert PATIENT_PREFIX not in log_text, "a patient identifier reached the listener's log"
    assert "TEST^" not in log_text, "a patient name reached the listener's log"


def test_orthanc_round_trip_survives_kill_9(
    orthanc: Orthanc, real_films: list[Path], tiny_nih_model, tmp_path: Path
) -> None:
    """50 films from Orthanc by C-STORE, kill -9 mid-stream, restart: 50 SRs and 50 heatmaps, none lost or doubled."""
    state, log_path = tmp_path / "state", tmp_path / "listener.log"
    port = orthanc.listener_port
    arguments = ("--port", str(port), "--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    ids = upload(orthanc, real_films)
    listener = start_listener(tiny_nih_model.checkpoint, state, log_path, *arguments)
    try:
        wait_until(lambda: listener_ready(port), 60, "the listener to answer C-ECHO")
        orthanc.post_json("/modalities/cxr/store", {"Resources": list(ids.values()), "Synchronous": False})
        wait_until(lambda: len(store_rows(state)) >= 15, 120, "15 films to be acknowledged")
        listener.send_signal(signal.SIGKILL)
        listener.wait(10)
        acknowledged = {row["sop_instance_uid"] for row in store_rows(state)}
        unreturned = {row["sop_instance_uid"] for row in store_rows(state) if row["state"] != "returned"}
        assert unreturned, "every film was already returned at the kill: the test did not kill mid-stream"

        listener = start_listener(tiny_nih_model.checkpoint, state, log_path, *arguments)
        wait_until(
            lambda: all(
                row["state"] == "returned" for row in store_rows(state) if row["sop_instance_uid"] in acknowledged
            ),
            120,
            "the films acknowledged before the kill to be returned without a resend",
        )
        wait_until(lambda: listener_ready(port), 60, "the restarted listener to answer C-ECHO")
        # Orthanc sends all 50 again: the acknowledged ones are resends and must give no second result
        orthanc.post_json("/modalities/cxr/store", {"Resources": list(ids.values()), "Synchronous": True})
        wait_until(
            lambda: sum(row["state"] == "returned" for row in store_rows(state)) == NUM_FILMS,
            180,
            "all 50 films to be returned",
        )
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait(30)
    rows = store_rows(state)
    assert len(rows) == NUM_FILMS and {row["sop_instance_uid"] for row in rows} == set(ids)
    assert all(row["times_received"] >= 2 for row in rows if row["sop_instance_uid"] in acknowledged)
    check_results(orthanc, set(ids))
    log_text = log_path.read_text(errors="replace")
    assert_no_phi(log_text)
    assert log_text.count("received again, already kept; no second result") >= len(acknowledged)
    save_screenshot(orthanc)


def save_screenshot(orthanc: Orthanc) -> None:
    """Orthanc's own rendering of one heatmap, kept for README when CXR_ANOMALY_UPDATE_SCREENSHOTS=1."""
    captures = orthanc.instances_of("OT")
    preview = orthanc.get(f"/instances/{captures[0]}/preview")
    assert preview.startswith(b"\x89PNG"), "Orthanc did not render the heatmap"
    if os.environ.get("CXR_ANOMALY_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(preview)


def test_orthanc_change_feed_and_stow(orthanc: Orthanc, real_films: list[Path], tiny_nih_model, tmp_path: Path) -> None:
    """Films stored in Orthanc are found on its change feed; results come back by STOW-RS, once each."""
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)")
    state, log_path = tmp_path / "state", tmp_path / "listener.log"
    films = real_films[:10]
    listener = start_listener(
        tiny_nih_model.checkpoint, state, log_path, "--orthanc", orthanc.url, "--poll-seconds", "0.5"
    )
    try:
        ids = upload(orthanc, films)
        wait_until(
            lambda: sum(row["state"] == "returned" for row in store_rows(state)) == len(films),
            180,
            "10 films from the change feed to be returned",
        )
        time.sleep(2.0)  # the feed now shows the results themselves: they must not be taken as films
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait(30)
    assert len(store_rows(state)) == len(films)
    check_results(orthanc, set(ids))
    log_text = log_path.read_text(errors="replace")
    assert_no_phi(log_text)
    assert "of other SOP classes skipped" in log_text
    # the worklist reads the same store: every film on it, in scope ranked, the rest apart
    from cxr_anomaly.cli import main

    assert (
        main(
            [
                "worklist",
                "--store",
                str(state),
                "--out",
                str(tmp_path / "worklist.html"),
                "--model",
                str(tiny_nih_model.checkpoint),
            ]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "worklist.csv")
    assert sorted(table["sop_instance_uid"]) == sorted(ids)
    ranked = table[table["scope"] == "in_scope"]
    assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    assert (ranked["score_raw"].diff().dropna() <= 0).all()
    page = (tmp_path / "worklist.html").read_text()
    assert page.count('class="film-row"') == len(ranked)
    assert PATIENT_PREFIX not in page
