"""Adding normal films to a fitted features detector (``train --resume-from``): the refit's heads
against a fit on the union, the CLI end to end, and the models that cannot take more normals."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_anomaly.checkpoint import load_checkpoint, save_checkpoint
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.data.copies import film_signatures
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.data.manifest import load_inputs
from cxr_anomaly.errors import RefitError
from cxr_anomaly.jobs.train import add_normals_job
from cxr_anomaly.models.features.fitting import normal_features
from cxr_anomaly.models.features.torch_model import FeatureDetector
from cxr_anomaly.models.registry import add_normals, fit_detector, refit_of
from cxr_anomaly.scoring import score_films

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 64 px films, a 4x4 patch grid (the stride-16 map's) and small banks: a fit takes about a second.
TINY = with_overrides(
    with_overrides(
        Config(),
        "features",
        memory_bank_size=48,
        pooled_bank_size=64,
        patch_grid=4,
        batch_size=16,
        finetune_epochs=0,
    ),
    "data",
    image_size=64,
)
TINY = with_overrides(TINY, "train", device="cpu", precision="fp32")
OLD, ADDED = 24, 16  # films of the first fit, films added
EXACT = "donot_use_mm_for_euclid_dist"  # cdist without |a|² - 2ab + |b|², whose rounding hides a 0


@dataclass(frozen=True)
class Films:
    """The first fit's films, the films added, and films to score (uint8, 64 px)."""

    old: np.ndarray
    added: np.ndarray
    scored: np.ndarray


@pytest.fixture(scope="module")
def films(shared_data: Path) -> Films:
    rows = load_inputs(shared_data / "rsna_normal224" / "manifest.csv").iloc[: OLD + ADDED + 8]
    pixels = load_images(rows, TINY.data, workers=1).pixels
    return Films(pixels[:OLD], pixels[OLD : OLD + ADDED], pixels[OLD + ADDED :])


def close(values: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Whether two tensors of one shape differ nowhere by more than ``tolerance`` times the
    largest magnitude of ``expected``."""
    if values.shape != expected.shape:
        return False
    return float((values - expected).abs().max()) <= tolerance * float(expected.abs().max())


def refitted(config: Config, films: Films) -> tuple[FeatureDetector, FeatureDetector]:
    """The fit on the old films, and a copy of it with the added films."""
    first = fit_detector(config, films.old, progress=False).detector
    assert isinstance(first, FeatureDetector)
    result = add_normals(copy.deepcopy(first), config, films.added, progress=False)
    assert isinstance(result.detector, FeatureDetector)
    return first, result.detector


@pytest.mark.parametrize("pooled_bank_size", [64, 30])  # the union (40) whole, and a seeded subsample of it
def test_refit_gives_the_gaussian_and_pooled_bank_of_a_fit_on_the_union(films: Films, pooled_bank_size: int) -> None:
    config = with_overrides(TINY, "features", pooled_bank_size=pooled_bank_size)
    first, refit = refitted(config, films)
    union = fit_detector(config, np.concatenate([films.old, films.added]), progress=False).detector
    assert len(refit.train_pooled) == OLD + ADDED and len(refit.pooled_bank) == min(OLD + ADDED, pooled_bank_size)
    # the refit changed the heads: the first fit's differ from the union's by 10-15% of their scale
    assert first.gaussian_precision.shape == union.gaussian_precision.shape
    assert not close(first.gaussian_mean, union.gaussian_mean, 1e-2)
    assert not close(first.gaussian_precision, union.gaussian_precision, 1e-2)
    # The same films through the same backbone, in other batches (8 films instead of 16): equal to
    # float rounding, 2e-6 of the scale here.
    assert close(refit.train_pooled, union.train_pooled)
    assert close(refit.gaussian_mean, union.gaussian_mean)
    assert close(refit.gaussian_precision, union.gaussian_precision)
    assert close(refit.pooled_bank, union.pooled_bank)
    # the backbone is kept as fitted
    for name, weight in first.backbone.state_dict().items():
        assert torch.equal(refit.backbone.state_dict()[name], weight)


def test_refit_patch_bank_is_chosen_from_the_old_bank_and_the_added_patches(films: Films) -> None:
    first, refit = refitted(TINY, films)
    added = normal_features(refit, films.added, device=torch.device("cpu"), precision="fp32", progress=False)
    candidates = torch.cat([first.patch_bank, added.patches.float()])
    assert refit.patch_bank.shape == (TINY.features.memory_bank_size, first.patch_bank.shape[1])
    nearest = torch.cdist(refit.patch_bank, candidates, compute_mode=EXACT).min(dim=1).values
    assert float(nearest.max()) < 1e-5  # every bank patch is a candidate's
    from_added = torch.cdist(refit.patch_bank, added.patches.float(), compute_mode=EXACT).min(dim=1).values < 1e-5
    assert 0 < int(from_added.sum()) < len(refit.patch_bank)  # both old and new patches kept
    assert not torch.equal(refit.patch_bank, first.patch_bank)
    assert float(refit.patch_radius) > 0
    scores = score_films(refit, films.scored, precision="fp32")
    assert np.isfinite(scores.raw).all() and len(scores.raw) == len(films.scored)


def manifest_of(shared_data: Path, rows: slice, path: Path, validation: slice | None = None) -> Path:
    """A manifest CSV of rsna_normal224's normal films ``rows``, with absolute paths; with
    ``validation``, those are the train split and these films the val split."""
    table = pd.read_csv(shared_data / "rsna_normal224" / "manifest.csv")
    if validation is not None:
        table["split"] = ["val" if row in range(*validation.indices(len(table))) else "train" for row in table.index]
        table = pd.concat([table.iloc[rows], table.iloc[validation]])
    else:
        table = table.iloc[rows]
    table["path"] = [str(shared_data / "rsna_normal224" / name) for name in table["path"]]
    table.to_csv(path, index=False)
    return path


def test_cli_adds_normals_to_a_fitted_model(shared_data: Path, tmp_path: Path) -> None:
    from cxr_anomaly.cli import main

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        'method = "features"\n[data]\nimage_size = 64\n[train]\ndevice = "cpu"\nprecision = "fp32"\n'
        "[features]\nmemory_bank_size = 48\npooled_bank_size = 64\npatch_grid = 4\nfinetune_epochs = 0\n"
    )
    first_data = manifest_of(shared_data, slice(0, 30), tmp_path / "first.csv")
    more_data = manifest_of(shared_data, slice(30, 50), tmp_path / "more.csv")
    first_run, second_run = tmp_path / "first", tmp_path / "second"
    base = ["--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(["train", "--data", str(first_data), "--out", str(first_run), "--config", str(config_file), *base]) == 0
    # no held-out patients in 30 unlabelled-patient films: 10% (3) calibrate, 27 train
    first = load_checkpoint(first_run / "model.pt")
    assert first.training["num_train_images"] == 27
    refused = ["train", "--resume-from", str(first_run / "model.pt"), "--data", str(more_data), "--out"]
    assert main([*refused, str(tmp_path / "refused"), "--seed", "3", *base]) == 2
    assert not (tmp_path / "refused").exists()
    assert main([*refused, str(second_run), *base]) == 0

    second = load_checkpoint(second_run / "model.pt")
    record = second.training
    assert record["refits"] == [
        {
            "films_added": 18,
            "previous_num_train_images": 27,
            "seconds": pytest.approx(record["refits"][0]["seconds"]),
            "data": [str(more_data.resolve())],
        }
    ]
    assert record["refits"][0]["seconds"] > 0
    assert record["num_train_images"] == 27 + 18 and record["num_calibration_images"] == 2
    assert record["data"] == [str(first_data.resolve()), str(more_data.resolve())]
    assert record["seconds"] == first.training["seconds"]  # the first fit's time stays
    assert second.training_signatures is not None and len(second.training_signatures) == 45
    assert second.calibration is not None and second.calibration != first.calibration
    assert second.config == first.config
    assert isinstance(second.detector, FeatureDetector) and len(second.detector.train_pooled) == 45
    pixels = load_images(load_inputs(more_data), second.config.data, workers=1).pixels[:4]
    scored = second.score_films(pixels)
    assert np.isfinite(scored.raw).all()
    assert not np.allclose(scored.raw, first.score_films(pixels).raw)


def test_adding_films_the_model_holds_warns_that_they_count_twice(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    films = load_images(load_inputs(manifest_of(shared_data, slice(0, 24), tmp_path / "all.csv")), TINY.data).pixels
    detector = fit_detector(TINY, films[:16], progress=False).detector
    path = save_checkpoint(tmp_path / "model.pt", detector, TINY, training_signatures=film_signatures(films[:16]))
    again = manifest_of(shared_data, slice(10, 24), tmp_path / "again.csv", slice(24, 27))  # 6 held, 8 new
    outcome = add_normals_job(path, [again], tmp_path / "run", progress=False)
    assert outcome.films_added == 14 and outcome.previous_num_train_images == 16
    assert "6 of the 14 films added are copies of films the model already trained on" in caplog.text
    assert len(load_checkpoint(outcome.checkpoint).training_signatures) == 30


def test_families_without_an_incremental_refit_say_so(tmp_path: Path, shared_data: Path) -> None:
    fixture = Path(__file__).resolve().parents[2] / "fixtures" / "checkpoint_f0b61da" / "tang2019_tiny.pt"
    data = manifest_of(shared_data, slice(0, 12), tmp_path / "more.csv")
    with pytest.raises(RefitError, match="a tang2019 model cannot take more normal films"):
        add_normals_job(fixture, [data], tmp_path / "run", progress=False)
    with pytest.raises(RefitError, match="a pixel_knn model cannot take more normal films"):
        refit_of("pixel_knn")


def test_a_features_checkpoint_from_before_refits_scores_but_cannot_take_more_normals(
    films: Films, tmp_path: Path, shared_data: Path
) -> None:
    detector = fit_detector(TINY, films.old, progress=False).detector
    path = save_checkpoint(tmp_path / "old.pt", detector, TINY)
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["train_pooled"]  # as written before the buffer existed
    torch.save(payload, path)
    old = load_checkpoint(path)
    assert isinstance(old.detector, FeatureDetector) and old.detector.train_pooled.shape == (0, 320)
    expected = score_films(detector, films.scored, precision="fp32").raw
    assert np.array_equal(score_films(old.detector, films.scored, precision="fp32").raw, expected)
    data = manifest_of(shared_data, slice(0, 12), tmp_path / "more.csv")
    with pytest.raises(RefitError, match="predates incremental refits"):
        add_normals_job(path, [data], tmp_path / "run", progress=False)
