"""Copy a reproduce run's ROC and Figure 2 into docs/figures as small greyscale PNGs."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parents[3] / "docs" / "figures"


def shrink(source: Path, target: Path, grey: bool) -> None:
    image = Image.open(source)
    image = image.convert("L") if grey else image.convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    if not grey:  # the ROC plot has few colours: a palette keeps it small
        image = image.quantize(colors=64)
    image.save(target, optimize=True)
    print(target, target.stat().st_size)


if __name__ == "__main__":
    run_dir, name = Path(sys.argv[1]), sys.argv[2]
    DOCS.mkdir(parents=True, exist_ok=True)
    shrink(run_dir / "roc.png", DOCS / f"issue4_{name}_roc.png", grey=False)
    shrink(run_dir / "figure2.png", DOCS / f"issue4_{name}_figure2.png", grey=True)
