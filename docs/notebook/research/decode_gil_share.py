"""How much of decoding a film holds the GIL: a bound on how far decoding threads can scale.

``decode_many`` decodes in threads. They run side by side only while they are inside calls
that release the GIL: Pillow's PNG decoder and resizer, and NumPy's casts and clips. This
profiles :func:`cxr_anomaly.data.cache.decode_file` in one thread, and counts the time spent
in those calls. The rest is an upper bound on the GIL-held share ``h``, because NumPy
arithmetic written inline in a Python function is counted with that function. The GIL alone
keeps threads from decoding faster than ``1 / h`` cores' worth, whatever the core count.

    python -m docs.notebook.research.decode_gil_share --films 64

Films: the 20 ``nih_fullres`` 1024 px PNGs, uncompressed 8-bit DICOM copies of them (written to
a temporary folder), and 224 px ``rsna_normal224`` PNGs. They are decoded at the features
detector's input size.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

from benchmarks.bench_features import DEFAULT_DATA, dicom_copies

from cxr_anomaly.config import preset_config
from cxr_anomaly.data.cache import decode_file

# C calls that release the GIL while they work (Pillow's ImagingSectionEnter, NumPy's
# NPY_BEGIN_THREADS for large arrays, file reads).
RELEASING = (
    "'decode' of 'ImagingDecoder'",
    "'resize' of 'ImagingCore'",
    "'astype'",
    "_clip",
    "'copy' of",
    "PIL._imaging.fill",
    "'read' of",
)


def releasing_share(paths: list[str]) -> tuple[float, float]:
    """Milliseconds per film in one thread, and the share of it inside GIL-releasing calls."""
    data_config = preset_config("features").data
    decode_file(paths[0], data_config)  # imports and page cache
    profile = cProfile.Profile()
    profile.enable()
    for path in paths:
        decode_file(path, data_config)
    profile.disable()
    stats = pstats.Stats(profile)
    releasing = sum(
        row[2]
        for (filename, _, name), row in stats.stats.items()  # type: ignore[attr-defined]
        if filename == "~" and any(key in name for key in RELEASING)
    )
    total = stats.total_tt  # type: ignore[attr-defined]
    return 1000 * total / len(paths), releasing / total


def main() -> None:
    """Command-line entry point; prints one line per kind of film."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--films", type=int, default=64)
    args = parser.parse_args()
    fullres = sorted((args.data / "nih_fullres").glob("*.png"))
    small = sorted((args.data / "rsna_normal224" / "images").glob("*.png"))[: args.films]
    if not fullres or not small:
        raise FileNotFoundError(f"no nih_fullres or rsna_normal224 PNGs under {args.data}")
    with tempfile.TemporaryDirectory(prefix="decode_gil_share_") as folder:
        dicom = dicom_copies(fullres, args.films, Path(folder))["path"].tolist()
        kinds = {
            "1024 px PNG": [str(fullres[i % len(fullres)]) for i in range(args.films)],
            "1024 px DICOM": dicom,
            "224 px PNG": [str(path) for path in small],
        }
        for kind, paths in kinds.items():
            milliseconds, share = releasing_share(paths)
            print(
                f"{kind}: {milliseconds:.1f} ms a film under the profiler, {100 * share:.0f}% in GIL-releasing "
                f"calls: GIL held at most {100 * (1 - share):.0f}%, so the GIL alone caps threads at no less "
                f"than {1 / max(1 - share, 1e-9):.1f} cores' worth"
            )


if __name__ == "__main__":
    main()
