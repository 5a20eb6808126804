"""Finished cells of a grid of runs (method x seed), kept on disk and reused when run again.

``reproduce`` and ``benchmark`` both train many (method, seed) cells, each for minutes to hours.
A cell is a folder: its data files are written atomically first
(:func:`~cxr_anomaly.files.atomic_write`), then ``result.json`` last, holding a fingerprint
of everything that determined the result. So a cell with ``result.json`` is finished; a cell
without it (a run killed midway) runs again; a cell with another fingerprint was made with other
settings or data and runs again too.

Also here: the small helpers both tables share (mean ± std over seeds, durations).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_text

logger = logging.getLogger(__name__)

RESULT_NAME = "result.json"


def settings_fingerprint(values: Mapping[str, Any]) -> str:
    """A short hash of JSON-serialisable settings (key order does not matter)."""
    payload = json.dumps(values, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def paths_fingerprint(paths: Sequence[str]) -> str:
    """A short hash of a set of file paths (order does not matter)."""
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:16]


def read_finished_cell(cell_dir: Path, fingerprint: str, required_files: Sequence[str] = ()) -> dict[str, Any] | None:
    """The stored ``result.json`` of a finished cell made with the same settings, else None.

    A cell missing ``result.json`` or one of ``required_files`` is unfinished; one with an
    unreadable ``result.json`` or another fingerprint is logged and treated as not there.
    """
    path = cell_dir / RESULT_NAME
    if not path.is_file() or not all((cell_dir / name).is_file() for name in required_files):
        return None
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        logger.warning("%s is unreadable (%s); running the cell again", path, error)
        return None
    if not isinstance(values, dict) or values.get("fingerprint") != fingerprint:
        logger.warning("%s was made with other settings or other data; running it again", cell_dir)
        return None
    return values


def write_cell_result(cell_dir: Path, values: Mapping[str, Any]) -> Path:
    """Write ``result.json`` atomically; call it after every other file of the cell is written."""
    path = cell_dir / RESULT_NAME
    atomic_write_text(path, json.dumps(values, indent=2))
    return path


def format_duration(seconds: float) -> str:
    """``1h02m03s`` or ``2m03s``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def describe_remaining(durations: Mapping[str, Sequence[float]], remaining_kinds: Sequence[str]) -> str:
    """An estimate of the time left for cells of ``remaining_kinds``, from the cells run so far.

    A kind not timed yet is estimated by the mean of every timed cell.
    """
    every = [duration for values in durations.values() for duration in values]
    if not every:
        return f"{len(remaining_kinds)} cells left, time unknown until one finishes"
    estimate = sum(float(np.mean(durations.get(kind) or every)) for kind in remaining_kinds)
    return f"about {format_duration(estimate)} left for {len(remaining_kinds)} cells"


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the defined values."""
    defined = [float(value) for value in values if value is not None and math.isfinite(value)]
    if not defined:
        return math.nan, math.nan, 0
    std = float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0
    return float(np.mean(defined)), std, len(defined)


def plus_minus(mean: object, std: object) -> str:
    """``0.612 ± 0.010``, or ``-`` for an undefined mean."""
    if not isinstance(mean, float) or math.isnan(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}"
