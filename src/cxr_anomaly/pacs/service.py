"""``cxr-anomaly listen``: the storage SCP, the Orthanc feed, the scorer and the store, wired together.

Layout of the state folder (``--store``)::

    films.sqlite      received films, scores, and whether results went back
    spool/            received instances, one file per SOP Instance UID
    thumbnails/       the worklist's heatmap thumbnails

On start, films received but not yet returned (a previous run was killed) are scored first.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dicom import silence_pydicom
from ..files import model_version
from .listener import FilmIntake, ListenerSettings, StorageListener
from .orthanc import OrthancClient, OrthancFollower
from .scope import scope_rule_for
from .send import CStoreSink, RemoteEntity, ResultSink, StowSink
from .spool import Spool
from .store import FilmStore
from .worker import ScoringWorker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListenOptions:
    """Everything ``cxr-anomaly listen`` was asked for.

    Attributes:
        model: the checkpoint (``model.pt``) or ONNX graph that scores.
        state_folder: where the store, spool and thumbnails live.
        listener: the storage SCP's settings; None to receive from Orthanc's feed only.
        send_to: ``AE_TITLE@HOST:PORT`` to C-STORE results to.
        orthanc_url: an Orthanc to follow for new films, and to STOW-RS results to when
            ``send_to`` is not given.
        poll_interval: seconds between change-feed polls.
        device: where the model runs; precision: what it computes in.
    """

    model: Path
    state_folder: Path
    listener: ListenerSettings | None
    send_to: str | None = None
    orthanc_url: str | None = None
    poll_interval: float = 1.0
    device: str = "cpu"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.send_to is None and self.orthanc_url is None:
            raise ValueError("results need somewhere to go: give --send-to AE_TITLE@HOST:PORT or --orthanc URL")
        if self.listener is None and self.orthanc_url is None:
            raise ValueError("nothing to receive from: give --port for C-STORE or --orthanc URL for its feed")


@dataclass
class RunningListener:
    """The parts of a running listener, for tests and for a clean stop."""

    store: FilmStore
    worker: ScoringWorker
    listener: StorageListener | None
    follower: OrthancFollower | None

    def stop(self) -> None:
        """Stop receiving, finish the batch in hand, close the store."""
        if self.listener is not None:
            self.listener.stop()
        if self.follower is not None:
            self.follower.stop()
        self.worker.stop()
        self.store.close()


def result_sink(options: ListenOptions, calling_ae_title: str) -> ResultSink:
    """C-STORE to ``send_to`` when given, else STOW-RS to the Orthanc's DICOMweb root."""
    if options.send_to is not None:
        return CStoreSink(RemoteEntity.parse(options.send_to), calling_ae_title)
    assert options.orthanc_url is not None  # checked in ListenOptions
    return StowSink(options.orthanc_url.rstrip("/") + "/dicom-web")


def start_listening(options: ListenOptions) -> RunningListener:
    """Load the model, open the store, and start the scorer, the SCP and the feed."""
    from ..jobs.score import load_scoring_model

    silence_pydicom()  # pydicom's warnings quote header values
    model: Any = load_scoring_model(options.model, device=options.device, precision=options.precision)
    store = FilmStore(options.state_folder / "films.sqlite")
    calling_ae = options.listener.ae_title if options.listener is not None else "CXRANOMALY"
    worker = ScoringWorker(
        model,
        model_version(options.model),
        store,
        result_sink(options, calling_ae),
        options.state_folder / "thumbnails",
        scope_rule_for(model),
    )
    intake = FilmIntake(store, Spool(options.state_folder / "spool"), worker.wake)
    pending = len(store.pending(limit=1_000_000))
    if pending:
        logger.info("%d films received earlier still wait for their results; scoring them first", pending)
    worker.start()
    listener = follower = None
    if options.listener is not None:
        listener = StorageListener(options.listener, intake)
        listener.start()
    if options.orthanc_url is not None:
        follower = OrthancFollower(OrthancClient(options.orthanc_url), intake, interval=options.poll_interval)
        follower.start()
    return RunningListener(store, worker, listener, follower)


def listen_until_stopped(options: ListenOptions) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly."""
    running = start_listening(options)
    stopped = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stopped.set())
    stopped.wait()
    logger.info("stopping: no new associations; finishing the batch in hand")
    running.stop()
