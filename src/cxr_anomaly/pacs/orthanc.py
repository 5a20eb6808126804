"""Follow an Orthanc server's change feed for new films (its REST API).

Orthanc numbers every change; ``GET /changes?since=N`` lists those after N. Each
``NewInstance`` whose SOP class is CR or DX image storage is downloaded (its declared size
checked first), checked like a C-STORE, and kept through the same
:class:`~cxr_anomaly.pacs.listener.FilmIntake`; other instances (the results this package
stores, other modalities) are counted in one log line per poll. The feed position is stored in
the :class:`~cxr_anomaly.pacs.store.FilmStore` after each page, so a restart resumes where it
stopped; a change seen twice is a resend and is ignored by the store.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .listener import FILM_SOP_CLASSES, FilmIntake, RefusedInstance
from .send import split_credentials

logger = logging.getLogger(__name__)

CURSOR_NAME = "orthanc-changes"
PAGE_SIZE = 100


class OrthancError(Exception):
    """Orthanc could not be reached or answered with an error."""


@dataclass(frozen=True)
class FeedPage:
    """What one poll of the change feed found.

    Attributes:
        new_instances: ``NewInstance`` changes seen.
        films: films kept (new or resent).
        skipped: instances of other SOP classes.
        refused: films refused by the header checks.
        done: whether the feed has nothing more after this page.
    """

    new_instances: int
    films: int
    skipped: int
    refused: int
    done: bool


class OrthancClient:
    """A small client of Orthanc's REST API.

    Args:
        base_url: e.g. ``http://127.0.0.1:8042``; ``user:password@`` is sent as basic authentication.
        timeout: seconds for each request.
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url, self.headers = split_credentials(base_url.rstrip("/"))
        self.timeout = timeout

    def get(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """GET a path; raise :class:`OrthancError` on failure or a reply over ``max_bytes``."""
        request = urllib.request.Request(self.base_url + path, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                limit = -1 if max_bytes is None else max_bytes + 1
                body = response.read(limit)
        except (urllib.error.URLError, OSError) as error:
            raise OrthancError(f"GET {path} failed: {getattr(error, 'code', '')} {type(error).__name__}") from None
        if max_bytes is not None and len(body) > max_bytes:
            raise OrthancError(f"GET {path}: the reply exceeds {max_bytes} bytes")
        return body

    def get_json(self, path: str) -> Any:
        """GET a path and parse its JSON."""
        return json.loads(self.get(path, max_bytes=64 * 1024 * 1024))


class OrthancFollower:
    """Polls an Orthanc's change feed and keeps new films.

    Args:
        client: the Orthanc REST client.
        intake: keeps accepted films (shared with the C-STORE listener).
        interval: seconds between polls when the feed is exhausted.
    """

    def __init__(self, client: OrthancClient, intake: FilmIntake, *, interval: float = 1.0) -> None:
        self.client = client
        self.intake = intake
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> FeedPage:
        """Read one page of changes after the stored position and keep its new films."""
        since = self.intake.store.cursor(CURSOR_NAME)
        feed = self.client.get_json(f"/changes?since={since}&limit={PAGE_SIZE}")
        changes = [change for change in feed.get("Changes", []) if change.get("ChangeType") == "NewInstance"]
        films = skipped = refused = 0
        for change in changes:
            outcome = self._take(str(change["ID"]))
            films += outcome == "film"
            skipped += outcome == "skipped"
            refused += outcome == "refused"
        self.intake.store.set_cursor(CURSOR_NAME, int(feed.get("Last", since)))
        if changes:
            logger.info(
                "orthanc feed: %d new instances, %d films kept, %d refused, %d of other SOP classes skipped",
                len(changes),
                films,
                refused,
                skipped,
            )
        return FeedPage(len(changes), films, skipped, refused, bool(feed.get("Done", True)))

    def _take(self, orthanc_id: str) -> str:
        sop_class = (
            self.client.get(f"/instances/{orthanc_id}/metadata/SopClassUid", max_bytes=256)
            .decode("ascii", "replace")
            .strip()
        )
        if sop_class not in FILM_SOP_CLASSES:
            return "skipped"
        data = self.client.get(f"/instances/{orthanc_id}/file", max_bytes=self.intake.max_bytes)
        with tempfile.NamedTemporaryFile(prefix="cxr-orthanc-", suffix=".dcm") as received:
            received.write(data)
            received.flush()
            try:
                header = self.intake.check(Path(received.name))
            except RefusedInstance as refusal:
                logger.warning("refused Orthanc instance %s: %s", orthanc_id, refusal.reason)
                return "refused"
            self.intake.keep(Path(received.name), header, source="orthanc")
        return "film"

    def run(self) -> None:
        """Poll until stopped; an unreachable Orthanc is logged and retried."""
        while not self._stop.is_set():
            try:
                page = self.poll_once()
            except OrthancError as error:
                logger.error("orthanc feed: %s; retrying in %.0f s", error, max(self.interval, 5.0))
                self._stop.wait(max(self.interval, 5.0))
                continue
            if page.done:
                self._stop.wait(self.interval)

    def start(self) -> None:
        """Run :meth:`run` in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="cxr-orthanc-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
