"""Typed configuration: recipe and override errors name the key and where it came from."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from pathasst.config import config_hash, load_config, parse_overrides, redact, write_resolved_config
from pathasst.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Recipe:
    data: Optional[str] = None
    output_dir: str = "runs/x"
    max_steps: int = 100
    seed: int = 0
    precision: Literal["no", "bf16", "fp16"] = "no"
    optim: Optim = field(default_factory=Optim)
    hf_token: Optional[str] = None

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


def write(tmp_path, name, data):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_recipe_and_overrides_layer_in_order(tmp_path):
    recipe = write(tmp_path, "tiny", {"max_steps": 5, "optim": {"lr": 0.1}})
    cfg = load_config(Recipe, "tiny", ["optim.lr=0.5", "data=folder", "seed=7"], recipe_dir=tmp_path)
    assert isinstance(cfg, Recipe) and isinstance(cfg.optim, Optim)
    assert (cfg.max_steps, cfg.optim.lr, cfg.data, cfg.seed) == (5, 0.5, "folder", 7)
    assert load_config(Recipe, recipe).max_steps == 5  # a file path works as well as a bare name


def test_misspelt_key_names_key_and_recipe_file(tmp_path):
    recipe = write(tmp_path, "bad", {"max_stepz": 5})
    with pytest.raises(ConfigError) as err:
        load_config(Recipe, recipe)
    assert "max_stepz" in str(err.value) and str(recipe) in str(err.value)
    assert "Did you mean: 'max_steps'" in str(err.value)


def test_nested_unknown_key_and_wrong_types(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config(Recipe, write(tmp_path, "a", {"optim": {"lrr": 1}}))
    with pytest.raises(ConfigError, match=r"max_steps.*could not be converted"):
        load_config(Recipe, write(tmp_path, "b", {"max_steps": "many"}))
    with pytest.raises(ConfigError, match=r"command-line override.*precision.*fp8"):
        load_config(Recipe, None, ["precision=fp8"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Recipe, None, ["max_steps"])


def test_post_init_checks_and_missing_recipes(tmp_path):
    write(tmp_path, "tiny", {})
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        load_config(Recipe, None, ["max_steps=0"])
    with pytest.raises(ConfigError, match="recipe 'huge' not found.*available: tiny"):
        load_config(Recipe, "huge", recipe_dir=tmp_path)
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(Recipe, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(Recipe, tmp_path / "list.yaml")


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["a=1", "b=0.5", "c=true", "d=hello", "e.f=[1, 2]", "g="]) == {
        "a": 1, "b": 0.5, "c": True, "d": "hello", "e": {"f": [1, 2]}, "g": ""}
    assert parse_overrides(["license=Free to use: see the site", "m={a: 1}"]) == {
        "license": "Free to use: see the site", "m": {"a": 1}}


def test_resolved_config_redacts_secrets(tmp_path):
    cfg = load_config(Recipe, None, ["hf_token=hf_secret_value"])
    path = write_resolved_config(cfg, tmp_path / "config.yaml", extra={"openai_api_key": "sk-123"})
    text = path.read_text()
    assert "hf_secret_value" not in text and "sk-123" not in text
    saved = yaml.safe_load(text)
    assert saved["hf_token"] == "<redacted>" and saved["openai_api_key"] == "<redacted>"
    assert saved["optim"]["lr"] == 1e-3
    assert redact({"keywords": ["a"], "api_key": None}) == {"keywords": ["a"], "api_key": None}


def test_config_hash_tracks_meaning_not_noise():
    a = load_config(Recipe, None, ["seed=1"])
    b = load_config(Recipe, None, ["seed=1"])
    c = load_config(Recipe, None, ["seed=2"])
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert config_hash(a, ignore=["seed"]) == config_hash(c, ignore=["seed"])


def test_yaml_11_booleans_stay_strings_for_string_keys(tmp_path):
    cfg = load_config(Recipe, None, ["precision=no"])
    assert cfg.precision == "no"
    recipe = write(tmp_path, "r", {})
    recipe.write_text("precision: no\n")
    assert load_config(Recipe, recipe).precision == "no"

    @dataclass
    class Flags:
        enabled: bool = False

    assert load_config(Flags, None, ["enabled=yes"]).enabled is True
    assert load_config(Flags, None, ["enabled=true"]).enabled is True
    assert load_config(Flags, None, ["enabled=off"]).enabled is False
