"""Decoding of many files; the persistent preprocessing cache builds on :func:`decode_many`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import DataConfig
from ..errors import InputFileError


def decode_many(
    paths: list[str],
    data_config: DataConfig,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> list[np.ndarray | InputFileError]:
    """Decode every path to a uint8 square image, or to the error that stopped it."""
    from .dataset import load_one

    results: list[np.ndarray | InputFileError] = []
    for path in tqdm(paths, desc="decoding", disable=not progress, unit="img"):
        try:
            results.append(load_one(path, data_config))
        except InputFileError as error:
            results.append(error)
    return results
