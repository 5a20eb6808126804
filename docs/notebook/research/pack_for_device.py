"""Write 64 px copies of the collections that issue 11's runs read, small enough to travel to a GPU machine.

The paper's model reads every film at 64x64 (``data.image_size = 64``); the cache holds exactly
those uint8 pixels. Saving them as 8-bit PNGs keeps them bit for bit: decoding such a PNG gives
``pixels / 255`` and resizing 64 to 64 is the identity, so a run on the copy sees the same
pixels as a run on the originals. The three collections shrink from 150 MB to about 30 MB,
under the device tool's 64 MiB limit on what travels.

Usage: python docs/notebook/research/pack_for_device.py OUT_DIR [DATA_DIR]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.cache import decode_many

COLLECTIONS = ("rsna_normal224", "nih1000", "nih_pneumonia256")
logger = logging.getLogger("pack_for_device")


def pack(collection_dir: Path, out_dir: Path, data_config: DataConfig) -> int:
    """Copy one collection's manifest and its films at ``data_config.image_size``; return the film count."""
    manifest = pd.read_csv(collection_dir / "manifest.csv")
    paths = [str(collection_dir / relative) for relative in manifest["path"]]
    decoded = decode_many(paths, data_config, progress=True)
    for relative, pixels in zip(manifest["path"], decoded):
        if not isinstance(pixels, np.ndarray):
            raise pixels  # the InputFileError names the file: no film is left out silently
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(target, optimize=True)
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    return len(manifest)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_root = Path(argv[0])
    data_root = Path(argv[1]) if len(argv) > 1 else Path("../shared/data")
    data_config = DataConfig(image_size=64)
    for name in COLLECTIONS:
        count = pack(data_root / name, out_root / name, data_config)
        logger.info("%s: %d films at %d px -> %s", name, count, data_config.image_size, out_root / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
