"""The demo's patient-disjoint clean-up and its pixel baselines, on the real NIH1000 manifest."""

from __future__ import annotations

from pathlib import Path

from cxr_anomaly.config import Config
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.demo import drop_test_patients, pixel_baselines


def test_no_patient_crosses_into_test_and_baselines_score_every_test_film(shared_data: Path) -> None:
    manifest = load_inputs(shared_data / "nih1000" / "manifest.csv")
    cleaned = drop_test_patients(manifest)
    test_patients = set(cleaned.loc[cleaned["split"] == "test", "patient_id"])
    assert not test_patients & set(cleaned.loc[cleaned["split"] != "test", "patient_id"])
    assert (cleaned["split"] == "test").sum() == (manifest["split"] == "test").sum()
    assert len(cleaned) < len(manifest)  # the given split shares patients: some films must go

    baselines = pixel_baselines(cleaned, Config())
    assert set(baselines) == {"PCA(5) reconstruction", "5-NN distance"}
    for metrics in baselines.values():
        assert (metrics["num_normal"], metrics["num_abnormal"]) == (100, 100)
        assert 0.0 <= metrics["auc"] <= 1.0
        assert set(metrics["auc_per_view"]) == {"AP", "PA"}
