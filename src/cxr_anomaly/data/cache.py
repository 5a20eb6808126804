"""Decoding of many files on all cores, with a persistent preprocessing cache.

Decoding a full-size film costs far more than keeping its small copy, and a collection such
as ChestX-ray14's 112,120 films takes long to decode on one core. :func:`decode_many` therefore

- decodes in a pool of threads (one per core by default), in chunks of files. Threads, not
  processes: Pillow's decoders and resizers, and NumPy's array work, release the GIL, so the
  threads run side by side; and a thread costs nothing to start, where a worker process
  re-imports the caller's ``__main__`` module (with torch, longer than decoding a batch takes;
  ``benchmarks/bench_decode_pool.py``);
- with a ``cache_dir``, keeps every decoded film in a compact store of its codes (uint8, or uint16
  for a film of more than 256 grey levels) and decodes next time only the files that are new or
  changed.

Store layout: ``cache_dir/<parameters digest>/`` holds ``parameters.json`` (for people) and
shards ``shard-*.npz``, each an uncompressed npz of ``keys`` (N,) and ``pixels`` (N, S, S):
uint8 when all its films are 8-bit, else uint16 with each 8-bit film v stored as 257 v
(:func:`~cxr_anomaly.image_base.stack_films`; read back as uint8 by
:func:`~cxr_anomaly.image_base.canonical_film`). A film's key is a digest of its absolute path, size and modification time (ns), so an
edited file gets a new key and is decoded again; the parameters digest covers everything that
changes the pixels (image size, pixel limit, the decoder version), so changing a parameter
builds a new store beside the old one.

Crash safety: a shard is written with :func:`cxr_anomaly.files.atomic_write` (a hidden
temporary name, fsync, :func:`os.replace`, fsync of the folder), so a reader sees a whole shard
or none, and a shard that :meth:`PreprocessingCache.add` has returned survives a power cut. Decoded films are
written every ``flush_every`` films or ``flush_seconds`` seconds and when the build is
interrupted (Ctrl-C), so an interrupted build keeps what it finished; only files named
``shard-*.npz`` are trusted, and a shard that fails to load is set aside, never half-used.

Files that cannot be decoded are not cached: they are decoded again (and reported again) on
every run, so a repaired file is picked up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import errors
from ..config import DataConfig
from ..errors import InputFileError, MissingFileError
from ..files import atomic_write
from ..image_base import canonical_film, stack_films
from ..io import read_image, reduce_film, resize_grey

logger = logging.getLogger(__name__)

NPZ_SEPARATOR = "#"
# Bump when decoding or resizing changes the pixels it produces (2: narrow 16-bit films stretched;
# 3: 8-bit films in 12- or 16-bit containers reduced one code per level; 4: films of more than 256
# grey levels kept as 16-bit codes).
CACHE_FORMAT_VERSION = 4
DEFAULT_FLUSH_EVERY = 1024
DEFAULT_FLUSH_SECONDS = 10.0
COMPACT_ABOVE_SHARDS = 32
# np.load of a damaged npz raises any of these
_UNREADABLE_SHARD = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
SERIAL_BELOW = 2  # a lone film is decoded in the calling thread; threads pay from 2 films on (bench_decode_pool)


@dataclass(frozen=True)
class CacheParameters:
    """Everything that changes the cached pixels; its digest names the store folder."""

    image_size: int
    max_image_pixels: int
    format_version: int = CACHE_FORMAT_VERSION

    @classmethod
    def from_config(cls, data_config: DataConfig) -> CacheParameters:
        """Take the pixel-changing fields of a :class:`DataConfig` (intensity is applied later)."""
        return cls(data_config.image_size, data_config.max_image_pixels)

    def digest(self) -> str:
        """A short stable name for these parameters."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheReport:
    """What one :func:`decode_many` call did.

    Attributes:
        total: paths asked for.
        reused: films found in the cache.
        decoded: films decoded in this call (and stored, when a cache is used).
        failed: files that could not be decoded.
        workers: decoding threads used (1 means this thread only).
        seconds: wall time of the call.
        cpu_seconds: CPU time of the process during the call (every thread's, the decoding threads' included).
    """

    total: int
    reused: int
    decoded: int
    failed: int
    workers: int
    seconds: float
    cpu_seconds: float


def is_npz_member(path: str) -> bool:
    """Whether ``path`` names an image inside an npz (``FILE.npz#SPLIT/INDEX``)."""
    return NPZ_SEPARATOR in path and path.split(NPZ_SEPARATOR, 1)[0].endswith(".npz")


def decode_file(path: str, data_config: DataConfig) -> np.ndarray:
    """Decode one image file to codes of shape (image_size, image_size): uint8, or uint16 for a film
    of more than 256 grey levels (:func:`~cxr_anomaly.io.reduce_film`)."""
    image = read_image(path, max_pixels=data_config.max_image_pixels)
    return reduce_film(image, data_config.image_size)  # (H, W) float -> (S, S) uint8 or uint16


def decode_npz_members(paths: list[str], data_config: DataConfig) -> list[np.ndarray | InputFileError]:
    """Decode images stored inside npz archives, opening each archive once."""
    results: list[np.ndarray | InputFileError] = []
    archives: dict[str, dict[str, np.ndarray] | InputFileError] = {}
    for path in paths:
        file_part, member = path.split(NPZ_SEPARATOR, 1)
        if file_part not in archives:
            archives[file_part] = _open_npz_images(file_part)
        archive = archives[file_part]
        if isinstance(archive, InputFileError):
            results.append(archive)
            continue
        split_name, _, index_text = member.partition("/")
        images = archive.get(f"{split_name}_images")
        if images is None or not index_text.isdigit() or int(index_text) >= len(images):
            results.append(errors.UnreadableImageError(path, f"no image {member!r} in {file_part}"))
            continue
        image = images[int(index_text)]
        if image.ndim == 3:  # (H, W, C) RGB MedMNIST variants -> (H, W)
            image = image[..., :3].mean(axis=-1)
        results.append(resize_grey(image.astype(np.float32) / 255.0, data_config.image_size))
    return results


def _open_npz_images(file_part: str) -> dict[str, np.ndarray] | InputFileError:
    if not Path(file_part).is_file():
        return MissingFileError(file_part, "npz file does not exist")
    try:
        with np.load(file_part, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files if key.endswith("_images")}
    except (OSError, ValueError, EOFError) as error:
        return errors.UnreadableImageError(file_part, f"cannot open as npz: {error}")


def _decode_chunk(paths: list[str], data_config: DataConfig) -> list[np.ndarray | InputFileError]:
    """Decode a chunk of files in a decoding thread; a file that cannot be read gives its error."""
    outcomes: list[np.ndarray | InputFileError] = []
    for path in paths:
        try:
            outcomes.append(decode_file(path, data_config))
        except InputFileError as error:
            outcomes.append(error)
    return outcomes


def file_key(path: str) -> str | None:
    """The cache key of a file: digest of absolute path, size and mtime; None if it is missing."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    text = f"{os.path.abspath(path)}\0{status.st_size}\0{status.st_mtime_ns}"
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class PreprocessingCache:
    """The store of films' codes of one set of :class:`CacheParameters` under ``cache_dir``."""

    def __init__(self, cache_dir: str | Path, parameters: CacheParameters) -> None:
        self.parameters = parameters
        self.folder = Path(cache_dir) / parameters.digest()
        self.folder.mkdir(parents=True, exist_ok=True)
        description = self.folder / "parameters.json"
        if not description.exists():
            content = json.dumps(asdict(parameters), indent=2).encode()
            atomic_write(description, lambda stream: stream.write(content))
        self._index: dict[str, tuple[Path, int]] = {}
        self._lock = threading.Lock()
        self._load_index()

    def shards(self) -> list[Path]:
        """The complete shards, oldest first (temporary files are never listed)."""
        return sorted(self.folder.glob("shard-*.npz"))

    def _load_index(self) -> None:
        for shard in self.shards():
            try:
                with np.load(shard, allow_pickle=False) as archive:
                    keys = archive["keys"]
            except _UNREADABLE_SHARD as error:
                self._set_aside(shard, error)
                continue
            for row, key in enumerate(keys.astype(str)):
                self._index[key] = (shard, row)

    def _set_aside(self, shard: Path, error: Exception) -> None:
        logger.warning("cache shard %s is unreadable (%s); its films will be decoded again", shard, error)
        try:
            os.replace(shard, shard.with_suffix(".corrupt"))
        except OSError:
            pass

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        """Pixels of the given keys that are in the store, reading each shard once."""
        by_shard: dict[Path, list[tuple[str, int]]] = {}
        for key in keys:
            if key in self._index:
                shard, row = self._index[key]
                by_shard.setdefault(shard, []).append((key, row))
        found: dict[str, np.ndarray] = {}
        for shard, wanted in by_shard.items():
            try:
                with np.load(shard, allow_pickle=False) as archive:
                    pixels = archive["pixels"]  # (rows in shard, S, S) uint8 or uint16
            except _UNREADABLE_SHARD as error:
                self._set_aside(shard, error)
                for key, _ in wanted:
                    self._index.pop(key, None)
                continue
            for key, row in wanted:
                found[key] = canonical_film(pixels[row])
        return found

    def add(self, keys: list[str], pixels: list[np.ndarray]) -> Path | None:
        """Write one new shard atomically and index it."""
        if not keys:
            return None
        size = self.parameters.image_size
        stacked = stack_films(pixels).reshape(len(keys), size, size)
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        shard = self.folder / name
        # Readers see the whole shard or none, and it survives a power cut once add() returns.
        atomic_write(shard, lambda stream: np.savez(stream, keys=np.asarray(keys, dtype="S32"), pixels=stacked))
        with self._lock:
            for row, key in enumerate(keys):
                self._index[key] = (shard, row)
        return shard

    def compact(self, small_below: int = DEFAULT_FLUSH_EVERY) -> None:
        """Merge the small shards (fewer than ``small_below`` live films) when there are many.

        Many short runs each leave a small shard; full shards of a big build are left alone,
        so compaction never has to hold the whole store in memory.
        """
        live: dict[Path, int] = {}
        for shard, _ in self._index.values():
            live[shard] = live.get(shard, 0) + 1
        small = [shard for shard in self.shards() if live.get(shard, 0) < small_below]
        if len(small) <= COMPACT_ABOVE_SHARDS:
            return
        small_set = set(small)
        keys = [key for key, (shard, _) in self._index.items() if shard in small_set]
        pixels = self.get_many(keys)
        keys = [key for key in keys if key in pixels]
        merged = self.add(keys, [pixels[key] for key in keys])
        # The merged shard is complete before the old ones go; a crash in between only
        # leaves duplicates of identical films.
        for shard in small:
            if shard != merged:
                shard.unlink(missing_ok=True)
        logger.info("compacted %d small cache shards into %s", len(small), merged)


@dataclass
class PathGroups:
    """The files of one :func:`decode_many` call, each decoded once however often it is listed.

    Attributes:
        rows_by_key: cache key of a file -> the positions in ``paths`` that name it.
        path_of_key: cache key -> the first path that named it.
    """

    rows_by_key: dict[str, list[int]]
    path_of_key: dict[str, str]


def group_paths(paths: list[str], results: list[np.ndarray | InputFileError | None]) -> PathGroups:
    """Group the paths that still have no result by file; a missing file gets its error in ``results``."""
    groups = PathGroups({}, {})
    for row, path in enumerate(paths):
        if results[row] is not None:
            continue
        key = file_key(path)
        if key is None:
            results[row] = MissingFileError(path, "file does not exist")
            continue
        groups.rows_by_key.setdefault(key, []).append(row)
        groups.path_of_key.setdefault(key, path)
    return groups


class DecodedFilms:
    """Takes each decoded outcome into the results and writes the films to the cache in shards.

    A shard is written after ``flush_every`` new films or ``flush_seconds`` since the last one,
    so a killed run keeps most of what it decoded.
    """

    def __init__(
        self,
        results: list[np.ndarray | InputFileError | None],
        groups: PathGroups,
        cache: PreprocessingCache | None,
        flush_every: int,
        flush_seconds: float,
    ) -> None:
        self.results = results
        self.groups = groups
        self.cache = cache
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.decoded = 0  # films (rows of ``paths``) decoded in this call
        self.pending_keys: list[str] = []
        self.pending_pixels: list[np.ndarray] = []
        self.last_flush = time.monotonic()

    def accept(self, key: str, outcome: np.ndarray | InputFileError) -> None:
        """Give every row naming ``key`` its outcome; queue a decoded film for the cache."""
        for row in self.groups.rows_by_key[key]:
            self.results[row] = outcome
        if isinstance(outcome, np.ndarray):
            self.decoded += len(self.groups.rows_by_key[key])
            if self.cache is not None:
                self.pending_keys.append(key)
                self.pending_pixels.append(outcome)
                if (
                    len(self.pending_keys) >= self.flush_every
                    or time.monotonic() - self.last_flush >= self.flush_seconds
                ):
                    self.flush()

    def flush(self) -> None:
        """Write the queued films to the cache as one shard."""
        if self.cache is not None and self.pending_keys:
            self.cache.add(list(self.pending_keys), list(self.pending_pixels))
        self.pending_keys.clear()
        self.pending_pixels.clear()
        self.last_flush = time.monotonic()


def decode_many(
    paths: list[str],
    data_config: DataConfig,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = False,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    report: list[CacheReport] | None = None,
    serial_below: int = SERIAL_BELOW,
) -> list[np.ndarray | InputFileError]:
    """Decode every path to its (image_size, image_size) codes (:func:`decode_file`), or to the error
    that stopped it.

    Args:
        paths: image files, or ``FILE.npz#SPLIT/INDEX`` members (decoded in-process, not cached).
        data_config: image size and the pixel limit.
        cache_dir: folder of the persistent cache; None decodes everything without storing.
        workers: decoding threads; None uses one per core, 1 decodes in the calling thread.
        progress: show a progress bar.
        flush_every: write a shard after this many newly decoded films.
        flush_seconds: ... or after this many seconds since the last shard.
        report: if given, a :class:`CacheReport` of this call is appended to it.
        serial_below: fewer films to decode than this are decoded in the calling thread whatever
            ``workers`` says (``benchmarks/bench_decode_pool.py``).

    Returns:
        One entry per path, in order: the pixels, or the :class:`InputFileError` for that file.
    """
    started = time.perf_counter()
    cpu_started = time.process_time()
    results: list[np.ndarray | InputFileError | None] = [None] * len(paths)
    npz_rows = [row for row, path in enumerate(paths) if is_npz_member(path)]
    if npz_rows:
        for row, result in zip(npz_rows, decode_npz_members([paths[r] for r in npz_rows], data_config)):
            results[row] = result
    groups = group_paths(paths, results)

    cache = PreprocessingCache(cache_dir, CacheParameters.from_config(data_config)) if cache_dir else None
    reused = _reuse_cached(cache, groups, results) if cache is not None else 0
    missing_keys = [key for key, rows in groups.rows_by_key.items() if results[rows[0]] is None]
    worker_count = default_workers() if workers is None else max(1, int(workers))
    if len(missing_keys) < serial_below:
        worker_count = 1

    films = DecodedFilms(results, groups, cache, flush_every, flush_seconds)
    bar = tqdm(total=len(missing_keys), desc="decoding", disable=not progress, unit="img")
    try:
        if worker_count == 1:
            _decode_serially(missing_keys, groups.path_of_key, data_config, films.accept, bar)
        else:
            _decode_in_threads(missing_keys, groups.path_of_key, data_config, worker_count, films.accept, bar)
    finally:
        # Runs on Ctrl-C too: what was decoded is stored before the interrupt propagates.
        films.flush()
        bar.close()
        if cache is not None:
            cache.compact()

    failed = sum(isinstance(result, InputFileError) for result in results)
    if report is not None:
        report.append(
            CacheReport(
                len(paths),
                reused,
                films.decoded,
                failed,
                worker_count,
                time.perf_counter() - started,
                time.process_time() - cpu_started,
            )
        )
    logger.info(
        "decoded %d films, reused %d from the cache, %d failed, %d workers", films.decoded, reused, failed, worker_count
    )
    if any(result is None for result in results):  # a bug here must not pass as a silent drop
        raise RuntimeError("decode_many: internal error, some paths got no result")
    return results  # type: ignore[return-value]


def _reuse_cached(
    cache: PreprocessingCache, groups: PathGroups, results: list[np.ndarray | InputFileError | None]
) -> int:
    """Fill ``results`` with the films the cache holds; the number of rows so filled."""
    reused = 0
    for key, pixels in cache.get_many(list(groups.rows_by_key)).items():
        for row in groups.rows_by_key[key]:
            results[row] = pixels
        reused += len(groups.rows_by_key[key])
    return reused


def _decode_serially(
    keys: list[str],
    path_of_key: dict[str, str],
    data_config: DataConfig,
    accept: Callable[[str, np.ndarray | InputFileError], None],
    bar: tqdm,
) -> None:
    """Decode ``keys`` one after the other in this thread, passing each outcome to ``accept``."""
    for key in keys:
        try:
            accept(key, decode_file(path_of_key[key], data_config))
        except InputFileError as error:
            accept(key, error)
        bar.update(1)


def _decode_in_threads(
    keys: list[str],
    path_of_key: dict[str, str],
    data_config: DataConfig,
    worker_count: int,
    accept: Callable[[str, np.ndarray | InputFileError], None],
    bar: tqdm,
) -> None:
    """Decode ``keys`` in ``worker_count`` threads, passing each outcome to ``accept`` in this thread."""
    # Several chunks per thread keep the cores busy to the end; a chunk's results are stored
    # (and flushed to the cache) as soon as it is done.
    chunk_size = max(1, min(16, math.ceil(len(keys) / (worker_count * 8))))
    chunks = [keys[start : start + chunk_size] for start in range(0, len(keys), chunk_size)]
    executor = ThreadPoolExecutor(max_workers=worker_count, thread_name_prefix="cxr-anomaly-decode")
    try:
        in_flight: dict[Future, list[str]] = {}
        next_chunk = 0
        while next_chunk < len(chunks) or in_flight:
            # Bounded submission: at most a few chunks of decoded films wait in memory.
            while next_chunk < len(chunks) and len(in_flight) < worker_count * 3:
                chunk = chunks[next_chunk]
                future = executor.submit(_decode_chunk, [path_of_key[key] for key in chunk], data_config)
                in_flight[future] = chunk
                next_chunk += 1
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                chunk = in_flight.pop(future)
                for key, outcome in zip(chunk, future.result()):
                    accept(key, outcome)
                bar.update(len(chunk))
    except BaseException:
        # On Ctrl-C the threads finish the chunk in hand (at most 16 films) and take no more.
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
