"""Measure the scope rules (cxr_anomaly.scope) on the shared real collections.

For each collection: how many films each rule flags as they are (every flag on a frontal
collection is a false one; Kermany is paediatric, so only its ``paediatric`` flags are right),
and the pixel rule's hit rate on the same films turned 90 and 270 degrees (and, for the record,
180 degrees and mirrored, which it is not meant to see). The header rules are measured on real
films written as DICOM with the header values a lateral, non-chest or For Processing film carries.

Usage: python -m benchmarks.scope_rules --data ../shared/data --out benchmarks/scope_rules.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_anomaly.dicom import read_film_headers
from cxr_anomaly.io import read_image, resize_grey
from cxr_anomaly.scope import (
    IN_SCOPE,
    ROTATION_MARGIN,
    ROTATION_SIDE,
    decide_scope,
    rotation_evidence,
)

COLLECTIONS = ("rsna_normal224", "rsna_dev256", "nih_pneumonia256", "nih1000", "kermany224")
HEADER_CASES = {
    "lateral_view": {"ViewPosition": "LL", "BodyPartExamined": "CHEST"},
    "not_chest": {"ViewPosition": "PA", "BodyPartExamined": "HAND"},
    "for_processing": {"ViewPosition": "PA", "BodyPartExamined": "CHEST", "PresentationIntentType": "FOR PROCESSING"},
    "unknown_view": {"BodyPartExamined": "CHEST"},
    "in_scope": {"ViewPosition": "PA", "BodyPartExamined": "CHEST", "PresentationIntentType": "FOR PRESENTATION"},
}


def load_collection(folder: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest and every film at the rule's working size (uint8)."""
    manifest = pd.read_csv(folder / "manifest.csv")
    films = np.stack([resize_grey(read_image(folder / path).array, ROTATION_SIDE) for path in manifest["path"]])
    return manifest, films


def measure_collection(manifest: pd.DataFrame, films: np.ndarray) -> dict[str, object]:
    """Rule counts on the films as they are (as PNG input: no header) and the rotation hit rates."""
    ages = (
        pd.to_numeric(manifest["age"], errors="coerce")
        if "age" in manifest
        else pd.Series(np.nan, index=manifest.index)
    )
    views = manifest["view"] if "view" in manifest else pd.Series(None, index=manifest.index, dtype=object)
    reasons = Counter(
        decide_scope(
            None,
            film,
            fitted_on_adults=True,
            manifest_view=view if isinstance(view, str) else None,
            manifest_age=None if pd.isna(age) else float(age),
        ).reason
        for film, view, age in zip(films, views, ages)
    )
    turned = {
        name: np.array([rotation_evidence(transform(film)) for film in films])
        for name, transform in {
            "upright": lambda f: f,
            "rot90": lambda f: np.rot90(f, 1),
            "rot180": lambda f: np.rot90(f, 2),
            "rot270": lambda f: np.rot90(f, 3),
            "mirrored": lambda f: f[:, ::-1],
        }.items()
    }
    rotated_share = {name: float((evidence < ROTATION_MARGIN).mean()) for name, evidence in turned.items()}
    labels = manifest["label"].astype(str) if "label" in manifest else pd.Series("", index=manifest.index)
    normal = labels.isin(["0", "NORMAL", "0.0"]).to_numpy()
    upright_flags = turned["upright"] < ROTATION_MARGIN
    return {
        "films": len(films),
        "known_ages": int(ages.notna().sum()),
        "under_18": int((ages < 18).sum()),
        "reasons_as_png": dict(reasons),
        "share_flagged_as_png": 1.0 - reasons.get(IN_SCOPE, 0) / len(films),
        "rotated_flag_rate": rotated_share,
        "rotated_false_flags_normal_films": f"{int(upright_flags[normal].sum())} of {int(normal.sum())}",
        "upright_evidence_percentiles_1_5_50": np.percentile(turned["upright"], [1, 5, 50]).round(3).tolist(),
    }


def measure_header_rules(folder: Path, paths: list[str], workdir: Path) -> dict[str, dict[str, int]]:
    """Each header case written onto real films as DICOM, read back, decided: {case: {reason: count}}."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    results: dict[str, dict[str, int]] = {}
    for case, tags in HEADER_CASES.items():
        counts: Counter[str] = Counter()
        for index, path in enumerate(paths):
            film = read_image(folder / path).array
            pixels = np.clip(np.rint(film * 255), 0, 255).astype(np.uint8)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            dataset = Dataset()
            dataset.file_meta = meta
            dataset.SOPClassUID = SecondaryCaptureImageStorage
            dataset.Modality = "DX"
            for keyword, value in tags.items():
                setattr(dataset, keyword, value)
            dataset.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=8)
            meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
            target = workdir / f"{case}-{index}.dcm"
            dataset.save_as(target, enforce_file_format=True)
            header = read_film_headers([str(target)])[0]
            image = read_image(target).array
            counts[decide_scope(header, image, fitted_on_adults=True).reason] += 1
        results[case] = dict(counts)
    return results


def main() -> None:
    """Measure every collection and the header rules; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scope_rules.json"))
    parser.add_argument("--header-films", type=int, default=100, help="films of rsna_dev256 made into DICOM per case")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    report: dict[str, object] = {"machine": platform.processor() or platform.machine(), "collections": {}}
    for name in COLLECTIONS:
        manifest, films = load_collection(arguments.data / name)
        report["collections"][name] = measure_collection(manifest, films)  # type: ignore[index]
    dev = pd.read_csv(arguments.data / "rsna_dev256" / "manifest.csv")
    with tempfile.TemporaryDirectory() as workdir:
        report["header_rules_on_rsna_dev256_as_dicom"] = measure_header_rules(
            arguments.data / "rsna_dev256", dev["path"].head(arguments.header_films).tolist(), Path(workdir)
        )
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
