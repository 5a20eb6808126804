"""Training loop: resumable training states, the GAN guard, and the event log (issue 7).

All runs train a narrow detector (8 base channels) for a few steps on 40 real NIH normals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_anomaly import inference
from cxr_anomaly.config import Config, with_overrides
from cxr_anomaly.distributed import DistributedContext
from cxr_anomaly.errors import CheckpointError, ConfigError, TrainingDivergedError
from cxr_anomaly.models.tang2019 import DiscriminatorLoss, discriminator_loss_from_logits, steps
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.resume import resolve_config_for_resume
from cxr_anomaly.models.tang2019.state import TRAINING_STATE_NAME, load_training_state
from cxr_anomaly.models.tang2019.steps import EVENTS_NAME
from cxr_anomaly.models.tang2019.torch_model import Discriminator
from cxr_anomaly.models.tang2019.training import train_detector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Interrupted(Exception):
    """Raised from a callback to simulate a crash at a chosen step."""


def tiny_config(**train_changes: object) -> Config:
    """A narrow detector, 2 epochs of 3 steps (batch 16 of 40 films), on CPU."""
    config = with_overrides(tang2019_config(), "model", base_channels=8, latent_dim=16)
    values = {"epochs": 2, "batch_size": 16, "device": "cpu", **train_changes}
    return with_overrides(config, "train", **values)


def events(run_dir: Path) -> list[dict]:
    """The run's event log, one dictionary per line."""
    return [json.loads(line) for line in (run_dir / EVENTS_NAME).read_text().splitlines()]


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    """Exact equality of every parameter and buffer."""
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key, value in first_state.items():
        assert torch.equal(value, second_state[key]), key


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(nih_train_normals: np.ndarray, tmp_path: Path) -> None:
    config = tiny_config(checkpoint_every_steps=1)
    reference = train_detector(config, nih_train_normals, run_dir=tmp_path / "reference")

    def crash_at_step_five(step: int) -> None:
        if step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_detector(config, nih_train_normals, run_dir=tmp_path / "run", on_step_end=crash_at_step_five)
    stored = load_training_state(tmp_path / "run" / TRAINING_STATE_NAME)
    assert (stored.epochs_done, stored.next_step, stored.global_step) == (1, 1, 4)
    resumed = train_detector(config, nih_train_normals, run_dir=tmp_path / "run", resume=True)

    assert resumed.resumed_from == (1, 1)
    assert [log.epoch for log in resumed.history] == [1, 2]
    assert_same_weights(reference.detector, resumed.detector)
    for expected, got in zip(reference.history, resumed.history):
        assert got.reconstruction == pytest.approx(expected.reconstruction, rel=1e-12)
        assert got.discriminator == pytest.approx(expected.discriminator, rel=1e-12)
    kinds = [event["event"] for event in events(tmp_path / "run")]
    assert kinds[0] == "start" and "resume" in kinds and kinds[-1] == "finished"
    final = load_training_state(tmp_path / "run" / TRAINING_STATE_NAME)
    assert (final.epochs_done, final.next_step, final.global_step) == (2, 0, 6)


def test_resume_of_a_finished_run_trains_no_further(nih_train_normals: np.ndarray, tmp_path: Path) -> None:
    config = tiny_config(epochs=1)
    first = train_detector(config, nih_train_normals, run_dir=tmp_path)
    again = train_detector(config, nih_train_normals, run_dir=tmp_path, resume=True)
    assert again.resumed_from == (1, 0)
    assert len(again.history) == 1
    assert_same_weights(first.detector, again.detector)


def test_resume_without_a_state_starts_from_the_beginning(nih_train_normals: np.ndarray, tmp_path: Path) -> None:
    config = tiny_config(epochs=1)
    result = train_detector(config, nih_train_normals, run_dir=tmp_path, resume=True)
    assert result.resumed_from is None
    assert load_training_state(tmp_path / TRAINING_STATE_NAME).epochs_done == 1


def test_resume_needs_a_run_folder(nih_train_normals: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="run_dir"):
        train_detector(tiny_config(), nih_train_normals, resume=True)


def test_resume_refuses_other_settings_and_other_data(nih_train_normals: np.ndarray, tmp_path: Path) -> None:
    config = tiny_config(epochs=1)
    train_detector(config, nih_train_normals, run_dir=tmp_path)
    with pytest.raises(CheckpointError, match="train.seed"):
        train_detector(with_overrides(config, "train", seed=7), nih_train_normals, run_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="training films differ"):
        train_detector(config, nih_train_normals[:-1], run_dir=tmp_path, resume=True)


def test_resolve_config_for_resume_keeps_the_stored_arithmetic(nih_train_normals: np.ndarray, tmp_path: Path) -> None:
    config = tiny_config(epochs=1)
    train_detector(config, nih_train_normals, run_dir=tmp_path)
    requested = with_overrides(config, "train", epochs=15, checkpoint_every_steps=3)
    resolved = resolve_config_for_resume(tmp_path, requested)
    assert resolved.train.epochs == 1  # the interrupted run's length
    assert resolved.train.checkpoint_every_steps == 3  # how often to save may change
    assert resolve_config_for_resume(tmp_path / "empty", requested) == requested


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(
    nih_train_normals: np.ndarray, tmp_path: Path
) -> None:
    def poison_weights(detector: torch.nn.Module, _log: object) -> None:
        with torch.no_grad():
            detector.unet.encoder.to_code.weight.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match="non-finite loss at epoch 2, step 1") as caught:
        train_detector(tiny_config(), nih_train_normals, run_dir=tmp_path, on_epoch_end=poison_weights)
    assert str(tmp_path / TRAINING_STATE_NAME) in str(caught.value)
    kept = load_training_state(tmp_path / TRAINING_STATE_NAME)
    assert kept.epochs_done == 1
    assert all(bool(torch.isfinite(value).all()) for value in kept.model_state.values() if value.is_floating_point())
    last = events(tmp_path)[-1]
    assert last["event"] == "diverged" and last["epoch"] == 2
    assert all(math.isnan(value) for key, value in last["losses"].items() if key != "discriminator")


def test_non_finite_weights_are_never_checkpointed(nih_train_normals: np.ndarray, tmp_path: Path) -> None:
    config = tiny_config(checkpoint_every_steps=1)
    holder: dict[str, torch.nn.Module] = {}

    def remember(detector: torch.nn.Module, _log: object) -> None:
        holder["detector"] = detector

    def poison_after_step_four(step: int) -> None:
        if step == 4:
            with torch.no_grad():
                holder["detector"].unet.encoder.to_code.weight[0, 0, 0, 0] = float("inf")

    with pytest.raises(TrainingDivergedError, match="non-finite values in unet"):
        train_detector(
            config, nih_train_normals, run_dir=tmp_path, on_epoch_end=remember, on_step_end=poison_after_step_four
        )
    assert load_training_state(tmp_path / TRAINING_STATE_NAME).global_step == 3
    assert events(tmp_path)[-1]["event"] == "diverged"


def test_collapse_guard_stops_when_the_discriminator_wins_outright(
    nih_train_normals: np.ndarray, tmp_path: Path
) -> None:
    # A threshold of 0.999999 counts every batch of an untrained D as "won outright".
    config = tiny_config(collapse_threshold=0.999999, collapse_patience_steps=2)
    with pytest.raises(TrainingDivergedError, match="discriminator won outright"):
        train_detector(config, nih_train_normals, run_dir=tmp_path)
    last = events(tmp_path)[-1]
    assert last["event"] == "collapsed" and last["streak"] == 2
    # The guard is off at 0, and the variant without D never triggers it.
    train_detector(with_overrides(config, "train", collapse_patience_steps=0, epochs=1), nih_train_normals)
    train_detector(with_overrides(with_overrides(config, "model", variant="u+e"), "train", epochs=1), nih_train_normals)


def test_default_thresholds_leave_a_normal_run_alone(nih_train_normals: np.ndarray) -> None:
    result = train_detector(tiny_config(epochs=1), nih_train_normals)
    assert len(result.history) == 1 and math.isfinite(result.history[0].generator_total)


def test_training_without_a_run_folder_writes_nothing(
    nih_train_normals: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    train_detector(tiny_config(epochs=1), nih_train_normals)
    assert list(tmp_path.iterdir()) == []


def test_discriminator_loss_from_logits_matches_the_loss_module() -> None:
    generator = torch.Generator().manual_seed(3)
    discriminator = Discriminator(base_channels=8)
    real = torch.rand(6, 1, 64, 64, generator=generator) * 2 - 1
    fake = torch.rand(6, 1, 64, 64, generator=generator) * 2 - 1
    discriminator.eval()  # same BatchNorm statistics for both computations
    expected = DiscriminatorLoss()(discriminator, real, fake)
    got = discriminator_loss_from_logits(discriminator(real).logit, discriminator(fake).logit)
    assert torch.allclose(expected, got)


def test_batchnorm_statistics_are_re_estimated_after_a_short_run(nih_train_normals: np.ndarray) -> None:
    """After a few steps the running variances still remember their initial 1; re-estimating them
    over the training normals makes eval-mode reconstructions match train-mode ones."""
    from cxr_anomaly.data.dataset import to_model_tensor

    images = to_model_tensor(nih_train_normals, tang2019_config().data)  # (40, 1, 64, 64)

    def l1_by_mode(detector: torch.nn.Module) -> tuple[float, float]:
        with torch.no_grad():
            detector.train()
            batch_statistics = (images - detector(images).reconstruction).abs().mean().item()
            detector.eval()
            running_statistics = (images - detector(images).reconstruction).abs().mean().item()
        return batch_statistics, running_statistics

    plain_u = with_overrides(tiny_config(), "model", variant="u")
    kept = train_detector(with_overrides(plain_u, "train", recalibrate_batchnorm=False), nih_train_normals).detector
    recalibrated = train_detector(plain_u, nih_train_normals).detector
    kept_train, kept_eval = l1_by_mode(kept)
    new_train, new_eval = l1_by_mode(recalibrated)
    assert kept_eval > 1.1 * kept_train, "the short run should show the stale-statistics gap"
    assert new_eval < kept_eval
    assert new_eval == pytest.approx(new_train, rel=0.05)


def test_fit_detector_trains_tang2019_behind_the_common_interface(
    nih_train_normals: np.ndarray, tmp_path: Path
) -> None:
    from cxr_anomaly.models.registry import build_detector, fit_detector
    from cxr_anomaly.models.tang2019 import OneClassDetector, Tang2019Detector

    config = tiny_config(epochs=1)
    result = fit_detector(config, nih_train_normals[:24], progress=False, run_dir=tmp_path)
    detector = result.detector
    assert isinstance(detector, Tang2019Detector) and isinstance(detector.networks, OneClassDetector)
    assert not detector.training and detector.family == "tang2019" and result.world_size == 1
    assert detector.component_names == ("reconstruction", "adversarial", "latent", "code_distance")
    record = result.record
    assert record["family"] == "tang2019" and record["num_train_images"] == 24 and record["world_size"] == 1
    assert [entry["epoch"] for entry in record["history"]] == [1] and record["resumed_from"] is None
    json.dumps(record)  # plain values only, for the checkpoint and training_log.json
    assert (tmp_path / TRAINING_STATE_NAME).is_file()
    assert len(detector.networks.normal_codes) == 24  # the code-space kNN score is available
    # an unfitted detector of the same configuration has the same state layout
    assert build_detector(config).state_dict().keys() == detector.state_dict().keys()


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_trains_in_bf16_exactly_where_it_is_native(
    nih_train_normals: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(inference, "native_bf16", lambda device: native)
    assert tang2019_config().train.precision == "auto"
    used: list[bool] = []
    real_autocast = steps.autocast_context

    def spy(device: torch.device, precision: str) -> torch.autocast:
        context = real_autocast(device, precision)
        used.append(bool(context._enabled))
        return context

    monkeypatch.setattr(steps, "autocast_context", spy)
    result = train_detector(tiny_config(epochs=1), nih_train_normals[:32], run_dir=tmp_path)
    expected = "bf16" if native else "fp32"
    assert result.precision == expected
    assert used and all(enabled == native for enabled in used)
    assert events(tmp_path)[0]["precision"] == expected


def test_batch_plan_shares_the_global_batch_out_over_the_ranks() -> None:
    train_config = tiny_config(batch_size=16).train
    alone = steps.batch_plan(40, train_config, DistributedContext())
    assert (alone.sampler, alone.batch_size, alone.steps_per_epoch) == (None, 16, 3)
    second_of_two = steps.batch_plan(40, train_config, DistributedContext(rank=1, world_size=2))
    assert second_of_two.sampler is not None and len(second_of_two.sampler) == 20
    assert (second_of_two.batch_size, second_of_two.steps_per_epoch) == (8, 3)
    assert steps.batch_plan(5, train_config, DistributedContext()).batch_size == 5  # never beyond the films


def test_batch_plan_refuses_fewer_than_two_films_a_rank() -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size=4 over 4 processes gives 1 film"):
        steps.batch_plan(40, tiny_config(batch_size=4).train, DistributedContext(rank=0, world_size=4))


def step_result(loss: float, collapsed: bool) -> steps.StepResult:
    """A reduced step with every loss at ``loss``."""
    return steps.StepResult(dict.fromkeys(steps.LOSS_NAMES, loss), 16.0, collapsed)


def test_guard_step_counts_collapsed_steps_and_stops_at_the_patience(tmp_path: Path) -> None:
    train_config = tiny_config(collapse_patience_steps=3).train
    run_log = steps.RunLog(tmp_path, enabled=True)
    guard = {"train_config": train_config, "has_discriminator": True, "run_log": run_log, "state_path": None}
    streak = steps.guard_step(step_result(1.0, True), 0, 1, 1, **guard)
    streak = steps.guard_step(step_result(1.0, True), streak, 1, 2, **guard)
    assert streak == 2
    assert steps.guard_step(step_result(1.0, False), streak, 1, 3, **guard) == 0  # one normal step resets it
    with pytest.raises(TrainingDivergedError, match="won outright"):
        steps.guard_step(step_result(1.0, True), 2, 1, 4, **guard)
    # a variant without D never collapses, whatever the flag says
    assert steps.guard_step(step_result(1.0, True), 5, 1, 5, **{**guard, "has_discriminator": False}) == 6
    with pytest.raises(TrainingDivergedError, match="non-finite loss at epoch 2, step 7"):
        steps.guard_step(step_result(math.nan, False), 0, 2, 7, **guard)
    assert [event["event"] for event in events(tmp_path)] == ["collapsed", "diverged"]
