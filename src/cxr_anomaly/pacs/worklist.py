"""The worklist of a listener's store: in-scope films ranked, the rest listed apart, none left out.

It reads ``films.sqlite`` and the thumbnails the scorer wrote, so it needs neither the model nor
the films themselves. Films not yet scored and films that failed are listed with the out-of-scope
ones, under their state, so a film that arrived is always somewhere on the page.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..calibration import Calibration
from ..explain import Explanation
from ..report import rank_table, write_html_report
from .store import FAILED, RETURNED, SCORED, FilmStore, StoredFilm

logger = logging.getLogger(__name__)

_BLANK = np.full((8, 8), 128, dtype=np.uint8)


def store_table(store: FilmStore) -> pd.DataFrame:
    """One row per received film: scores, decision, scope (or its state when it has no score yet)."""
    rows = []
    for film in store.films():
        scored = film.state in (SCORED, RETURNED)
        scope = film.scope if scored else (f"failed: {film.error}" if film.state == FAILED else "not yet scored")
        rows.append(
            {
                "path": film.path,
                "score_raw": film.raw_score if scored else np.nan,
                "score_calibrated": film.calibrated_score,
                "percentile": film.percentile,
                "decision": film.decision,
                "scope": scope,
                "state": film.state,
                "study_instance_uid": film.study_instance_uid,
                "sop_instance_uid": film.sop_instance_uid,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "path",
            "score_raw",
            "score_calibrated",
            "percentile",
            "decision",
            "scope",
            "state",
            "study_instance_uid",
            "sop_instance_uid",
        ],
    )


def _thumbnail(path: Path) -> np.ndarray:
    if not path.is_file():
        return _BLANK
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB" if path.name.endswith(".heatmap.png") else "L"))


def _explanation(thumbnails: Path, film: StoredFilm | None) -> Explanation:
    stem = Path(film.path).stem if film is not None else ""
    original = _thumbnail(thumbnails / f"{stem}.film.png")
    overlay = _thumbnail(thumbnails / f"{stem}.heatmap.png")
    if overlay.ndim == 2:
        overlay = np.repeat(overlay[..., None], 3, axis=2)
    return Explanation(
        original=original, model_input=original, anomaly_map=np.zeros((1, 1), np.float32), scale=1.0, overlay=overlay
    )


def write_store_worklist(state_folder: str | Path, out: str | Path, *, calibration: Calibration | None = None) -> Path:
    """Write the HTML worklist (and a CSV beside it) of everything the listener received."""
    state_folder = Path(state_folder)
    database = state_folder / "films.sqlite"
    if not database.is_file():
        raise FileNotFoundError(
            f"{database}: no listener store here (run 'cxr-anomaly listen --store {state_folder}' first)"
        )
    store = FilmStore(database)
    try:
        films = {film.path: film for film in store.films()}
        table = store_table(store)
    finally:
        store.close()
    ranked = rank_table(table)
    explanations = [_explanation(state_folder / "thumbnails", films.get(path)) for path in ranked.table["path"]]
    out = Path(out)
    ranked.table.to_csv(out.with_suffix(".csv"), index=False)
    return write_html_report(
        out,
        ranked.table,
        explanations,
        calibration=calibration,
        model_description=f"the listener's store {state_folder}",
        title="cxr-anomaly worklist (listener)",
    )
