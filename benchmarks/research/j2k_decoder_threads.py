"""Whether a JPEG 2000 DICOM decoder runs side by side in the decoding threads (issue 31, point 3).

Run: ``python -m benchmarks.research.j2k_decoder_threads [--films 8] [--output FILE]``.

``cxr-anomaly score`` decodes in a pool of threads (:mod:`cxr_anomaly.data.cache`), which pays
only where the decoder releases the GIL. This script writes ``--films`` 12-bit JPEG 2000 lossless
DICOM films (``nih_fullres``, as :mod:`benchmarks.bench_score_bound` writes them), decodes frame 0
of each, twice over, in a pool of 1 thread and of 2 threads (two rounds each, alternating) with
each of pydicom's JPEG 2000 plugins installed here, pydicom's default choice, and imagecodecs
(where it is installed; not a dependency of the package), and prints the milliseconds a film and
the speed-up of 2 threads over 1. A 1024 px PNG decoded by Pillow is the control (it releases the GIL).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from benchmarks.bench_score_bound import DEFAULT_DATA, fullres_paths, twelve_bit_film, write_twelve_bit_dicom
from benchmarks.common import git_commit, machine_facts
from PIL import Image


def pydicom_decoder(plugin: str) -> Callable[[bytes], np.ndarray]:
    """Frame 0 of a DICOM file's bytes with one pydicom plugin ("" for pydicom's own choice)."""
    import pydicom
    from pydicom.pixels import pixel_array

    return lambda blob: pixel_array(pydicom.dcmread(io.BytesIO(blob)), index=0, decoding_plugin=plugin)


def imagecodecs_decoder() -> Callable[[bytes], np.ndarray] | None:
    """Frame 0 through imagecodecs' OpenJPEG, or None where imagecodecs is not installed."""
    try:
        import imagecodecs
    except ImportError:
        return None
    import pydicom
    from pydicom.encaps import generate_frames

    def decode(blob: bytes) -> np.ndarray:
        dataset = pydicom.dcmread(io.BytesIO(blob))
        return imagecodecs.jpeg2k_decode(next(generate_frames(dataset.PixelData, number_of_frames=1)))

    return decode


def milliseconds_a_film(decode: Callable[[bytes], np.ndarray], blobs: list[bytes], threads: int) -> float:
    """Wall milliseconds a film of decoding every blob in a pool of ``threads``."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, blobs))
    return 1000 * (time.perf_counter() - started) / len(blobs)


def main(argv: list[str] | None = None) -> int:
    """Write the films, time each decoder on 1 and 2 threads, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=8)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=Path("runs/j2k_decoder_threads.json"))
    arguments = parser.parse_args(argv)
    from pydicom.pixels.decoders import JPEG2000LosslessDecoder

    from cxr_anomaly.io import read_image

    sources = fullres_paths(arguments.data)[: arguments.films]
    blobs = []
    with tempfile.TemporaryDirectory() as work:
        for index, source in enumerate(sources):
            codes = np.clip(np.rint(read_image(source).array * 255.0), 0, 255).astype(np.uint8)
            path = write_twelve_bit_dicom(twelve_bit_film(codes), Path(work) / f"{index}.dcm", index, jpeg_2000=True)
            blobs.append(path.read_bytes())
    pngs = [source.read_bytes() for source in sources] * 2
    decoders: dict[str, tuple[Callable[[bytes], np.ndarray], list[bytes]]] = {
        "PNG, Pillow (control)": (lambda blob: np.asarray(Image.open(io.BytesIO(blob))), pngs)
    }
    for plugin in (*JPEG2000LosslessDecoder.available_plugins, ""):
        decoders[f"JPEG 2000, pydicom {plugin or 'default choice'}"] = (pydicom_decoder(plugin), blobs * 2)
    fast = imagecodecs_decoder()
    if fast is not None:
        decoders["JPEG 2000, imagecodecs"] = (fast, blobs * 2)
    reference = pydicom_decoder("")
    figures: dict[str, dict[str, float | bool]] = {}
    load_before = machine_facts()["load_average"]
    for name, (decode, data) in decoders.items():
        decode(data[0])  # imports, first-call set-up
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(2):
            for threads in (1, 2):
                times[threads].append(milliseconds_a_film(decode, data, threads))
        one, two = statistics.median(times[1]), statistics.median(times[2])
        figures[name] = {"one_thread_ms": one, "two_threads_ms": two, "speed_up": one / two}
        if name.startswith("JPEG 2000"):
            figures[name]["same_pixels"] = all(np.array_equal(decode(blob), reference(blob)) for blob in blobs)
        print(f"{name:<40} 1 thread {one:6.1f} ms, 2 threads {two:6.1f} ms a film: {one / two:.2f}x", flush=True)
    result = {
        "commit": git_commit(),
        "films": len(blobs),
        "load_before": load_before,
        "load_after": machine_facts()["load_average"],
        "cpu_model": machine_facts()["cpu_model"],
        "decoders": figures,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
