"""The demo's pieces, cheaply: its test collections (patient-disjoint halves), the pixel baselines,
the verdict and the report. The full demo (fit on rsna_normal224, test on NIH) is not run here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_anomaly.baselines import BASELINE_NAMES
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.data.rsna_dev import validation_and_test_halves
from cxr_anomaly.data.splits import split_patients_in_halves
from cxr_anomaly.evaluation import compute_metrics
from cxr_anomaly.jobs import demo  # the module, not its names: pytest would collect ``test_collections``


def test_split_patients_in_halves_keeps_each_patient_in_one_half(shared_data: Path) -> None:
    manifest = load_inputs(shared_data / "nih_pneumonia256" / "manifest.csv")
    halves = split_patients_in_halves(manifest, seed=0)
    assert len(halves) == len(manifest) and set(halves["split"]) == {"val", "test"}
    val_patients = set(halves.loc[halves["split"] == "val", "patient_id"])
    test_patients = set(halves.loc[halves["split"] == "test", "patient_id"])
    assert not val_patients & test_patients
    assert len(val_patients) == len(set(manifest["patient_id"])) // 2
    assert halves["split"].tolist() == split_patients_in_halves(manifest, seed=0)["split"].tolist()  # seeded
    assert halves["split"].tolist() != split_patients_in_halves(manifest, seed=1)["split"].tolist()
    assert "split" not in manifest or manifest["split"].isna().all()  # the input is not changed


def test_films_without_a_patient_id_count_as_their_own_patient() -> None:
    manifest = pd.DataFrame(
        {
            "path": [f"f{index}.png" for index in range(6)],
            "label": [0, 1, 0, 1, 0, 1],
            "patient_id": ["a", "a", None, None, None, "b"],
        }
    )
    for seed in range(6):
        halves = split_patients_in_halves(manifest, seed=seed)
        assert halves.loc[0, "split"] == halves.loc[1, "split"]  # patient a stays together
        # five patients (a, b and three films of their own): two of them in val
        val = halves[halves["split"] == "val"]
        assert len(val) - int(val["patient_id"].eq("a").sum() > 0) == 2


def test_the_demo_tests_on_nih1000_test_and_the_test_halves_of_nih_pneumonia256_and_rsna_dev256(
    shared_data: Path, tmp_path: Path
) -> None:
    collections = demo.test_collections(shared_data)
    assert [collection.name for collection in collections] == [
        "NIH1000 test",
        "nih_pneumonia256 test half",
        "rsna_dev256 test half, normal vs lung opacity",
        "rsna_dev256 test half, normal vs any abnormality",
    ]
    nih, pneumonia, opacity, any_abnormality = (collection.manifest for collection in collections)
    # rsna_dev256: the test half only, one task's films each; Not Normal films are not in the opacity task
    halves = validation_and_test_halves(load_inputs(shared_data / "rsna_dev256" / "manifest.csv"))
    test_paths = set(halves.loc[halves["split"] == "test", "path"])
    assert set(any_abnormality["path"]) == test_paths and len(test_paths) == 369
    assert set(opacity["path"]) < test_paths and set(opacity["class"]) == {"Normal", "Lung Opacity"}
    assert opacity["label"].eq(opacity["class"].eq("Lung Opacity").astype(int)).all()
    assert any_abnormality["label"].eq(any_abnormality["class"].ne("Normal").astype(int)).all()
    assert (nih["split"] == "test").all() and len(nih) == 200
    assert set(nih["label"]) == {0, 1}
    full = load_inputs(shared_data / "nih_pneumonia256" / "manifest.csv")
    halves = split_patients_in_halves(full, seed=0)
    assert pneumonia["path"].tolist() == halves.loc[halves["split"] == "test", "path"].tolist()
    # no patient of the test half is in the validation half on which settings were chosen
    assert not set(pneumonia["patient_id"]) & set(halves.loc[halves["split"] == "val", "patient_id"])
    assert set(pneumonia["label"]) == {0, 1} and set(pneumonia["view"]) == {"AP", "PA"}
    assert demo.test_collections(tmp_path) == []  # collections that are absent are left out


def test_pixel_baselines_score_every_test_film(shared_data: Path, tmp_path: Path) -> None:
    train = load_inputs(shared_data / "rsna_normal224" / "manifest.csv").iloc[:40]
    nih = load_inputs(shared_data / "nih1000" / "manifest.csv")
    test = nih[nih["split"] == "test"].groupby("label").head(10)
    collection = demo.TestCollection("small", test)
    results = demo.baseline_metrics(train, [collection], num_resamples=20)
    assert set(results.metrics) == set(results.scores) == {"small"}
    baselines = results.metrics["small"]
    assert set(baselines) == set(results.scores["small"]) == set(BASELINE_NAMES.values())
    for scores in results.scores["small"].values():
        assert scores.shape == (20,) and np.all(np.isfinite(scores))
    # the ROC figure of the report: detector, baselines and the view alone, overall and per view
    darkness = np.arange(20, dtype=np.float64)
    figure = demo.roc_panels(collection, "detector", darkness, results.scores["small"], tmp_path / "roc.png")
    assert figure.is_file() and figure.stat().st_size > 1000
    for metrics in baselines.values():
        assert (metrics["num_normal"], metrics["num_abnormal"]) == (10, 10)
        assert 0.0 <= metrics["auc"] <= 1.0
        assert set(metrics["auc_per_view"]) <= {"AP", "PA"} and metrics["auc_per_view"]
        assert metrics["intervals"]["auc"]["low"] <= metrics["auc"] <= metrics["intervals"]["auc"]["high"]


def fake_metrics(strength_pa: float, strength_ap: float, seed: int = 0) -> dict[str, object]:
    """Metrics as ``evaluate_job`` writes them, of a score that separates PA films by
    ``strength_pa`` and AP films by ``strength_ap`` (standard deviations); 40 films per view."""
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], 40)
    views = np.repeat(["PA", "AP"], 40)
    strength = np.where(views == "PA", strength_pa, strength_ap)
    scores = rng.normal(size=80) + labels * strength
    ages = np.where(np.arange(80) % 4 == 0, 10, 50)
    return compute_metrics(
        labels, scores, views=views, ages=ages, num_resamples=50, components={"part": scores}
    ).to_dict()


def test_verdict_says_where_the_detector_beats_each_baseline() -> None:
    detector = fake_metrics(3.0, 3.0)
    weak, strong = fake_metrics(0.0, 0.0, seed=1), fake_metrics(6.0, 0.0, seed=2)
    lines = demo.verdict(detector, {"weak": weak, "strong in PA": strong})
    text = "\n".join(lines)
    assert "Against the view alone" in text
    assert "Within PA films" in text and "Within AP films" in text
    assert "above 0.5 with 95% confidence" in text
    (weak_line,) = [line for line in lines if line.startswith("- Against weak")]
    assert "Beats it within each view." in weak_line and "does NOT beat" not in weak_line
    (strong_line,) = [line for line in lines if line.startswith("- Against strong in PA")]
    assert "within PA" in strong_line and "does NOT beat" in strong_line
    assert "Does not beat it within each view." in strong_line
    # a detector no better than chance is not called better than 0.5
    chance = demo.verdict(fake_metrics(0.0, 0.0, seed=3), {})
    assert any("not clearly above 0.5" in line for line in chance)


def test_report_has_a_table_and_a_verdict_per_collection(tmp_path: Path) -> None:
    detector = {**fake_metrics(2.0, 1.0), "detector": "features (pooled_knn)"}
    detector["sensitivity_at_threshold"] = 0.5
    detector["bootstrap_95ci"] = {
        name: {"estimate": 0.5, "low": 0.3, "high": 0.7} for name in ("sensitivity", "specificity")
    }
    baselines = {name: fake_metrics(0.5, 0.5, seed=index) for index, name in enumerate(BASELINE_NAMES.values())}
    facts = {
        "detector": "features (pooled_knn)",
        "train_data": "rsna_normal224",
        "num_train": 100,
        "num_calibration": 10,
        "commit": "abc1234",
        "machine": "test machine",
        "seconds": 12.0,
        "fit_seconds": 3.0,
        "folders": {"NIH1000 test": demo.folder_name("NIH1000 test")},
        "copies": {"NIH1000 test": []},
    }
    path = demo.write_report(tmp_path, {"NIH1000 test": detector}, {"NIH1000 test": baselines}, facts)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert text.startswith("# cxr-anomaly demo report")
    assert "## NIH1000 test" in text and "40 normal + 40 abnormal films" in text
    assert "PA 20 normal + 20 abnormal" in text
    assert "| **detector** (features (pooled_knn)) | " in text
    for name in BASELINE_NAMES.values():
        assert f"| {name} | " in text
    assert "| view only (AP = abnormal) |" in text
    assert demo.cell(detector, "auc") in text  # "0.xxx [low, high]"
    assert "Each component alone (overall AUC): part " in text
    assert "sensitivity 0.500 [0.300, 0.700]" in text
    assert "Verdict:" in text and "- Against PCA(5) reconstruction, 64 px:" in text
    assert "](eval/nih1000_test/roc" in text and "](eval/nih1000_test/films.png)" in text
    assert "Commit abc1234" in text and "fitted and scored in fp32 on every machine" in text
    assert "No film here is a copy of a training film" in text
    copied = demo.write_report(
        tmp_path,
        {"NIH1000 test": detector},
        {"NIH1000 test": baselines},
        {**facts, "copies": {"NIH1000 test": ["a.png (normal, 0.9990)"]}},
    ).read_text()
    assert "**1 film(s) here are copies of training films**" in copied and "a.png (normal, 0.9990)" in copied


def test_small_helpers() -> None:
    assert demo.folder_name("nih_pneumonia256 test half") == "nih_pneumonia256_test_half"
    metrics = {
        "intervals": {"auc": {"estimate": 0.61, "low": 0.5, "high": 0.7}},
        "adults": {"intervals": {"auc": {"estimate": 0.7, "low": None, "high": None}}},
    }
    assert demo.cell(metrics, "auc") == "0.610 [0.500, 0.700]"
    assert demo.cell(metrics, "auc_view_PA") == "n/a" and demo.cell({}, "auc") == "n/a"
    assert demo.adult_cell(metrics, "auc") == "0.700" and demo.adult_cell({}, "auc") == "n/a"
    assert demo.interval_of(metrics, "auc").estimate == pytest.approx(0.61)
    assert demo.interval_of(metrics, "absent").estimate is None


def test_a_fit_is_reused_only_when_it_was_made_the_same_way(tiny_nih_model, tmp_path: Path) -> None:
    """``--reuse-fit`` scores the run folder's checkpoint only if settings and films match."""
    from cxr_anomaly.checkpoint import load_checkpoint
    from cxr_anomaly.config import with_overrides
    from cxr_anomaly.errors import CheckpointError

    run_dir = tiny_nih_model.checkpoint.parent
    loaded = load_checkpoint(tiny_nih_model.checkpoint)
    record = loaded.training
    data = Path(record["data"][0])
    used = record["num_train_images"] + record["num_calibration_images"]
    reused = demo.reuse_fit(run_dir, loaded.config, data, used)
    assert reused.outcome.checkpoint == tiny_nih_model.checkpoint
    assert reused.outcome.num_train_images == record["num_train_images"] and reused.seconds == record["seconds"]
    with pytest.raises(CheckpointError, match=r"other settings \{'train.seed'"):
        demo.reuse_fit(run_dir, with_overrides(loaded.config, "train", seed=loaded.config.train.seed + 1), data, used)
    with pytest.raises(CheckpointError, match="fitted on"):
        demo.reuse_fit(run_dir, loaded.config, data, used + 1)
    with pytest.raises(CheckpointError, match="no fitted model to reuse"):
        demo.reuse_fit(tmp_path, loaded.config, data, used)


def test_the_demo_fits_and_scores_in_fp32_even_where_bf16_is_native(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One report on every machine: ``auto`` would pick bf16 on a CPU with native bf16."""
    from cxr_anomaly.jobs.train import TrainOutcome

    monkeypatch.setattr("cxr_anomaly.inference.native_bf16", lambda device: True)
    calls: dict[str, object] = {}

    class Stop(Exception):
        pass

    def train_job(sources: list[Path], run_dir: Path, config: object, **_: object) -> TrainOutcome:
        calls["fit"] = config.train.precision  # type: ignore[attr-defined]
        return TrainOutcome(run_dir / "model.pt", 1, 1, [])

    def evaluate_job(*_: object, precision: str = "auto", **__: object) -> None:
        calls["score"] = precision
        raise Stop

    monkeypatch.setattr(demo, "train_job", train_job)
    monkeypatch.setattr(demo, "evaluate_job", evaluate_job)
    with pytest.raises(Stop):
        demo.run_demo(shared_data, tmp_path, max_train_normals=4, progress=False)
    assert calls == {"fit": "fp32", "score": "fp32"} == {"fit": demo.DEMO_PRECISION, "score": demo.DEMO_PRECISION}
