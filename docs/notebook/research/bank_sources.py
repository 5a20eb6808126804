"""Validation AUC of the pooled kNN when the bank of normals also holds paediatric normals.

A fifth of ``nih_pneumonia256``'s normal PA films are children's, and the default detector's
bank holds adult films only (``rsna_normal224``). Children's normal films may then look
abnormal to it. This rebuilds the pooled bank with the checkpoint's fine-tuned backbone from
``--normals`` RSNA films, with or without the 1,108 normal films of the Kermany *train* split
(paediatric, Guangzhou; JPEG). It scores the validation films with the default pooled kNN
(k = 5). Validation films only (:mod:`docs.notebook.research.validate_checkpoints`); no Kermany
film is scored.

    python -m docs.notebook.research.bank_sources --model runs/demo/run/model.pt \\
        --manifest runs/demo/train_manifest.csv --normals 4500 --output runs/banks/bank_sources.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import cast

import pandas as pd
import torch
from benchmarks.bench_features import DEFAULT_DATA
from docs.notebook.research.features_probe import collections
from docs.notebook.research.pooled_knn_variants import knn_distance, unit_pooled
from docs.notebook.research.pooled_tta import rebuilt_bank_parser
from docs.notebook.research.validate_checkpoints import VALIDATION, load_features_model, view_row, write_rows

from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.models.features.torch_model import FeatureDetector


def kermany_train_normals(data_root: Path) -> pd.DataFrame:
    """The normal films (label 0) of the Kermany train split, read as every manifest is."""
    table = load_inputs(data_root / "kermany224" / "manifest.csv")
    return table[(table["split"] == "train") & (table["label"] == 0)].reset_index(drop=True)


def main() -> None:
    """Command-line entry point; prints one line per bank and writes them as JSON with ``--output``."""
    parser = rebuilt_bank_parser(__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    model = load_features_model(args.model)
    detector = cast(FeatureDetector, model.detector)
    started = time.perf_counter()
    adults = unit_pooled(detector, load_images(pd.read_csv(args.manifest).head(args.normals), model.config.data).pixels)
    children = unit_pooled(detector, load_images(kermany_train_normals(args.data), model.config.data).pixels)
    sets = collections()
    queries = {name: unit_pooled(detector, load_images(sets[name], model.config.data).pixels) for name in VALIDATION}
    print(
        f"features: {time.perf_counter() - started:.0f} s ({len(adults)} adult, {len(children)} paediatric normals)",
        flush=True,
    )
    generator = torch.Generator().manual_seed(0)
    same_size = adults[torch.randperm(len(adults), generator=generator)[: len(adults) - len(children)]]
    banks = {
        f"RSNA {len(adults)} (the default's source)": adults,
        f"RSNA {len(adults)} + Kermany train normals {len(children)}": torch.cat([adults, children]),
        f"RSNA {len(same_size)} + Kermany {len(children)} (same size as the default)": torch.cat([same_size, children]),
    }
    results: dict[str, dict[str, float]] = {}
    for name, bank in banks.items():
        scores = {collection: knn_distance(queries[collection], bank, 5).numpy() for collection in VALIDATION}
        results[name] = view_row(scores, sets)
        print(name, json.dumps({key: round(value, 3) for key, value in results[name].items()}), flush=True)
    write_rows(results, args.output)


if __name__ == "__main__":
    main()
