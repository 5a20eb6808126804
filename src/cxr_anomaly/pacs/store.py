"""The listener's durable state: received films, their scores and whether their results went back.

One SQLite file beside the spool of received instances. A film is recorded *after* its file is
on disk and *before* the sender is told it arrived, so ``kill -9`` at any moment loses no
acknowledged film; the SOP Instance UID is the key, so a resend never makes a second row, a
second score or a second result. SQLite runs in WAL mode with ``synchronous=FULL``: a commit is
on disk when it returns.

Rows move ``received`` -> ``scored`` -> ``returned`` (or ``failed``, with a reason that never
quotes a header value). The worklist reads the same file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RECEIVED = "received"
SCORED = "scored"
RETURNED = "returned"
FAILED = "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS films (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL,
    raw_score REAL,
    calibrated_score REAL,
    percentile REAL,
    decision TEXT,
    scope TEXT,
    scored_at REAL,
    returned_at REAL,
    times_received INTEGER NOT NULL DEFAULT 1,
    times_returned INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS films_state ON films (state);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class StoredFilm:
    """One row of the store.

    Attributes:
        sop_instance_uid: the film's SOP Instance UID (the key).
        sop_class_uid: CR or DX image storage.
        study_instance_uid: the study the results go back into.
        path: the received instance in the spool.
        source: where it came from (``c-store`` or ``orthanc``).
        state: ``received``, ``scored``, ``returned`` or ``failed``.
        raw_score, calibrated_score, percentile, decision, scope: the film's result, once scored.
        times_received: how often the film arrived (resends included).
        times_returned: how often its results were sent (more than once only after a crash
            between sending and recording; the results' UIDs are fixed, so the PACS keeps one copy).
        error: why it failed, for ``failed`` rows.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    path: str
    source: str
    received_at: float
    state: str
    raw_score: float | None = None
    calibrated_score: float | None = None
    percentile: float | None = None
    decision: str | None = None
    scope: str | None = None
    scored_at: float | None = None
    returned_at: float | None = None
    times_received: int = 1
    times_returned: int = 0
    error: str | None = None


@dataclass(frozen=True)
class FilmScoreRecord:
    """What scoring a film adds to its row."""

    raw_score: float
    calibrated_score: float | None
    percentile: float | None
    decision: str
    scope: str


class FilmStore:
    """The SQLite store of received films; safe to share between threads of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def record_received(
        self, sop_instance_uid: str, sop_class_uid: str, study_instance_uid: str, path: str | Path, source: str
    ) -> bool:
        """Record a film whose file is on disk; True when it is new, False for a resend."""
        with self._transaction() as connection:
            known = connection.execute("SELECT 1 FROM films WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
            if known is not None:
                connection.execute(
                    "UPDATE films SET times_received = times_received + 1 WHERE sop_instance_uid = ?",
                    (sop_instance_uid,),
                )
                return False
            connection.execute(
                "INSERT INTO films (sop_instance_uid, sop_class_uid, study_instance_uid, path, source, received_at,"
                " state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sop_instance_uid, sop_class_uid, study_instance_uid, str(path), source, time.time(), RECEIVED),
            )
            return True

    def knows(self, sop_instance_uid: str) -> bool:
        """Whether a film of this UID was received before."""
        with self._lock:
            return (
                self._connection.execute(
                    "SELECT 1 FROM films WHERE sop_instance_uid = ?", (sop_instance_uid,)
                ).fetchone()
                is not None
            )

    def pending(self, limit: int = 64) -> list[StoredFilm]:
        """Films received or scored whose results have not gone back yet, oldest first."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT * FROM films WHERE state IN (?, ?) ORDER BY received_at LIMIT ?", (RECEIVED, SCORED, limit)
            ).fetchall()
        return [StoredFilm(**dict(row)) for row in rows]

    def record_scored(self, sop_instance_uid: str, record: FilmScoreRecord) -> None:
        """Store a film's score; its results are still to be returned."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE films SET state = ?, raw_score = ?, calibrated_score = ?, percentile = ?, decision = ?,"
                " scope = ?, scored_at = ? WHERE sop_instance_uid = ?",
                (
                    SCORED,
                    record.raw_score,
                    record.calibrated_score,
                    record.percentile,
                    record.decision,
                    record.scope,
                    time.time(),
                    sop_instance_uid,
                ),
            )

    def record_returned(self, sop_instance_uid: str) -> None:
        """Mark a film's results as stored in the PACS."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE films SET state = ?, returned_at = ?, times_returned = times_returned + 1"
                " WHERE sop_instance_uid = ?",
                (RETURNED, time.time(), sop_instance_uid),
            )

    def record_failed(self, sop_instance_uid: str, reason: str) -> None:
        """Mark a film that cannot be scored or returned; the reason must quote no header value."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE films SET state = ?, error = ? WHERE sop_instance_uid = ?", (FAILED, reason, sop_instance_uid)
            )

    def films(self) -> list[StoredFilm]:
        """Every film, oldest first (the worklist's source)."""
        with self._lock:
            rows = self._connection.execute("SELECT * FROM films ORDER BY received_at").fetchall()
        return [StoredFilm(**dict(row)) for row in rows]

    def cursor(self, name: str) -> int:
        """A stored position (the Orthanc change feed's last sequence number); 0 when unset."""
        with self._lock:
            row = self._connection.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row["value"])

    def set_cursor(self, name: str, value: int) -> None:
        """Store a position durably."""
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO cursors (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._connection.close()
