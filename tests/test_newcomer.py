"""What a new user trips on (issue 29, point 4): missing extras, stale --help text, the heatmap's
legend, a busy port, an empty --out after a failure, files written outside the checkout, the torch pin."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement

from cxr_anomaly.cli import build_parser, main
from cxr_anomaly.config import Config
from cxr_anomaly.models.tang2019.config import tang2019_config

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def run_cli_without(modules: list[str], arguments: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``cxr-anomaly ARGUMENTS`` in a fresh interpreter where ``modules`` cannot be imported,
    as after a plain ``pip install .``."""
    code = (
        "import sys\n"
        f"for name in {modules!r}:\n    sys.modules[name] = None  # import raises ModuleNotFoundError\n"
        "from cxr_anomaly.cli import main\n"
        f"sys.exit(main({arguments!r}))\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300, check=False
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_without_the_serve_extra_says_which_extra_in_one_line(tmp_path: Path) -> None:
    result = run_cli_without(
        ["fastapi", "uvicorn"], ["serve", "--model", str(tmp_path / "model.pt"), "--port", str(free_port())]
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cxr-anomaly[serve]'" in lines[0]


def test_export_without_the_onnx_extra_says_which_extra_in_one_line(tiny_nih_model, tmp_path: Path) -> None:
    result = run_cli_without(
        ["onnx", "onnxruntime"],
        ["export", "--model", str(tiny_nih_model.checkpoint), "--out", str(tmp_path / "model.onnx")],
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert "Traceback" not in result.stderr
    assert len(errors) == 1 and "pip install 'cxr-anomaly[onnx]'" in errors[0]


def rendered_help() -> dict[str, str]:
    """Every subcommand's --help text, as argparse prints it."""
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return {name: subparser.format_help() for name, subparser in commands.choices.items()}


def test_no_help_text_shows_a_doubled_percent_sign() -> None:
    helps = rendered_help()
    assert {name for name, text in helps.items() if "%%" in text} == set()
    fraction = Config().train.calibration_fraction
    assert f"{fraction:.0%} of the normals" in " ".join(helps["train"].split())


def test_score_help_names_the_components_each_family_returns() -> None:
    from cxr_anomaly.models.features.torch_model import COMPONENTS as FEATURE_COMPONENTS
    from cxr_anomaly.models.tang2019.torch_model import Tang2019Detector

    text = " ".join(rendered_help()["score"].split())
    default_components = ", ".join(FEATURE_COMPONENTS)
    assert Config().method == "features" and f"default features detector: {default_components}" in text
    assert ", ".join(Tang2019Detector.component_names) in text
    assert "scope" in text


def test_export_help_states_the_default_input_size() -> None:
    text = " ".join(rendered_help()["export"].split())
    assert f"{Config().data.image_size} for the default features detector" in text
    assert f"{tang2019_config().data.image_size} for tang2019" in text
    assert "(N, 1, 64, 64)" not in text


def test_evaluate_help_names_exactly_the_files_evaluate_writes(tiny_nih_model, tmp_path: Path) -> None:
    """evaluate on labelled films plus one unreadable film, skipped."""
    films = pd.read_csv(tiny_nih_model.manifest)
    films = pd.concat([films, pd.DataFrame({"path": [str(tmp_path / "absent.png")], "label": [1]})])
    films.to_csv(tmp_path / "films.csv", index=False)
    out = tmp_path / "evaluation"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_nih_model.checkpoint),
                "--data",
                str(tmp_path / "films.csv"),
                "--split",
                "all",
                "--out",
                str(out),
                "--no-baselines",
                "--no-progress",
                "--on-bad-file",
                "skip",
            ]
        )
        == 0
    )
    written = {path.name for path in out.iterdir()}
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    evaluate = commands.choices["evaluate"]
    promised = set(re.findall(r"\w+\.(?:png|json|csv)", evaluate.description or ""))
    bad_file_help = next(action.help for action in evaluate._actions if "--on-bad-file" in action.option_strings)
    assert promised | {"skipped_files.csv"} == written
    assert "skipped_files.csv" in (bad_file_help or "")


def test_training_log_does_not_claim_a_patient_hold_out_without_patient_ids() -> None:
    from cxr_anomaly.data.selection import select_training_rows

    films = pd.DataFrame(
        {"path": [f"film{index}.png" for index in range(40)], "label": 0, "split": pd.NA, "patient_id": pd.NA}
    )
    assert "by patient" not in select_training_rows(films, Config(), "films").calibration_source
    films["patient_id"] = [f"p{index // 2}" for index in range(40)]
    assert "by patient" in select_training_rows(films, Config(), "films").calibration_source


def test_film_figure_has_a_colour_bar_and_says_its_scores_are_raw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxr_anomaly import evaluation

    figures: list[matplotlib.figure.Figure] = []
    monkeypatch.setattr(evaluation, "save_figure", lambda figure, path, **_: figures.append(figure) or Path(path))
    rng = np.random.default_rng(0)
    group = evaluation.FilmGroup(
        "normal",
        rng.integers(0, 255, (3, 32, 32), dtype=np.uint8),
        rng.random((3, 8, 8), dtype=np.float32),
        np.array([1.0, 2.0, 3.0]),
        None,
    )
    evaluation.explanation_grid([group], tmp_path / "films.png", scale=49.9, floor=36.3)
    axes_labels = [axis.get_xlabel() for axis in figures[0].axes]
    assert any("36.3" in label and "49.9" in label for label in axes_labels)  # the colour bar's label
    titles = [axis.get_title() for axis in figures[0].axes if axis.get_title()]
    assert titles and all("raw score" in title for title in titles)


def test_service_heatmap_png_carries_a_legend_with_the_raw_score() -> None:
    from cxr_anomaly.explain import colour_bar, legend_height, with_legend

    overlay = np.full((300, 200, 3), 90, dtype=np.uint8)
    legend = with_legend(overlay, floor=36.3, scale=49.9, raw_score=41.2)
    assert legend.shape == (300 + legend_height(200), 200, 3)
    assert np.array_equal(legend[:300], overlay)  # the film keeps its size and pixels
    assert np.array_equal(legend[302], colour_bar(width=200, height=1)[0])
    assert (legend[300 + legend_height(200) // 2 :] < 128).any()  # the text under the bar


def test_serve_on_a_busy_port_says_so_in_one_line_before_loading(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert main(["serve", "--model", str(tmp_path / "missing.pt"), "--port", str(port)]) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"port {port} on 127.0.0.1 is already in use" in errors[0]


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_failed_command_leaves_no_empty_out_folder(command: str, tmp_path: Path) -> None:
    data = tmp_path / "films.csv"
    pd.DataFrame({"path": [str(tmp_path / "absent.png")], "label": [1]}).to_csv(data, index=False)
    out = tmp_path / "runs" / "first"
    arguments = {
        "train": ["train", "--data", str(data), "--out", str(out), "--no-progress"],
        "evaluate": [
            "evaluate",
            "--model",
            str(tmp_path / "missing.pt"),
            "--data",
            str(data),
            "--out",
            str(out),
            "--no-progress",
        ],
    }[command]
    assert main(arguments) == 2
    assert not (tmp_path / "runs").exists()


def test_a_failed_command_keeps_an_out_folder_that_existed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "missing.pt"),
                "--data",
                str(tmp_path),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    assert out.is_dir()


def test_the_suite_keeps_onnxruntime_and_matplotlib_caches_out_of_home(tmp_path: Path) -> None:
    """A fresh interpreter with this suite's environment and an empty HOME imports both: nothing
    may appear in that HOME (onnxruntime writes its device id as soon as it is imported)."""
    home = tmp_path / "home"
    home.mkdir()
    code = "import onnxruntime, matplotlib.pyplot\n"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "HOME": str(home)}, check=True, timeout=300)
    assert [str(path.relative_to(home)) for path in home.rglob("*")] == []


def test_the_torch_pin_admits_every_2_13_patch_release() -> None:
    project = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    torch_pin = next(Requirement(line) for line in project["dependencies"] if Requirement(line).name == "torch")
    assert torch_pin.specifier.contains("2.13.0") and torch_pin.specifier.contains("2.13.4")
    assert not torch_pin.specifier.contains("2.14.0")
