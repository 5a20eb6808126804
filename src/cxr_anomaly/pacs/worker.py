"""The listener's scorer: films kept in the store are scored, and their results sent back.

One thread takes the films whose results have not gone back (``received`` or ``scored``: after
a crash both are redone, and the results' fixed UIDs make a repeat overwrite, not duplicate),
scores them in small batches, builds a Structured Report and a heatmap Secondary Capture for
each (:mod:`cxr_anomaly.pacs.results`), stores both in the PACS through a
:class:`~cxr_anomaly.pacs.send.ResultSink`, and only then records the film as returned. A PACS
that cannot be reached leaves the films pending and is retried; a film that cannot be decoded is
recorded as failed with its reason and never retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import place_on_operating_point
from ..errors import InputFileError
from ..explain import colour_bar, explain_film, heatmap_range, png_bytes, shrink
from ..image_base import stack_films
from ..io import read_image, reduce_film
from ..scope import IN_SCOPE
from .results import FilmResult, build_results
from .send import ResultSink, SendError
from .store import FilmScoreRecord, FilmStore, StoredFilm

logger = logging.getLogger(__name__)

HEATMAP_MAX_SIDE = 1024  # the Secondary Capture's longer side
THUMBNAIL_SIDE = 192  # the worklist's heatmap thumbnails

ScopeRule = Callable[[Any, np.ndarray], str]


@dataclass(frozen=True)
class DecodedFilm:
    """A kept film, read back for scoring.

    Attributes:
        stored: its row in the store.
        header: its data set without pixel data (for the results' patient and study modules).
        film: grey float32 (H0, W0) in [0, 1] at its own resolution.
        model_input: (S, S) codes as the detector reads them: uint8, or uint16 for a film of more
            than 256 grey levels (:func:`~cxr_anomaly.io.reduce_film`).
        scope: ``in_scope`` or why the detector should not judge it.
    """

    stored: StoredFilm
    header: Any
    film: np.ndarray
    model_input: np.ndarray
    scope: str


@dataclass(frozen=True)
class PreparedResults:
    """A scored film and the DICOM objects that carry its result."""

    film: DecodedFilm
    result: FilmResult
    datasets: list[Any]


class ScoringWorker:
    """Scores pending films and returns their results.

    Args:
        model: a loaded checkpoint or ONNX scorer (``score_films``, ``calibration``, ``config``...).
        version: the model's version string (see :func:`model_version`).
        store: the durable film store.
        sink: where results go (C-STORE or STOW-RS).
        thumbnails: folder of the worklist's film and heatmap thumbnails (``<spool name>.film.png``,
            ``<spool name>.heatmap.png``).
        scope_of: the scope rule: (header data set, grey film) -> ``in_scope`` or a reason.
        batch_size: films scored together.
        retry_seconds: wait after the PACS could not be reached.
    """

    def __init__(
        self,
        model: Any,
        version: str,
        store: FilmStore,
        sink: ResultSink,
        thumbnails: Path,
        scope_of: ScopeRule,
        *,
        batch_size: int = 8,
        retry_seconds: float = 5.0,
    ) -> None:
        self.model = model
        self.version = version
        self.store = store
        self.sink = sink
        self.thumbnails = Path(thumbnails)
        self.thumbnails.mkdir(parents=True, exist_ok=True)
        self.scope_of = scope_of
        self.batch_size = batch_size
        self.retry_seconds = retry_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heat = heatmap_range(model.calibration, model.anomaly_map_scale)

    def wake(self) -> None:
        """Tell the worker a film arrived."""
        self._wake.set()

    def start(self) -> None:
        """Run :meth:`run` in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="cxr-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Score and return until stopped; pending films from a previous run come first."""
        while not self._stop.is_set():
            try:
                done = self.process_batch()
            except SendError as error:
                logger.error(
                    "results could not be stored in the PACS (%s); retrying in %.0f s", error, self.retry_seconds
                )
                self._stop.wait(self.retry_seconds)
                continue
            if done == 0:
                self._wake.wait(1.0)
                self._wake.clear()

    def process_batch(self) -> int:
        """Score and return one batch of pending films; the number handled (0: nothing pending).

        The batch's results go to the PACS in one call (one association), and its films are
        recorded as returned only after it succeeded.
        """
        pending = self.store.pending(self.batch_size)
        decoded = [film for film in (self._decode(stored) for stored in pending) if film is not None]
        if not decoded:
            return len(pending)
        inputs = stack_films([film.model_input for film in decoded])  # (B, S, S) uint8, or uint16
        scores = self.model.score_films(inputs, keep_maps=True)
        prepared = [
            self._prepare(film, float(scores.raw[index]), scores.anomaly_maps[index])
            for index, film in enumerate(decoded)
        ]
        started = time.perf_counter()
        self.sink.send([dataset for results in prepared for dataset in results.datasets])
        seconds = time.perf_counter() - started
        for results in prepared:
            self.store.record_returned(results.film.stored.sop_instance_uid)
            logger.info(
                "film %s: score %.4g, %s, scope %s; results stored",
                results.film.stored.sop_instance_uid,
                results.result.raw_score,
                results.result.decision,
                results.result.scope,
            )
        logger.debug("stored the results of %d films in %.2f s", len(prepared), seconds)
        return len(pending)

    def _decode(self, stored: StoredFilm) -> DecodedFilm | None:
        import pydicom

        try:
            image = read_image(stored.path)
            header = pydicom.dcmread(stored.path, stop_before_pixels=True)
        except InputFileError as error:
            self.store.record_failed(stored.sop_instance_uid, error.reason)
            logger.warning("film %s: cannot be decoded (%s); recorded as failed", stored.sop_instance_uid, error.reason)
            return None
        except Exception as error:  # noqa: BLE001 - the header parsed at receipt; anything now is damage on disk
            self.store.record_failed(stored.sop_instance_uid, type(error).__name__)
            logger.warning(
                "film %s: cannot be read back (%s); recorded as failed", stored.sop_instance_uid, type(error).__name__
            )
            return None
        scope = self.scope_of(header, image.array)
        size = self.model.config.data.image_size
        return DecodedFilm(stored, header, image.array, reduce_film(image, size), scope)

    def _prepare(self, film: DecodedFilm, raw: float, anomaly_map: np.ndarray) -> PreparedResults:
        """Record a film's score, write its worklist thumbnails and build its SR and heatmap."""
        result = self.film_result(raw, film.scope)
        self.store.record_scored(
            film.stored.sop_instance_uid,
            FilmScoreRecord(raw, result.calibrated_score, result.percentile, result.decision, result.scope),
        )
        explanation = explain_film(
            film.film,
            film.model_input,
            anomaly_map,
            self.heat.scale,
            floor=self.heat.floor,
            border_crop=self.model.config.data.border_crop,
            max_side=HEATMAP_MAX_SIDE,
        )
        stem = Path(film.stored.path).stem
        (self.thumbnails / f"{stem}.heatmap.png").write_bytes(png_bytes(shrink(explanation.overlay, THUMBNAIL_SIDE)))
        (self.thumbnails / f"{stem}.film.png").write_bytes(png_bytes(shrink(explanation.original, THUMBNAIL_SIDE)))
        objects = build_results(
            film.header,
            result,
            explanation.overlay,
            colour_bar(),
            scale_floor=self.heat.floor,
            scale_top=self.heat.scale,
        )
        return PreparedResults(film, result, [objects.structured_report, objects.secondary_capture])

    def film_result(self, raw: float, scope: str) -> FilmResult:
        """The film's score read against the model's operating point."""
        calibration = self.model.calibration
        placed = place_on_operating_point(raw, calibration)
        decision = "flagged" if placed.decision == "flag" else "not flagged"
        if scope != IN_SCOPE:
            decision = "not assessed"
        return FilmResult(
            raw_score=raw,
            calibrated_score=placed.score if placed.kind == "calibrated" else None,
            percentile=placed.percentile,
            decision=decision,
            operating_point=None if calibration is None else describe_operating_point(calibration),
            scope=scope,
            model_name=self.model.description,
            model_version=self.version,
        )


def describe_operating_point(calibration: Any) -> str:
    """One line: the raw-score threshold and what it was chosen for on validation films."""
    text = f"raw score above {calibration.threshold:.4g}"
    if calibration.operating_point == "sensitivity" and calibration.target_sensitivity is not None:
        text += f" (chosen for sensitivity {calibration.target_sensitivity:.2f} on validation films)"
    else:
        text += f" (chosen for specificity {calibration.target_specificity:.2f} on normal validation films)"
    return text
