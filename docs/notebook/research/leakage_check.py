"""Are any test films also training films? Nearest `rsna_normal224` film of every NIH film, by pixels.

Usage::

    python -m docs.notebook.research.leakage_check --output leakage.json [--data ../shared/data]

Why: the RSNA challenge relabelled NIH ChestX-ray14 films, so `rsna_normal224` (the training
normals) and the NIH test collections come from one archive. The data README says exact
duplicates were removed; the same film through two pipelines (another resizer, another contrast)
would not be an exact duplicate. A test film present in the bank would sit at distance ~0 from it
and inflate a nearest-neighbour detector's AUC if it is normal.

How: every film decoded at ``--size`` px (64, what the pixel baselines read) and turned into the
package's signature (:mod:`cxr_anomaly.data.copies`: 32 px, each pixel's rank within the film, so
that no monotone contrast curve changes anything, centred, unit length); the correlation of each
NIH film with its most similar RSNA film. The RSNA films' correlation with their most similar *other*
RSNA film is the yardstick: two different films of this archive reach that much by chance. A
film of another collection far above it would be a copy.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from benchmarks.common import git_commit

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.copies import film_signatures
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs

logger = logging.getLogger("leakage_check")
QUANTILES = (0.5, 0.9, 0.99, 1.0)


def unit_films(manifest_path: Path, size: int) -> tuple[np.ndarray, list[str]]:
    """The films' signatures (:func:`cxr_anomaly.data.copies.film_signatures`, from the films
    decoded at ``size`` px), and their paths."""
    manifest = load_inputs(manifest_path)
    return film_signatures(load_images(manifest, DataConfig(image_size=size)).pixels), manifest["path"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--size", type=int, default=64, help="decoding size before the signature")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rsna, rsna_paths = unit_films(args.data / "rsna_normal224" / "manifest.csv", args.size)
    within = rsna @ rsna.T  # (5000, 5000)
    np.fill_diagonal(within, -1.0)
    yardstick = within.max(axis=1)
    result: dict[str, object] = {
        "commit": git_commit(),
        "size": args.size,
        "quantiles": QUANTILES,
        "rsna_nearest_other_rsna": {"quantiles": np.quantile(yardstick, QUANTILES).round(4).tolist()},
    }
    ceiling = float(yardstick.max())
    logger.info("rsna_normal224, nearest other RSNA film: quantiles %s", result["rsna_nearest_other_rsna"])
    for name in ("nih1000", "nih_pneumonia256"):
        films, paths = unit_films(args.data / name / "manifest.csv", args.size)
        similarity = films @ rsna.T  # (N, 5000)
        nearest, partner = similarity.max(axis=1), similarity.argmax(axis=1)  # (N,)
        order = np.argsort(-nearest)[:5]
        result[name] = {
            "films": len(paths),
            "quantiles": np.quantile(nearest, QUANTILES).round(4).tolist(),
            "above_rsna_internal_max": int((nearest > ceiling).sum()),
            "most_similar": [
                {
                    "path": "/".join(Path(paths[i]).parts[-3:]),
                    "correlation": round(float(nearest[i]), 4),
                    "rsna_film": Path(rsna_paths[partner[i]]).name,
                }
                for i in order
            ],
        }
        logger.info("%s: %s", name, result[name])
    args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
