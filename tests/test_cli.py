"""End to end through the CLI on real NIH1000 films: train one short epoch, score, evaluate."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_anomaly.checkpoint import load_checkpoint
from cxr_anomaly.cli import main
from cxr_anomaly.jobs import evaluate, score


@pytest.fixture(scope="module")
def small_manifest(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 train normals, 12 val normals and 10 + 10 test films of NIH1000, patient-disjoint."""
    root = shared_data / "nih1000"
    table = pd.read_csv(root / "manifest.csv")
    table["path"] = [str(root / path) for path in table["path"]]
    test = pd.concat([table[(table.split == "test") & (table.label == label)].head(10) for label in (0, 1)])
    rest = table[~table.patient_id.isin(test.patient_id)]
    train = rest[(rest.split == "train") & (rest.label == 0)].head(48)
    val = rest[(rest.split == "valid") & (rest.label == 0)].head(12)
    manifest = pd.concat([train, val.assign(split="val"), test])
    path = tmp_path_factory.mktemp("nih") / "manifest.csv"
    manifest[["path", "label", "split", "patient_id", "view"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained_checkpoint(small_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    code = main(
        ["train", "--data", str(small_manifest), "--out", str(run_dir), "--epochs", "1", "--seed", "1", "--no-progress"]
    )
    assert code == 0
    return run_dir / "model.pt"


def test_train_writes_checkpoint_and_logs_what_it_used(trained_checkpoint: Path) -> None:
    assert trained_checkpoint.is_file()
    record = json.loads((trained_checkpoint.parent / "training_log.json").read_text())
    assert record["num_train_images"] == 48
    assert record["num_calibration_images"] == 12
    assert record["ignored_rows"]["abnormal"] == 0


def test_score_writes_path_score_and_components(trained_checkpoint: Path, shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "nih1000" / "test" / "1_abnormal"
    one_file = next(iter(sorted((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))))
    out = tmp_path / "scores.csv"
    assert (
        main(
            [
                "score",
                "--model",
                str(trained_checkpoint),
                str(one_file),
                str(folder),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    # the score, then the components of the detector's family: the default is the features family
    components = load_checkpoint(trained_checkpoint).detector.component_names
    assert components == ("gaussian", "pooled_knn", "patch_knn")
    assert list(table.columns[: 2 + len(components)]) == ["path", "score", *components]
    assert len(table) == 1 + len(list(folder.glob("*.png")))
    assert table["score"].notna().all() and table["percentile"].between(0, 100).all()


def test_evaluate_writes_metrics_roc_and_grid(trained_checkpoint: Path, small_manifest: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(small_manifest),
                "--out",
                str(tmp_path),
                "--no-progress",
                "--device",
                "cpu",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert (metrics["device"], metrics["precision"]) == ("cpu", "fp32")  # what the figures were computed in
    assert (metrics["num_normal"], metrics["num_abnormal"]) == (10, 10)
    assert metrics["copies_of_training_films"] == []  # the test films are patient-disjoint from training
    assert metrics["patients_shared_with_training"] == []
    # the pixel baselines, fitted on the 48 training normals the checkpoint recorded, on the same films
    assert set(metrics["baselines"]) == {"PCA(5) reconstruction, 64 px", "5-NN pixel distance, 64 px"}
    for baseline in metrics["baselines"].values():
        assert 0.0 <= baseline["auc"] <= 1.0 and set(baseline["auc_per_view"]) == set(metrics["auc_per_view"])
    assert 0.0 <= metrics["auc"] <= 1.0 and 0.0 <= metrics["average_precision"] <= 1.0
    assert set(metrics["auc_per_view"]) <= {"PA", "AP"} and metrics["auc_per_view"]
    assert metrics["method"] == "features" and metrics["detector"].startswith("features")
    assert "variant" not in metrics
    assert (tmp_path / "roc.png").stat().st_size > 1000
    assert (tmp_path / "films.png").stat().st_size > 1000
    assert not (tmp_path / "reconstructions.png").exists()


def test_evaluate_on_a_dicom_folder_reports_each_view_and_adults_from_the_headers(
    trained_checkpoint: Path, small_manifest: Path, tmp_path: Path, dicom_writer: Callable[..., Path]
) -> None:
    # A site's collection as it comes from a PACS: DICOM files in normal/ and abnormal/ folders,
    # no manifest, the view only in each file's ViewPosition.
    from PIL import Image

    test = pd.read_csv(small_manifest).query("split == 'test'")
    for index, row in enumerate(test.itertuples()):
        folder = tmp_path / "site" / ("abnormal" if row.label else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(row.path).convert("L"))
        dicom_writer(
            pixels,
            folder / f"IM{index:04d}",
            study_uid="1.2.3",
            sop_uid=f"1.2.3.{index}",
            view=row.view,
            age="015Y" if index == 0 else "040Y",
        )
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(tmp_path / "site"),
                "--out",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    expected = (
        test.groupby("view")["label"]
        .agg(lambda labels: {"normal": int((labels == 0).sum()), "abnormal": int((labels == 1).sum())})
        .to_dict()
    )
    assert metrics["num_per_view"] == expected
    assert set(metrics["auc_per_view"]) == set(expected) and metrics["auc_view_only"] is not None
    # ages from PatientAge: the adults' figures leave out the one film of a 15-year-old
    assert metrics["adults"]["num_excluded_minors_or_unknown_age"] == 1


def test_evaluate_names_a_test_film_that_is_a_training_film_through_another_pipeline(
    trained_checkpoint: Path, small_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import io

    from PIL import Image

    table = pd.read_csv(small_manifest)
    trained_on = Image.open(table.query("split == 'train'")["path"].iloc[3]).convert("L")
    # another exporter: upscaled, another contrast curve, JPEG
    larger = np.asarray(trained_on.resize((256, 256), Image.Resampling.LANCZOS)) / 255.0
    buffer = io.BytesIO()
    Image.fromarray((255 * larger**0.8).astype(np.uint8)).save(buffer, format="JPEG", quality=85)
    copy = tmp_path / "exported.jpg"
    copy.write_bytes(buffer.getvalue())
    test = table.query("split == 'test'")[["path", "label", "view"]]
    manifest = tmp_path / "with_copy.csv"
    pd.concat([test, pd.DataFrame({"path": [str(copy)], "label": [0], "view": ["PA"]})]).to_csv(manifest, index=False)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(manifest),
                "--out",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["copies_of_training_films"] == [str(copy)]
    assert "1 evaluated film(s) are copies of training films" in caplog.text and "exported.jpg" in caplog.text


def test_evaluate_fits_the_baselines_on_the_checkpoints_training_films_or_says_why_not(
    trained_checkpoint: Path,
    small_manifest: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cxr_anomaly.baselines import named_baseline_scores
    from cxr_anomaly.config import DataConfig
    from cxr_anomaly.data.dataset import load_images
    from cxr_anomaly.evaluation import safe_auc

    table = pd.read_csv(small_manifest)
    test = table.query("split == 'test'")
    films = tmp_path / "test.csv"
    test.to_csv(films, index=False)
    plotted: list[list[str]] = []
    real_plot_roc = evaluate.plot_roc
    monkeypatch.setattr(
        evaluate,
        "plot_roc",
        lambda curves, path, **options: (plotted.append(list(curves)), real_plot_roc(curves, path, **options))[1],
    )
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(films),
                "--out",
                str(tmp_path / "a"),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    # roc.png draws the baselines beside the detector, its views and the view-only score
    assert plotted and {"PCA(5) reconstruction, 64 px", "5-NN pixel distance, 64 px", "view only (AP = 1)"} <= set(
        plotted[0]
    )
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    # the same AUC as the baselines fitted by hand on the checkpoint's 48 training normals
    config = DataConfig(image_size=64)
    normals = load_images(table.query("split == 'train' and label == 0"), config).pixels
    expected = named_baseline_scores(normals, {"test": load_images(test, config).pixels})["test"]
    for name, scores in expected.items():
        assert metrics["baselines"][name]["auc"] == pytest.approx(safe_auc(test["label"].to_numpy(), scores))
        assert f"  {name}: AUC {metrics['baselines'][name]['auc']:.3f}; within PA" in printed
    assert "  view only (AP = 1): AUC" in printed
    # moved training data: the baselines are left out with a warning naming the fix
    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["training"]["data"] = [str(tmp_path / "gone.csv")]
    moved = tmp_path / "moved.pt"
    torch.save(payload, moved)
    assert (
        main(["evaluate", "--model", str(moved), "--data", str(films), "--out", str(tmp_path / "b"), "--no-progress"])
        == 0
    )
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["baselines"] is None
    assert "gone.csv" in caplog.text and "--baseline-train" in caplog.text
    # ... or given where they are now
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(moved),
                "--data",
                str(films),
                "--out",
                str(tmp_path / "c"),
                "--baseline-train",
                str(small_manifest),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["baselines"] == metrics["baselines"]


def test_evaluate_names_training_patients_and_training_films_among_the_evaluated_films(
    trained_checkpoint: Path, small_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = pd.read_csv(small_manifest)
    trained_on = table.query("split == 'train'").head(2)
    films = tmp_path / "leaky.csv"
    pd.concat([table.query("split == 'test'"), trained_on.assign(split="test")]).to_csv(films, index=False)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(films),
                "--out",
                str(tmp_path / "e"),
                "--no-baselines",
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["patients_shared_with_training"] == sorted(trained_on["patient_id"].astype(str))
    assert metrics["copies_of_training_films"] == trained_on["path"].tolist()  # the very same files
    assert metrics["baselines"] is None
    assert "2 patient(s) of the evaluated films also have training films" in caplog.text
    # films without patient ids: nothing can be checked, which is not "no patient shared"
    pd.concat([table.query("split == 'test'"), trained_on.assign(split="test")]).drop(columns="patient_id").to_csv(
        films, index=False
    )
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(films),
                "--out",
                str(tmp_path / "f"),
                "--no-baselines",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "f" / "metrics.json").read_text())["patients_shared_with_training"] is None


def test_training_on_abnormal_films_only_fails_with_a_clear_error(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = shared_data / "nih1000" / "test" / "1_abnormal"
    manifest = tmp_path / "abnormal.csv"
    pd.DataFrame({"path": sorted(str(p) for p in folder.glob("*.png"))[:5], "label": 1}).to_csv(manifest, index=False)
    assert main(["train", "--data", str(manifest), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "no normal (label 0) images" in caplog.text and "abnormal.csv" in caplog.text


def test_missing_input_names_the_file(
    trained_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nope.png"
    assert main(["score", "--model", str(trained_checkpoint), str(missing), "--out", str(tmp_path / "s.csv")]) == 2
    assert "nope.png" in caplog.text


def model_command(command: str, model: Path, film: Path, out: Path) -> list[str]:
    """A command line of ``command`` that reads ``model`` and writes under ``out``."""
    return {
        "score": ["score", "--model", str(model), str(film), "--out", str(out / "scores.csv")],
        "evaluate": ["evaluate", "--model", str(model), "--data", str(film), "--out", str(out / "eval")],
        "calibrate": ["calibrate", "--model", str(model), "--data", str(film), "--out", str(out / "new.pt")],
        "export": ["export", "--model", str(model), "--out", str(out / "model.onnx")],
        "serve": ["serve", "--model", str(model), "--port", "0"],
    }[command]


def assert_one_line_error(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """The run logged exactly one error, on one line, holding every fragment, and no traceback."""
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0], errors[0]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert "Traceback" not in capsys.readouterr().err
    return errors[0]


@pytest.mark.parametrize("command", ["score", "evaluate", "calibrate", "export", "serve"])
@pytest.mark.parametrize("wrong", ["text", "png", "folder"])
def test_a_model_that_is_not_a_checkpoint_gives_one_line_and_exit_2(
    command: str,
    wrong: str,
    shared_data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    film = next(iter(sorted((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))))
    expected = {
        "text": "the file is text, not a checkpoint",
        "png": "the file is a PNG image, not a checkpoint",
        "folder": "is a folder, not a checkpoint file",
    }[wrong]
    if wrong == "text":
        model = tmp_path / "model.pt"
        model.write_text("path,label\nfilm.png,0\n")
    elif wrong == "png":
        model = film
    else:
        model = tmp_path / "run"
        model.mkdir()
    assert main(model_command(command, model, film, tmp_path)) == 2
    assert_one_line_error(caplog, capsys, str(model), expected)


def test_a_truncated_checkpoint_gives_one_line_and_exit_2(
    trained_checkpoint: Path,
    shared_data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(trained_checkpoint.read_bytes()[:5000])
    film = next(iter(sorted((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))))
    assert main(model_command("score", model, film, tmp_path)) == 2
    assert_one_line_error(caplog, capsys, str(model), "damaged or truncated")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
def test_an_out_file_in_proc_is_refused_before_any_work(
    trained_checkpoint: Path, shared_data: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    film = next(iter(sorted((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))))
    assert main(["score", "--model", str(trained_checkpoint), str(film), "--out", "/proc/x.csv"]) == 2
    assert_one_line_error(caplog, capsys, "/proc/x.csv", "cannot write --out")
    assert not any("scored" in record.getMessage() for record in caplog.records)  # refused before scoring


@pytest.mark.parametrize("command", ["score", "evaluate", "export", "calibrate"])
def test_an_out_of_the_wrong_kind_gives_one_line_and_exit_2(
    command: str,
    trained_checkpoint: Path,
    shared_data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    film = next(iter(sorted((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))))
    arguments = model_command(command, trained_checkpoint, film, tmp_path)
    if command == "evaluate":  # a folder is wanted: give it an existing file
        wrong = tmp_path / "eval"
        wrong.write_text("")
        expected = "--out needs a folder, but this is a file"
    else:  # a file is wanted: give it an existing folder
        wrong = tmp_path / "a-folder"
        wrong.mkdir()
        arguments[arguments.index("--out") + 1] = str(wrong)
        expected = "--out needs a file name, but this is a folder"
    assert main(arguments) == 2
    assert_one_line_error(caplog, capsys, str(wrong), expected)


def test_an_out_below_a_file_gives_one_line_and_exit_2(
    trained_checkpoint: Path,
    shared_data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    film = next(iter(sorted((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))))
    (tmp_path / "scores.csv").write_text("")
    out = tmp_path / "scores.csv" / "worklist.html"
    assert (
        main(
            [
                "score",
                "--model",
                str(trained_checkpoint),
                str(film),
                "--out",
                str(tmp_path / "s.csv"),
                "--report",
                str(out),
            ]
        )
        == 2
    )
    assert_one_line_error(caplog, capsys, str(out), "is a file, not a folder")


def test_a_write_that_fails_during_the_job_gives_one_line_and_exit_2(
    trained_checkpoint: Path,
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "scores.csv"

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(score, "score_job", disk_full)
    film = next(iter(sorted((shared_data / "nih1000" / "test" / "0_normal").glob("*.png"))))
    assert main(["score", "--model", str(trained_checkpoint), str(film), "--out", str(out)]) == 2
    assert_one_line_error(caplog, capsys, f"{out}: No space left on device")


@pytest.fixture(scope="module")
def fullres_without_labels(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nih_fullres's 20 films with their labels in a column named ``outcome``, none named ``label``."""
    root = shared_data / "nih_fullres"
    table = pd.read_csv(root / "manifest.csv")
    table["path"] = [str(root / path) for path in table["path"]]
    table = table.rename(columns={"abnormal": "outcome"})
    assert "label" not in table.columns and set(table["outcome"]) == {0, 1}
    path = tmp_path_factory.mktemp("fullres") / "manifest.csv"
    table[["path", "patient_id", "finding_labels", "outcome", "view"]].to_csv(path, index=False)
    return path


def test_evaluate_without_labels_fails_naming_the_columns_found_and_the_one_needed(
    trained_checkpoint: Path,
    fullres_without_labels: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(fullres_without_labels),
                "--out",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        == 2
    )
    message = assert_one_line_error(
        caplog, capsys, str(fullres_without_labels), "nothing to measure", "needs column 'label'", "--label-column"
    )
    found = message.split("columns found: ", 1)[1].split(" (", 1)[0].split(", ")
    assert sorted(found) == ["finding_labels", "outcome", "path", "patient_id", "view"]
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_reads_labels_from_the_label_column_and_prints_rounded_metrics(
    trained_checkpoint: Path, fullres_without_labels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(fullres_without_labels),
                "--label-column",
                "outcome",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["num_normal"], metrics["num_abnormal"]) == (10, 10)
    printed = capsys.readouterr().out
    assert re.search(r"^AUC [01]\.\d{3} on all split", printed, re.MULTILINE), printed
    assert re.search(r"sensitivity [01]\.\d{3} \[[01]\.\d{3}, [01]\.\d{3}\]", printed), printed


@pytest.mark.parametrize(
    "column, expected",
    [
        ("nope", "no column 'nope' to read labels from"),
        ("finding_labels", "finding_labels 'No Finding' is not 0 (normal), 1 (abnormal) or empty"),
    ],
)
def test_evaluate_with_an_unusable_label_column_says_why(
    column: str,
    expected: str,
    trained_checkpoint: Path,
    fullres_without_labels: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(fullres_without_labels),
                "--label-column",
                column,
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 2
    )
    assert_one_line_error(caplog, capsys, str(fullres_without_labels), expected)


def test_evaluate_on_one_class_says_auc_needs_both(
    trained_checkpoint: Path,
    small_manifest: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = pd.read_csv(small_manifest)
    normals = tmp_path / "normals.csv"
    table[(table.split == "test") & (table.label == 0)].to_csv(normals, index=False)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(normals),
                "--out",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert_one_line_error(caplog, capsys, str(normals), "AUC needs both classes", "10 normal and 0 abnormal")
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_evaluate_fails_when_skipped_files_leave_one_class(
    trained_checkpoint: Path,
    small_manifest: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = pd.read_csv(small_manifest)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rows = pd.concat(
        [
            table[(table.split == "test") & (table.label == 0)].head(4),
            pd.DataFrame({"path": [str(broken)], "label": [1], "split": ["test"]}),
        ]
    )
    manifest = tmp_path / "manifest.csv"
    rows.to_csv(manifest, index=False)
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(trained_checkpoint),
                "--data",
                str(manifest),
                "--on-bad-file",
                "skip",
                "--out",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert_one_line_error(caplog, capsys, "AUC needs both classes", "4 normal and 0 abnormal")


def test_console_script_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cxr_anomaly.cli", "train", "--help"], capture_output=True, text=True, check=True
    )
    assert "--variant" in result.stdout and "normal" in result.stdout
