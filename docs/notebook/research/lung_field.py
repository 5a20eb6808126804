"""A lung-field crop without learnt weights, measured for issue 10 point 3 (research only).

No package on PyPI ships lung-segmentation weights that load without a download, so this is a
classical heuristic on a 64 px copy of each film: the darkest pixels (air), eroded so that the
lungs come apart from the air outside the body, then the largest dark region on each side of the
midline that touches neither side nor the bottom edge. The union of the two, with a margin, is the
lung field. A box that is implausible in size or place is replaced by the fixed 20% border crop of
the default (``DataConfig.border_crop = 0.2``), and :func:`lung_boxes` says which films fell back.

    python -m docs.notebook.research.features_probe dump --prep lung+detail64+equalize
    python -m docs.notebook.research.lung_field --figure docs/figures/lung_field_boxes.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.dataset import load_images

WORK_SIZE = 64  # every collection here keeps at least this much detail (NIH1000 is 64 px)
DARK_QUANTILES = (0.3, 0.4, 0.5)  # tried in turn until both lungs are found
FALLBACK = (0.2, 0.2, 0.8, 0.8)  # the default's fixed 20% border crop


@dataclass(frozen=True)
class LungBox:
    """Where a film was cropped, as fractions of its side: (top, left, bottom, right)."""

    top: float
    left: float
    bottom: float
    right: float
    found: bool  # False: no plausible lung field, the fixed crop was used


def _largest_dark_region_each_side(dark: np.ndarray) -> tuple[tuple[int, ...], ...] | None:
    """Bounding boxes (top, left, bottom, right) of the largest inner dark region left and right."""
    size = dark.shape[0]
    labels, _ = ndimage.label(ndimage.binary_erosion(dark, iterations=2))
    best: dict[str, tuple[float, tuple[int, ...]]] = {}
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = np.nonzero(labels[region] == index)
        rows, cols = rows + region[0].start, cols + region[1].start
        area = len(rows) / dark.size
        if area < 0.02:
            continue
        # air outside the body reaches a side or the bottom edge, or sits above the shoulders
        if cols.min() <= 1 or cols.max() >= size - 2 or rows.max() >= size - 2:
            continue
        if rows.min() <= 1 and rows.mean() < 0.3 * size:
            continue
        if not 0.1 * size < rows.mean() < 0.75 * size:
            continue
        side = "left" if cols.mean() < size / 2 else "right"
        if side not in best or area > best[side][0]:
            best[side] = (area, (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
    if len(best) < 2:
        return None
    return best["left"][1], best["right"][1]


def lung_box(film: np.ndarray) -> LungBox:
    """The lung field of one uint8 film (S, S), or the fixed 20% crop when none is plausible."""
    small = np.asarray(Image.fromarray(film).resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BOX), dtype=np.float32)
    small = ndimage.gaussian_filter(small, 1.0)
    ranks = small.ravel().argsort().argsort().reshape(small.shape) / small.size  # equalised
    for quantile in DARK_QUANTILES:
        regions = _largest_dark_region_each_side(ranks < quantile)
        if regions is None:
            continue
        (t1, l1, b1, r1), (t2, l2, b2, r2) = regions
        # the erosion took 2 px off each region; give them back with a margin of about 5%
        top, left = max(min(t1, t2) - 5, 0), max(min(l1, l2) - 4, 0)
        bottom, right = min(max(b1, b2) + 4, WORK_SIZE), min(max(r1, r2) + 4, WORK_SIZE)
        height, width = (bottom - top) / WORK_SIZE, (right - left) / WORK_SIZE
        centre_row, centre_col = (top + bottom) / 2 / WORK_SIZE, (left + right) / 2 / WORK_SIZE
        if 0.45 <= width <= 0.9 and 0.4 <= height <= 0.85 and 0.35 <= centre_col <= 0.65 and 0.3 <= centre_row <= 0.6:
            return LungBox(top / WORK_SIZE, left / WORK_SIZE, bottom / WORK_SIZE, right / WORK_SIZE, True)
    return LungBox(*FALLBACK, found=False)


def lung_boxes(pixels: np.ndarray) -> list[LungBox]:
    """:func:`lung_box` of each film of a uint8 batch (N, S, S)."""
    return [lung_box(film) for film in pixels]


def crop_lung_fields(pixels: np.ndarray) -> np.ndarray:
    """Crop each uint8 film (N, S, S) to its lung field and resize it back to (N, S, S)."""
    size = pixels.shape[-1]
    out = []
    for film in pixels:
        box = lung_box(film)
        pil_box = (box.left * size, box.top * size, box.right * size, box.bottom * size)
        out.append(np.asarray(Image.fromarray(film).resize((size, size), Image.Resampling.BILINEAR, box=pil_box)))
    return np.stack(out) if out else pixels


def found_rates(sets: dict[str, pd.DataFrame], cache: Path) -> pd.DataFrame:
    """Share of films whose lung field was found, by collection, view and label."""
    rows = []
    for name, manifest in sets.items():
        pixels = load_images(manifest, DataConfig(image_size=224), cache_dir=cache).pixels
        found = np.array([box.found for box in lung_boxes(pixels)])
        rows.append({"set": name, "group": "all", "films": len(found), "found": found.mean()})
        if "view" not in manifest or manifest["view"].isna().all():
            continue
        views, labels = manifest["view"].astype(str).to_numpy(), manifest["label"].to_numpy()
        for view in ("PA", "AP"):
            for label, word in ((0, "normal"), (1, "abnormal")):
                chosen = (views == view) & (labels == label)
                rows.append(
                    {"set": name, "group": f"{view} {word}", "films": int(chosen.sum()), "found": found[chosen].mean()}
                )
    return pd.DataFrame(rows)


def box_figure(sets: dict[str, pd.DataFrame], cache: Path, out: Path, per_set: int = 8) -> None:
    """A strip of ``per_set`` random films of each collection with their crop box (red: found)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    strips = []
    for manifest in sets.values():
        chosen = manifest.iloc[rng.choice(len(manifest), per_set, replace=False)]
        pixels = load_images(chosen, DataConfig(image_size=224), cache_dir=cache).pixels
        tiles = []
        for film in pixels:
            box = lung_box(film)
            image = Image.fromarray(film).convert("RGB")
            colour = (255, 0, 0) if box.found else (255, 200, 0)
            ImageDraw.Draw(image).rectangle(
                [box.left * 223, box.top * 223, box.right * 223, box.bottom * 223], outline=colour, width=3
            )
            tiles.append(np.asarray(image.resize((112, 112))))
        strips.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(strips, axis=0)).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/probe_cache"))
    parser.add_argument("--figure", type=Path, default=None, help="write the box strip here (PNG)")
    args = parser.parse_args()
    from .features_probe import collections  # the probe imports this module for its crop

    sets = collections()
    sets["rsna"] = sets["rsna"].iloc[:2000]  # the probe's training normals
    print(found_rates(sets, args.cache).round(2).to_string(index=False))
    if args.figure is not None:
        box_figure({name: sets[name] for name in ("rsna", "nih1000_val", "pneu_val")}, args.cache, args.figure)


if __name__ == "__main__":
    main()
