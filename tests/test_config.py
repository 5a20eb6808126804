"""Configuration: defaults are the paper's, validation names the bad value, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_anomaly.config import (
    Config, LossConfig, ModelConfig, TrainConfig, config_from_dict, config_to_dict, load_config, with_overrides,
)
from cxr_anomaly.errors import ConfigError


def test_paper_hyperparameters_are_the_defaults() -> None:
    train, loss = TrainConfig(), LossConfig()
    assert (train.learning_rate, train.beta1, train.beta2, train.batch_size, train.epochs) == (5e-4, 0.5, 0.999, 64, 15)
    assert (loss.weight_reconstruction, loss.weight_adversarial, loss.weight_latent, loss.weight_feature) == (20, 4, 8, 1)
    assert ModelConfig().latent_dim == 100 and ModelConfig().image_size == 64


def test_round_trip_through_dict_and_json(tmp_path: Path) -> None:
    config = with_overrides(Config(), "model", variant="u+d")
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 3}}))
    assert load_config(path).train.epochs == 3


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nvariant = "u"\ninit = "standard_normal"\n')
    config = load_config(path)
    assert config.model.variant == "u" and config.model.init == "standard_normal"


@pytest.mark.parametrize(("values", "message"), [
    ({"model": {"variant": "u+x"}}, "u\\+x"),
    ({"train": {"epochs": 0}}, "epochs=0"),
    ({"loss": {"weight_latent": -1}}, "weight_latent=-1"),
    ({"model": {"latent": 5}}, "latent"),
    ({"nonsense": {}}, "nonsense"),
])
def test_bad_values_are_named(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().train.epochs = 3  # type: ignore[misc]


def test_paper_preset_and_config_files_applied_over_a_preset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cxr_anomaly.config import load_config, paper_config, preset_config

    paper = paper_config()
    assert paper.score.method == "eq6" and paper.train.recalibrate_batchnorm is False
    assert preset_config("default") == Config()
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        preset_config("fast")
    path = tmp_path / "small.toml"
    path.write_text("[model]\nbase_channels = 16\n")
    over_paper = load_config(path, base=paper)
    assert over_paper.model.base_channels == 16 and over_paper.score.method == "eq6"
    assert load_config(path).score.method == Config().score.method
