"""Configuration: defaults are the paper's, validation names the bad value, round trips."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from cxr_anomaly.config import Config, TrainConfig, config_from_dict, config_to_dict, load_config, with_overrides
from cxr_anomaly.errors import ConfigError
from cxr_anomaly.models.tang2019.config import LossConfig, ModelConfig


def test_paper_hyperparameters_are_the_defaults() -> None:
    train, loss = TrainConfig(), LossConfig()
    assert (train.learning_rate, train.beta1, train.beta2, train.batch_size, train.epochs) == (5e-4, 0.5, 0.999, 64, 15)
    assert (loss.weight_reconstruction, loss.weight_adversarial, loss.weight_latent, loss.weight_feature) == (
        20,
        4,
        8,
        1,
    )
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


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"variant": "u+x"}}, "u\\+x"),
        ({"train": {"epochs": 0}}, "epochs=0"),
        ({"loss": {"weight_latent": -1}}, "weight_latent=-1"),
        ({"model": {"latent": 5}}, "latent"),
        ({"nonsense": {}}, "nonsense"),
    ],
)
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
    from cxr_anomaly.config import load_config, preset_config
    from cxr_anomaly.models.tang2019.config import paper_config

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


@pytest.mark.parametrize(
    ("toml_text", "message"),
    [
        (
            '[train]\nrecalibrate_batchnorm = "false"\n',
            r"train\.recalibrate_batchnorm='false' has type str; expected bool",
        ),
        ("[train]\nrecalibrate_batchnorm = 0\n", r"train\.recalibrate_batchnorm=0 has type int; expected bool"),
        ("[train]\nepochs = 2.5\n", r"train\.epochs=2\.5 has type float; expected int"),
        ('[train]\nepochs = "3"\n', r"train\.epochs='3' has type str; expected int"),
        ("[train]\nepochs = true\n", r"train\.epochs=True has type bool; expected int"),
        ('[loss]\nweight_latent = "8"\n', r"loss\.weight_latent='8' has type str; expected float"),
        ("[loss]\nweight_latent = false\n", r"loss\.weight_latent=False has type bool; expected float"),
        ("[model]\nvariant = 1\n", r"model\.variant=1 has type int; expected one of 'u', 'u\+e'"),
        ("[train]\ndevice = 0\n", r"train\.device=0 has type int; expected str"),
    ],
)
def test_config_files_with_wrong_types_name_key_value_and_type(tmp_path: Path, toml_text: str, message: str) -> None:
    path = tmp_path / "typed.toml"
    path.write_text(toml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_an_int_is_a_float_and_the_right_types_pass(tmp_path: Path) -> None:
    path = tmp_path / "fine.toml"
    path.write_text(
        "[loss]\nweight_latent = 8\n[train]\nepochs = 3\nrecalibrate_batchnorm = false\nlearning_rate = 1e-3\n"
    )
    config = load_config(path)
    assert config.loss.weight_latent == 8 and config.train.epochs == 3
    assert config.train.recalibrate_batchnorm is False and config.train.learning_rate == 1e-3
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config


@dataclass(frozen=True)
class FutureSection:
    """A section that does not exist yet (module level, so that its annotations resolve)."""

    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (8,)
    ratio: float | None = None


def test_the_type_check_follows_the_declared_fields() -> None:
    # Driven by the dataclass annotations: a section or field added later is checked unchanged.
    from cxr_anomaly.config import _check_field_types

    Future = FutureSection
    _check_field_types(Future, {"mode": "b", "sizes": [8, 16], "ratio": None}, "future")
    _check_field_types(Future, {"ratio": 2}, "future")
    for values, message in (
        ({"mode": "c"}, "future.mode='c'"),
        ({"sizes": [8, 2.5]}, r"future.sizes=\[8, 2.5\]"),
        ({"ratio": "0.5"}, "expected float \\(or int\\) or None"),
    ):
        with pytest.raises(ConfigError, match=message):
            _check_field_types(Future, values, "future")


def test_the_top_level_method_is_type_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"^method=1 has type int; expected one of \('features'"):
        config_from_dict({"method": 1})


def test_method_picks_the_family_and_its_input_size() -> None:
    from cxr_anomaly.config import methods, preset_config
    from cxr_anomaly.models.tang2019.config import paper_config, tang2019_config

    assert methods() == ("features", "tang2019", "pixel_knn")
    default = Config()
    assert default.method == "features" and default.data.image_size == 224
    tang = tang2019_config()
    assert tang.method == "tang2019" and tang.data.image_size == 64 == tang.model.image_size
    assert paper_config().method == "tang2019"
    assert preset_config("features") == preset_config("default") == default
    assert preset_config("tang2019") == tang and preset_config("paper") == paper_config()
    assert config_from_dict({"method": "tang2019"}) == tang
    assert config_from_dict({}) == default
    values = config_to_dict(tang)
    assert values["method"] == "tang2019"
    strides = values["features"]["pooled_strides"]  # a list, not a tuple: JSON and TOML take it
    assert isinstance(strides, list) and strides == list(tang.features.pooled_strides)
    assert config_from_dict(json.loads(json.dumps(values))) == tang
    with pytest.raises(ConfigError, match="method='gan'"):
        config_from_dict({"method": "gan"})
    with pytest.raises(ConfigError, match="multiple of 32"):
        config_from_dict({"data": {"image_size": 100}})
    with pytest.raises(ConfigError, match="64 px"):
        config_from_dict({"method": "tang2019", "data": {"image_size": 128}})


def test_a_config_file_naming_a_method_starts_from_that_family(tmp_path: Path) -> None:
    from cxr_anomaly.models.tang2019.config import tang2019_config

    path = tmp_path / "tang.toml"
    path.write_text('method = "tang2019"\n[model]\nbase_channels = 16\n')
    config = load_config(path, base=Config())
    assert config.method == "tang2019" and config.data.image_size == 64 and config.model.base_channels == 16
    assert config == with_overrides(tang2019_config(), "model", base_channels=16)
    assert load_config(path) == config


def test_model_describe_names_channels_latent_and_skips() -> None:
    assert ModelConfig().describe() == "base_channels 64, latent 100, skips 32/16/8/4"
    assert ModelConfig(skip_connections=(), latent_dim=4).describe() == "base_channels 64, latent 4, skips none"


def test_skip_connections_round_trip_through_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "skips.toml"
    path.write_text('method = "tang2019"\n[model]\nskip_connections = [16, 8, 4]\n')
    assert load_config(path).model.skip_connections == (16, 8, 4)


def test_a_retired_key_of_an_older_file_is_ignored_with_a_note(caplog: pytest.LogCaptureFixture) -> None:
    from cxr_anomaly.config import config_to_dict, stored_config_from_dict
    from cxr_anomaly.models.tang2019.config import tang2019_config

    values = config_to_dict(tang2019_config())
    values["train"]["num_workers"] = 4  # written by versions before it was retired
    with caplog.at_level("INFO", logger="cxr_anomaly.config"):
        config = stored_config_from_dict(values)
    assert config == tang2019_config() and "num_workers" not in config_to_dict(config)["train"]
    assert "ignoring train.num_workers=4" in caplog.text
    with pytest.raises(ConfigError, match="unknown key"):  # other unknown keys are still refused
        config_from_dict({**values, "train": {**values["train"], "num_worker": 4}})


def test_the_stored_layout_keeps_its_sections_and_their_order() -> None:
    # files written before the families owned their sections have this layout; it must not move
    from cxr_anomaly.models.features.config import FeatureConfig
    from cxr_anomaly.models.tang2019.config import ScoreConfig

    values = config_to_dict(Config())
    assert list(values) == ["method", "model", "loss", "train", "data", "score", "features"]
    assert list(values["score"]) == [
        "method",
        "neighbours",
        "weight_reconstruction",
        "weight_adversarial",
        "weight_latent",
        "target_specificity",
    ]
    assert isinstance(Config().score, ScoreConfig) and isinstance(Config().features, FeatureConfig)
    assert config_from_dict(json.loads(json.dumps(values))) == Config()


def test_a_family_section_must_keep_the_shared_fields() -> None:
    from dataclasses import dataclass as frozen_dataclass

    from cxr_anomaly.config import FamilySettings, register_families

    @frozen_dataclass(frozen=True)
    class NarrowScore:
        method: str = "x"

    with pytest.raises(ConfigError, match="target_specificity"):
        register_families({"narrow": FamilySettings(sections={"score": NarrowScore})})
    with pytest.raises(ConfigError, match="DEFAULT_METHOD"):
        register_families({"narrow": FamilySettings()})
    assert Config().score.target_specificity == 0.95  # a refused registration leaves the registered ones
