"""Copies of a training film among test films, found by content: what path and patient checks miss.

The same film can reach two collections through two pipelines: the RSNA challenge relabelled NIH
ChestX-ray14 films, so ``rsna_normal224`` (training normals) and the NIH test collections come
from one archive, resized and exported differently. Such a copy has another path, often no shared
patient id, and other pixel values, yet a nearest-neighbour detector finds it in its bank at
distance ~0. A normal test film that is a copy of a training film makes a result optimistic.

A film's *signature*: the film resized to 32 x 32, each pixel replaced by its rank within the
film (so that any monotone contrast curve, one pipeline's gamma against another's, changes
nothing), centred and scaled to unit length. Two films whose signatures correlate at
:data:`COPY_CORRELATION` or more are called copies: the threshold lies between distinct films of
one archive and the copies found on the shared data (see
docs/results.md#copies-of-one-film-in-two-collections).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..image_base import canonical_film

SIGNATURE_SIZE = 32
COPY_CORRELATION = 0.99
CHUNK = 1024  # films compared at once: a (1024, reference) block of correlations


@dataclass(frozen=True)
class FilmCopy:
    """A film of the checked set that is a copy of a reference film.

    Attributes:
        film: the film's index in the checked set.
        source: the index of its most similar film in the reference set.
        correlation: the two signatures' correlation, in [-1, 1].
    """

    film: int
    source: int
    correlation: float


def film_signatures(pixels: np.ndarray) -> np.ndarray:
    """Films (N, S, S) -> float32 signatures (N, 32²): resized, ranked within each film, centred, unit length.

    uint8 or uint16 codes; an 8-bit film held as 16-bit (257 v) gets its uint8 film's signature.
    """
    from scipy.stats import rankdata  # here: scipy.stats is slow to import, and checkpoints import this module

    if len(pixels) == 0:
        return np.zeros((0, SIGNATURE_SIZE * SIGNATURE_SIZE), np.float32)
    small = np.stack(
        [
            np.asarray(Image.fromarray(film).resize((SIGNATURE_SIZE, SIGNATURE_SIZE), Image.Resampling.BOX))
            for film in map(canonical_film, pixels)
        ]
    ).reshape(len(pixels), -1)  # (N, 1024)
    ranks = rankdata(small, axis=1)  # ties share their mean rank
    ranks -= ranks.mean(axis=1, keepdims=True)
    ranks /= np.linalg.norm(ranks, axis=1, keepdims=True) + 1e-9  # a uniform film stays all zero
    return ranks.astype(np.float32)


def matching_signatures(
    signatures: np.ndarray, reference: np.ndarray, *, threshold: float = COPY_CORRELATION
) -> list[FilmCopy]:
    """The rows of ``signatures`` (N, 1024) that correlate at ``threshold`` or more with a row of
    ``reference`` (M, 1024), with their most similar reference row, in row order."""
    if len(signatures) == 0 or len(reference) == 0:
        return []
    copies = []
    for begin in range(0, len(signatures), CHUNK):
        similarity = signatures[begin : begin + CHUNK] @ reference.T  # (chunk, M)
        best = similarity.argmax(axis=1)
        for row in np.flatnonzero(similarity[np.arange(len(best)), best] >= threshold):
            copies.append(FilmCopy(begin + int(row), int(best[row]), float(similarity[row, best[row]])))
    return copies


def pack_signatures(signatures: np.ndarray) -> torch.Tensor:
    """Signatures as the int8 tensor (N, 1024) a checkpoint stores: 1 KB a film. Each value is
    rounded to 1/127 of the largest magnitude, which moves a copy's correlation by about 1e-4."""
    scale = 127.0 / max(float(np.abs(signatures).max(initial=0.0)), 1e-9)
    return torch.from_numpy(np.clip(np.rint(signatures * scale), -127, 127).astype(np.int8))


def unpack_signatures(stored: torch.Tensor) -> np.ndarray:
    """The float32 unit-length signatures of :func:`pack_signatures`' tensor."""
    values = stored.numpy().astype(np.float32)
    return values / (np.linalg.norm(values, axis=1, keepdims=True) + 1e-9)
