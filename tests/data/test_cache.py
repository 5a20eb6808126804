"""The persistent preprocessing cache, on copies of real NIH films."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data import cache as cache_module
from cxr_anomaly.data.cache import (
    SERIAL_BELOW,
    CacheParameters,
    CacheReport,
    PreprocessingCache,
    decode_file,
    decode_many,
)
from cxr_anomaly.errors import MissingFileError, UnreadableImageError

CONFIG = DataConfig(image_size=32)


@pytest.fixture()
def films(shared_data: Path, tmp_path: Path) -> list[str]:
    """24 real NIH1000 films copied to a scratch folder (so the test may edit them)."""
    sources = sorted((shared_data / "nih1000" / "train" / "0_normal").glob("*.png"))[:24]
    folder = tmp_path / "films"
    folder.mkdir()
    paths = []
    for source in sources:
        target = folder / source.name
        shutil.copyfile(source, target)
        paths.append(str(target))
    return paths


def run(
    paths: list[str], cache_dir: Path, *, workers: int = 1, config: DataConfig = CONFIG, **options: object
) -> tuple[list, CacheReport]:
    reports: list[CacheReport] = []
    results = decode_many(paths, config, cache_dir=cache_dir, workers=workers, report=reports, **options)
    return results, reports[0]


def test_second_run_reuses_everything(films: list[str], tmp_path: Path) -> None:
    first, first_report = run(films, tmp_path / "cache")
    second, second_report = run(films, tmp_path / "cache")
    assert (first_report.decoded, first_report.reused) == (24, 0)
    assert (second_report.decoded, second_report.reused) == (0, 24)
    for path, cached in zip(films, second):
        np.testing.assert_array_equal(cached, decode_file(path, CONFIG))
        assert cached.shape == (32, 32) and cached.dtype == np.uint8


def test_threads_give_the_same_pixels_as_one_thread(films: list[str], tmp_path: Path) -> None:
    serial, _ = run(films, tmp_path / "serial", workers=1)
    pooled, report = run(films, tmp_path / "pooled", workers=2, serial_below=0)
    assert report.workers == 2
    for left, right in zip(serial, pooled):
        np.testing.assert_array_equal(left, right)


STDIN_SCRIPT = """
import sys
from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.cache import decode_many
results = decode_many(sys.argv[1:], DataConfig(image_size=32), workers=2, serial_below=0)
print(sum(result.shape == (32, 32) for result in results))
"""


def test_parallel_decoding_works_from_a_script_on_stdin(films: list[str]) -> None:
    """Worker processes re-imported the caller's main module, and one read from stdin cannot be
    (the pool broke); decoding threads share the caller's modules."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-", *films[:4]], input=STDIN_SCRIPT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "4"


def test_few_films_are_decoded_in_the_calling_thread_whatever_the_workers(films: list[str], tmp_path: Path) -> None:
    _, report = run(films[: SERIAL_BELOW - 1], tmp_path / "few", workers=2)
    assert report.workers == 1
    _, report = run(films[:4], tmp_path / "forced", workers=2, serial_below=0)
    assert report.workers == 2


def test_changed_file_is_decoded_again(films: list[str], tmp_path: Path) -> None:
    run(films, tmp_path / "cache")
    shutil.copyfile(films[1], films[0])  # new content, size and mtime for the first film
    os.utime(films[0], ns=(1, 1))
    results, report = run(films, tmp_path / "cache")
    assert (report.decoded, report.reused) == (1, 23)
    np.testing.assert_array_equal(results[0], results[1])


def test_changed_parameter_builds_a_new_store(films: list[str], tmp_path: Path) -> None:
    run(films, tmp_path / "cache")
    results, report = run(films, tmp_path / "cache", config=DataConfig(image_size=16))
    assert (report.decoded, report.reused) == (24, 0)
    assert results[0].shape == (16, 16)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_interrupted_build_keeps_finished_films(
    films: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"count": 0}
    real_decode = cache_module.decode_file

    def decode_then_interrupt(path: str, data_config: DataConfig) -> np.ndarray:
        calls["count"] += 1
        if calls["count"] > 10:
            raise KeyboardInterrupt
        return real_decode(path, data_config)

    monkeypatch.setattr(cache_module, "decode_file", decode_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(films, tmp_path / "cache", flush_every=1000, flush_seconds=1e9)
    monkeypatch.setattr(cache_module, "decode_file", real_decode)
    _, report = run(films, tmp_path / "cache")
    assert (report.reused, report.decoded) == (10, 14)


def test_half_written_or_corrupt_shards_are_never_trusted(films: list[str], tmp_path: Path) -> None:
    first, _ = run(films, tmp_path / "cache")
    store = PreprocessingCache(tmp_path / "cache", CacheParameters.from_config(CONFIG))
    (shard,) = store.shards()
    # A crash mid-write leaves only a temporary name; a damaged disk leaves a truncated shard.
    shutil.copyfile(shard, store.folder / f".{shard.name}.partial")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    results, report = run(films, tmp_path / "cache")
    assert (report.reused, report.decoded) == (0, 24)
    for left, right in zip(first, results):
        np.testing.assert_array_equal(left, right)
    assert list(store.folder.glob("*.corrupt"))


def test_bad_files_come_back_with_their_own_error_from_the_pool(films: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(films[0]).read_bytes()[:300])
    paths = films + [str(empty), str(truncated), str(tmp_path / "absent.png")]
    results, report = run(paths, tmp_path / "cache", workers=2, serial_below=0)
    assert report.failed == 3
    assert isinstance(results[-3], UnreadableImageError) and results[-3].path == str(empty)
    assert isinstance(results[-2], UnreadableImageError) and results[-2].path == str(truncated)
    assert isinstance(results[-1], MissingFileError)
    _, again = run(paths, tmp_path / "cache", workers=2, serial_below=0)
    assert (again.reused, again.failed) == (24, 3)  # failures are retried, never cached


def test_benchmark_smoke_mode_writes_its_json(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # the repository root
    from benchmarks import bench_cache

    output = tmp_path / "bench.json"
    assert (
        bench_cache.main(
            ["--smoke", "--workers", "2", "--source", str(shared_data / "nih_fullres"), "--output", str(output)]
        )
        == 0
    )
    result = json.loads(output.read_text())
    assert result["films"] == 20 and result["cores"] == 2
    assert result["reused_films"] == 20 and result["decoded_on_reuse"] == 0
    assert result["single_core_rate"] > 0 and result["build_rate"] > 0
    assert result["ceiling_rate"] == pytest.approx(2 * result["single_core_rate"])


KILLED_BUILD = """
import sys, time
from cxr_anomaly.config import DataConfig
from cxr_anomaly.data import cache

real_decode = cache.decode_file
def slow_decode(path, data_config):
    time.sleep(0.03)  # long enough for the parent to kill the build half-way
    return real_decode(path, data_config)
cache.decode_file = slow_decode
paths = sys.argv[2:]
print("started", flush=True)
cache.decode_many(paths, DataConfig(image_size=32), cache_dir=sys.argv[1], workers=1, flush_every=4)
"""


def test_killed_build_leaves_only_whole_shards(films: list[str], tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    # 24 films at 30 ms each; the build is killed as soon as its first shard of 4 appears.
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILD, str(tmp_path / "cache"), *films], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 60
    while not list((tmp_path / "cache").glob("*/shard-*.npz")) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # no finally block runs: the hardest interruption
    process.wait()
    store = PreprocessingCache(tmp_path / "cache", CacheParameters.from_config(CONFIG))
    kept = len(store)
    assert 0 < kept < 24 and kept % 4 == 0  # whole shards of 4 films, never a partial one
    results, report = run(films, tmp_path / "cache")
    assert (report.reused, report.decoded) == (kept, 24 - kept)
    for path, pixels in zip(films, results):
        np.testing.assert_array_equal(pixels, decode_file(path, CONFIG))


def test_many_small_runs_are_compacted(films: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "COMPACT_ABOVE_SHARDS", 4)
    for count in range(1, 8):  # seven runs, each adding one film: seven one-film shards
        run(films[:count], tmp_path / "cache")
    store = PreprocessingCache(tmp_path / "cache", CacheParameters.from_config(CONFIG))
    assert len(store.shards()) <= 4 and len(store) == 7
    results, report = run(films[:7], tmp_path / "cache")
    assert report.reused == 7
    for path, pixels in zip(films, results):
        np.testing.assert_array_equal(pixels, decode_file(path, CONFIG))


def record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of the files and folders that ``os.fsync`` is called on (Linux: /proc/self/fd)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_cache_writes_are_durable(films: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13 point 9: shard and parameters.json go through files.atomic_write, which also
    # fsyncs the folder so that the rename itself survives a power cut.
    synced = record_fsyncs(monkeypatch)
    run(films[:8], tmp_path / "cache")
    store = PreprocessingCache(tmp_path / "cache", CacheParameters.from_config(CONFIG))
    (shard,) = store.shards()
    names = [Path(path).name for path in synced]
    assert any(name.startswith(f".{shard.name}.") for name in names), synced  # the shard's temporary
    assert any(name.startswith(".parameters.json.") for name in names), synced
    assert names.count(store.folder.name) >= 2, synced  # the folder, after each rename


def test_a_failed_shard_write_leaves_nothing(films: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = PreprocessingCache(tmp_path / "cache", CacheParameters.from_config(CONFIG))
    pixels = [decode_file(path, CONFIG) for path in films[:4]]

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.add(["a", "b", "c", "d"], pixels)
    assert sorted(path.name for path in store.folder.iterdir()) == ["parameters.json"]
    assert len(store) == 0


def test_a_store_of_an_older_format_is_never_read(films: list[str], tmp_path: Path) -> None:
    """Format 4 keeps films of more than 256 grey levels at 16 bits: format 3's 8-bit copies are stale."""
    current = CacheParameters.from_config(CONFIG)
    assert current.format_version == cache_module.CACHE_FORMAT_VERSION == 4
    older = CacheParameters(current.image_size, current.max_image_pixels, format_version=3)
    stale = np.full((32, 32), 7, dtype=np.uint8)  # what an older decoder might have stored
    PreprocessingCache(tmp_path / "cache", older).add(
        [cache_module.file_key(path) for path in films], [stale] * len(films)
    )
    results, report = run(films, tmp_path / "cache")
    assert (report.decoded, report.reused) == (24, 0)
    for path, pixels in zip(films, results):
        np.testing.assert_array_equal(pixels, decode_file(path, CONFIG))


def test_sixteen_bit_films_keep_their_depth_through_the_cache(films: list[str], tmp_path: Path) -> None:
    """A film of more than 256 grey levels is stored and read back as its uint16 codes; the 8-bit
    films stored in the same (uint16) shard come back as their uint8 codes."""
    from PIL import Image

    # a 16-bit PNG of a smooth ramp plus the film: thousands of grey levels
    film = np.asarray(Image.open(films[0]).convert("L"), dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, film.size).reshape(film.shape)
    sixteen = np.rint((0.7 * film / 255.0 + 0.3 * ramp) * 40000 + 1000).astype(np.uint16)
    wide_path = str(tmp_path / "films" / "wide.png")
    Image.fromarray(sixteen).save(wide_path)
    paths = [wide_path, *films[:3]]
    first, _ = run(paths, tmp_path / "cache")
    second, report = run(paths, tmp_path / "cache")
    assert report.reused == 4
    assert first[0].dtype == np.uint16 and len(np.unique(first[0])) > 256
    for decoded, cached, path in zip(first, second, paths):
        assert cached.dtype == decoded.dtype and np.array_equal(cached, decoded)
        np.testing.assert_array_equal(cached, decode_file(path, CONFIG))
    shard = PreprocessingCache(tmp_path / "cache", CacheParameters.from_config(CONFIG)).shards()[0]
    with np.load(shard) as archive:
        assert archive["pixels"].dtype == np.uint16
