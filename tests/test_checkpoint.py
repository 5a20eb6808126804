"""Checkpoints: round trip, safety against pickle payloads, versions, atomic writes (issues 2, 7)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_anomaly import __version__
from cxr_anomaly.checkpoint import load_checkpoint, save_checkpoint
from cxr_anomaly.config import Config, config_to_dict, with_overrides
from cxr_anomaly.data.copies import film_signatures, matching_signatures
from cxr_anomaly.errors import CheckpointError
from cxr_anomaly.files import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    remove_stale_temporaries,
)
from cxr_anomaly.models.tang2019 import OneClassDetector, Tang2019Detector
from cxr_anomaly.models.tang2019.config import tang2019_config
from cxr_anomaly.models.tang2019.state import TrainingState, load_training_state, save_training_state
from cxr_anomaly.models.tang2019.training import build_detector, train_detector
from cxr_anomaly.scoring import fit_calibration, score_films

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def films(nih_train_normals: np.ndarray) -> np.ndarray:
    """24 real NIH normals (64x64 uint8)."""
    return nih_train_normals[:24]


def tiny_detector(config: Config | None = None) -> Tang2019Detector:
    """Untrained tang2019 networks with 8 base channels behind the common interface."""
    config = config or with_overrides(tang2019_config(), "model", base_channels=8)
    return Tang2019Detector(config, build_detector(config))


def non_default_config() -> Config:
    """A tang2019 configuration with a value changed in every section."""
    config = with_overrides(
        tang2019_config(), "model", base_channels=8, latent_dim=12, variant="u+d+e", input_noise_std=0.03
    )
    config = with_overrides(config, "loss", weight_adversarial=3.5)
    config = with_overrides(config, "train", epochs=1, batch_size=8, seed=11, device="cpu", checkpoint_every_steps=2)
    config = with_overrides(config, "data", intensity="per_image")
    return with_overrides(config, "score", target_specificity=0.9)


class CodeExecution:
    """Unpickling this object would create ``marker``: the attack a checkpoint must not allow."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_round_trip_keeps_weights_config_calibration_and_version(films: np.ndarray, tmp_path: Path) -> None:
    config = non_default_config()
    result = train_detector(config, films)
    detector = Tang2019Detector(config, result.detector).eval()
    calibration = fit_calibration(score_films(detector, films).raw, 0.9)
    signatures = film_signatures(films)
    path = save_checkpoint(
        tmp_path / "model.pt",
        detector,
        config,
        calibration=calibration,
        training={"note": "round trip", "epochs": [1]},
        training_signatures=signatures,
    )

    loaded = load_checkpoint(path)
    assert loaded.config == config
    # the training films' signatures come back as int8 (1 KB a film), each film still its own copy
    assert torch.load(path, weights_only=True)["training_signatures"].dtype == torch.int8
    assert loaded.training_signatures is not None and loaded.training_signatures.shape == signatures.shape
    assert np.abs(loaded.training_signatures - signatures).max() < 0.01
    assert [(copy.film, copy.source) for copy in matching_signatures(signatures, loaded.training_signatures)] == [
        (index, index) for index in range(len(films))
    ]
    assert load_checkpoint(save_checkpoint(tmp_path / "bare.pt", detector, config)).training_signatures is None
    assert loaded.package_version == __version__
    assert loaded.calibration == calibration
    assert loaded.training == {"note": "round trip", "epochs": [1]}
    assert not loaded.detector.training
    assert isinstance(loaded.detector, Tang2019Detector) and loaded.detector.family == "tang2019"
    assert isinstance(loaded.detector.networks, OneClassDetector)
    saved_state, loaded_state = detector.state_dict(), loaded.detector.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    for key, value in saved_state.items():
        assert torch.equal(value, loaded_state[key]), key
    assert np.array_equal(score_films(detector, films).raw, score_films(loaded.detector, films).raw)
    assert torch.load(path, weights_only=True)["format_version"] == FORMAT_VERSION == 2


def test_a_version_1_checkpoint_still_loads(films: np.ndarray, tmp_path: Path) -> None:
    """Version 1 held the tang2019 networks alone: no ``method``, keys without ``networks.``."""
    config = with_overrides(non_default_config(), "score", method="code_knn")
    networks = train_detector(config, films[:8]).detector
    values = config_to_dict(config)
    del values["method"], values["features"]
    legacy = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "package_version": "0.9.0",
        "created": "2024-01-01T00:00:00+00:00",
        "config": values,
        "state_dict": {key: value.detach().cpu() for key, value in networks.state_dict().items()},
        "calibration": None,
        "training": {"note": "version 1"},
    }
    path = tmp_path / "model_v1.pt"
    torch.save(legacy, path)
    loaded = load_checkpoint(path)
    assert loaded.config == config and loaded.config.method == "tang2019"
    assert isinstance(loaded.detector, Tang2019Detector) and loaded.training == {"note": "version 1"}
    for key, value in networks.state_dict().items():
        assert torch.equal(value, loaded.detector.networks.state_dict()[key]), key
    np.testing.assert_array_equal(
        score_films(loaded.detector, films[:4]).raw, score_films(Tang2019Detector(config, networks), films[:4]).raw
    )


def test_a_pickle_payload_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    detector = build_detector(with_overrides(tang2019_config(), "model", base_channels=8))
    malicious = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "package_version": __version__,
        "config": {},
        "state_dict": detector.state_dict(),
        "calibration": None,
        "training": {"hook": CodeExecution(marker)},
    }
    zip_format = tmp_path / "evil.pt"
    torch.save(malicious, zip_format)
    legacy_format = tmp_path / "evil_legacy.pt"
    legacy_format.write_bytes(pickle.dumps(malicious))
    for path in (zip_format, legacy_format):
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        assert str(path) in str(caught.value)
        assert not marker.exists(), f"loading {path.name} ran the embedded code"
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(zip_format)
    with pytest.raises(CheckpointError):
        load_training_state(zip_format)
    assert not marker.exists()
    # The trap is real: an unrestricted unpickler does run it.
    pickle.loads(legacy_format.read_bytes())
    assert marker.exists()


def test_a_newer_format_names_both_versions(tmp_path: Path) -> None:
    detector = tiny_detector()
    path = save_checkpoint(tmp_path / "model.pt", detector, detector.config)
    payload = torch.load(path, weights_only=True)
    payload.update(format_version=99, package_version="9.4.0")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="upgrade") as caught:
        load_checkpoint(path)
    assert "9.4.0" in str(caught.value) and __version__ in str(caught.value)


def test_a_newer_config_layout_names_both_versions(tmp_path: Path) -> None:
    detector = tiny_detector()
    path = save_checkpoint(tmp_path / "model.pt", detector, detector.config)
    payload = torch.load(path, weights_only=True)
    payload["package_version"] = "2.0.0"
    payload["config"]["model"]["attention_heads"] = 4  # a setting this version does not know
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="attention_heads") as caught:
        load_checkpoint(path)
    assert "2.0.0" in str(caught.value) and __version__ in str(caught.value)


@pytest.mark.parametrize("damage", ["truncate", "empty", "text", "not_a_dict", "other_format"])
def test_damaged_or_foreign_files_raise_checkpoint_error(damage: str, tmp_path: Path) -> None:
    detector = tiny_detector()
    path = save_checkpoint(tmp_path / "model.pt", detector, detector.config)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("path,label\nx.png,0\n")
    elif damage == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    else:
        torch.save({"format": "someone-else", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_training_state_round_trip_is_weights_only(films: np.ndarray, tmp_path: Path) -> None:
    config = non_default_config()
    train_detector(config, films, run_dir=tmp_path)
    path = tmp_path / "training_state.pt"
    # The file holds tensors and plain values only.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "cxr-anomaly-training-state"
    state = load_training_state(path)
    assert state.config == config
    assert (state.epochs_done, state.next_step, state.world_size) == (1, 0, 1)
    assert state.order_rng_state.dtype == torch.uint8 and len(state.noise_rng_states) == 1
    assert "state" in state.generator_optimizer and state.discriminator_optimizer is not None
    save_training_state(tmp_path / "copy.pt", state)
    copy = load_training_state(tmp_path / "copy.pt")
    assert copy.history == state.history and copy.data_fingerprint == state.data_fingerprint
    assert torch.equal(copy.order_rng_state, state.order_rng_state)
    with pytest.raises(CheckpointError, match="cxr-anomaly-training-state"):
        load_training_state(save_checkpoint(tmp_path / "model.pt", tiny_detector(config), config))


def test_training_state_from_a_newer_version_names_both_versions(tmp_path: Path) -> None:
    state = TrainingState(
        config=tang2019_config(),
        model_state={},
        generator_optimizer={},
        discriminator_optimizer=None,
        scaler=None,
        epochs_done=0,
        next_step=0,
        global_step=0,
        order_rng_state=torch.Generator().get_state(),
        noise_rng_states=[],
        epoch_sums={},
        epoch_seconds=0.0,
        history=[],
        collapse_streak=0,
        world_size=1,
        data_fingerprint="x",
        seconds=0.0,
        package_version="3.1.0",
    )
    path = save_training_state(tmp_path / "state.pt", state)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 2
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as caught:
        load_training_state(path)
    assert "3.1.0" in str(caught.value) and __version__ in str(caught.value)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    atomic_torch_save({"value": torch.ones(3)}, path)

    def fail_halfway(stream: object) -> None:
        stream.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail_halfway)
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "config.json", "{}")
    (tmp_path / ".training_state.pt.abc123.tmp").write_bytes(b"half a file")
    (tmp_path / "keep.tmp").write_text("not ours: not hidden")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".training_state.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "keep.tmp"]


MAIN_FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_f0b61da"


def test_a_checkpoint_and_training_state_written_before_the_registry_load_and_score_the_same() -> None:
    # Written by main's code at f0b61da (fixtures/checkpoint_f0b61da/make_fixture.py), before the
    # family registry, files.py and the training state's move beside its family.
    films = np.random.default_rng(7).integers(0, 256, (12, 64, 64), dtype=np.uint8)
    expected = json.loads((MAIN_FIXTURE / "expected.json").read_text())
    model = load_checkpoint(MAIN_FIXTURE / "tang2019_tiny.pt", precision="fp32")
    assert model.config.method == "tang2019" and model.config.model.base_channels == 2
    assert model.calibration is not None and model.training["num_train_images"] == 8
    assert matching_signatures(film_signatures(films[:8]), model.training_signatures)  # the training films
    scores = model.score_films(films[8:])
    np.testing.assert_allclose(scores.raw, expected["raw"], rtol=1e-5)
    for name, values in expected["components"].items():
        np.testing.assert_allclose(scores.components[name], values, rtol=1e-5, equal_nan=True)
    state = load_training_state(MAIN_FIXTURE / "training_state.pt")
    assert state.config == model.config and state.epochs_done == 1
    assert state.model_state.keys() == {key.removeprefix("networks.") for key in model.detector.state_dict()}
