"""Config errors fail early and name the key; overrides and presets compose."""

from __future__ import annotations

import dataclasses

import pytest

from skyloom.config import ConfigError, apply_overrides, build, load, read_yaml, save, to_dict
from skyloom.model.config import ModelConfig


@dataclasses.dataclass
class Section:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"


@dataclasses.dataclass
class Root:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: Section = dataclasses.field(default_factory=Section)


def test_unknown_key_suggests_the_closest_valid_key():
    with pytest.raises(ConfigError) as err:
        build(Root, {"model": {"preset": "tiny", "n_layer": 4}})
    assert err.value.key == "model.n_layer"
    assert "did you mean 'model.n_layers'" in str(err.value)


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="'trian'.*did you mean 'train'"):
        build(Root, {"trian": {"lr": 1}})


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="'train.steps'.*integer"):
        build(Root, {"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="'model.tie_embeddings'.*true/false"):
        build(Root, {"model": {"tie_embeddings": "yes"}})


def test_impossible_value_names_the_key():
    with pytest.raises(ConfigError, match="'model.dim'.*not divisible by n_heads=3"):
        build(Root, {"model": {"preset": "tiny", "n_heads": 3}})
    with pytest.raises(ConfigError, match="'model.n_kv_heads'"):
        build(Root, {"model": {"preset": "tiny", "n_kv_heads": 3}})
    with pytest.raises(ConfigError, match="'model.arch'.*one of"):
        build(Root, {"model": {"arch": "lama"}})


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'skywork-13b'"):
        build(Root, {"model": {"preset": "skywork13b"}})


def test_dotted_overrides_and_yaml_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tiny\ntrain:\n  lr: 6e-4\n")
    cfg = load(Root, path, ["model.n_layers=2", "train.steps=7", "train.name=demo"])
    assert cfg.model.n_layers == 2 and cfg.model.dim == 128  # preset filled the rest
    assert cfg.train.lr == pytest.approx(6e-4) and cfg.train.steps == 7 and cfg.train.name == "demo"


def test_override_of_a_value_as_a_section_fails():
    with pytest.raises(ConfigError, match="train.lr"):
        apply_overrides({"train": {"lr": 1.0}}, ["train.lr.x=2"])
    with pytest.raises(ConfigError, match="key.subkey=value"):
        apply_overrides({}, ["train.lr"])


def test_effective_config_round_trips(tmp_path):
    cfg = build(Root, {"model": {"preset": "tiny", "n_layers": 3}})
    save(cfg, tmp_path / "config.yaml")
    again = build(Root, read_yaml(tmp_path / "config.yaml"))
    assert to_dict(again) == to_dict(cfg)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  preset: tiny\n  dim: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+"):
        read_yaml(path)
