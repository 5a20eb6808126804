"""``make demo``: train on NIH1000's normals, evaluate on its test split, write a report.

NIH1000's given splits share patients between train and test. The demo keeps the given test
split (so its numbers compare with the pixel baselines quoted in the data's README) and removes
from train and validation every film of a patient who also appears in test, so that no patient
crosses splits. Pixel baselines (PCA reconstruction error, k-NN distance) run on the same
training normals and the same test films, beside the detector.

Usage: ``python -m cxr_anomaly.demo --data ../shared/data/nih1000 --out runs/demo``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .baselines import fit_and_score_baselines
from .config import Config, with_overrides
from .data.dataset import load_images
from .data.manifest import load_inputs
from .evaluation import compute_metrics
from .pipeline import evaluate_job, train_job

logger = logging.getLogger(__name__)


def drop_test_patients(manifest: pd.DataFrame) -> pd.DataFrame:
    """Remove train and val films of patients who have a film in the test split."""
    test_patients = set(manifest.loc[manifest["split"] == "test", "patient_id"].dropna())
    leaking = (manifest["split"] != "test") & manifest["patient_id"].isin(test_patients)
    logger.info("removing %d train/val films of %d patients who also appear in test",
                int(leaking.sum()), len(test_patients & set(manifest.loc[leaking, "patient_id"])))
    return manifest[~leaking].reset_index(drop=True)


def pixel_baselines(manifest: pd.DataFrame, config: Config) -> dict[str, dict[str, object]]:
    """Metrics of the PCA(5) and 5-NN pixel baselines, fitted on train+val normals, on test."""
    normals = manifest[(manifest["split"] != "test") & (manifest["label"] == 0)]
    test = manifest[manifest["split"] == "test"]
    scored = fit_and_score_baselines(load_images(normals, config.data).pixels,
                                     {"test": load_images(test, config.data).pixels}, config.data)
    labels = test["label"].to_numpy().astype(int)
    views = test["view"].to_numpy() if test["view"].notna().any() else None
    names = {"pca5": "PCA(5) reconstruction", "knn5": "5-NN distance"}
    return {names[key]: compute_metrics(labels, scores, views=views).to_dict()
            for key, scores in scored["test"].scores.items()}


def git_commit() -> str:
    """The current commit, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def format_auc(value: object) -> str:
    """An AUC for a table cell."""
    return "n/a" if value is None else f"{float(value):.3f}"


def write_report(out_dir: Path, metrics: dict[str, object], baselines: dict[str, dict[str, object]],
                 facts: dict[str, object]) -> Path:
    """Write ``report.md``: the detector's metrics beside the baselines, per view, with figures."""
    views = sorted(metrics.get("auc_per_view", {}))  # type: ignore[union-attr]
    header = "| method | AUC | average precision | " + " | ".join(f"AUC {v}" for v in views) + " |"
    lines = [
        "# cxr-anomaly demo report",
        "",
        f"Data: {facts['data']} ({facts['num_train']} normal training films, test split "
        f"{metrics['num_normal']} normal + {metrics['num_abnormal']} abnormal). "
        f"Variant {metrics['variant']}, {facts['epochs']} epochs, seed {facts['seed']}, "
        f"commit {facts['commit']}, {facts['machine']}, {facts['seconds']:.0f} s in all.",
        "",
        header,
        "|" + "---|" * (3 + len(views)),
    ]

    def row(name: str, values: dict[str, object]) -> str:
        per_view = values.get("auc_per_view", {})
        cells = " | ".join(format_auc(per_view.get(v)) for v in views)  # type: ignore[union-attr]
        return (f"| {name} | {format_auc(values.get('auc'))} | "
                f"{format_auc(values.get('average_precision'))} | {cells} |")

    lines.append(row(f"detector ({metrics['variant']})", metrics))
    lines += [row(name, values) for name, values in baselines.items()]
    lines += ["", "AUC of each score component alone: " + ", ".join(
        f"{name} {format_auc(value)}" for name, value in metrics["component_auc"].items()  # type: ignore[union-attr]
    ) + ".", ""]
    if metrics.get("threshold") is not None:
        lines += [f"At the stored threshold (95% specificity on normal validation films): sensitivity "
                  f"{format_auc(metrics.get('sensitivity_at_threshold'))}, specificity "
                  f"{format_auc(metrics.get('specificity_at_threshold'))}.", ""]
    lines += [
        "View position confounds abnormality here (abnormal films are more often AP); read the "
        "per-view columns before the overall AUC.",
        "",
        "![ROC](eval/roc.png)",
        "",
        "![Reconstructions](eval/reconstructions.png)",
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_demo(data: Path, out_dir: Path, *, epochs: int, seed: int, progress: bool = True) -> Path:
    """Run the whole demo and return the report's path."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    source = data / "manifest.csv" if (data / "manifest.csv").is_file() else data
    manifest = drop_test_patients(load_inputs(source))
    manifest_path = out_dir / "manifest_patient_disjoint.csv"
    manifest.to_csv(manifest_path, index=False)
    config = with_overrides(Config(), "train", epochs=epochs, seed=seed)
    trained = train_job([manifest_path], out_dir / "run", config, progress=progress)
    evaluation = evaluate_job(trained.checkpoint, [manifest_path], out_dir / "eval", split="test",
                              progress=progress)
    metrics = json.loads(evaluation.metrics_path.read_text())
    baselines = pixel_baselines(manifest, config)
    (out_dir / "baselines.json").write_text(json.dumps(baselines, indent=2))
    facts = {
        "data": str(data), "num_train": trained.num_train_images, "epochs": epochs, "seed": seed,
        "commit": git_commit(), "machine": f"{os.cpu_count()} CPU cores",
        "seconds": time.perf_counter() - started,
    }
    return write_report(out_dir, metrics, baselines, facts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cxr_anomaly.demo``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("CXR_ANOMALY_DATA", "../shared/data/nih1000")),
                        help="NIH1000 folder (with manifest.csv); default $CXR_ANOMALY_DATA or ../shared/data/nih1000")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--epochs", type=int, default=Config().train.epochs, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.data.exists():
        logger.error("data folder %s does not exist; set CXR_ANOMALY_DATA or pass --data", args.data)
        return 2
    report = run_demo(args.data, args.out, epochs=args.epochs, seed=args.seed)
    print(f"report: {report}")
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
