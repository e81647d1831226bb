"""Model-family registry and the shared `pathasst train FAMILY` argument convention."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from pathasst.errors import ConfigError, NotLandedError
from pathasst.trainers import registry
from pathasst.trainers.registry import FamilySpec

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = {"selector": 4, "subfig": 4, "splitter": 5, "pathclip": 7, "pathasst": 9}


@pytest.fixture
def family():
    """Register a family for one test, whatever happens, unregister it afterwards."""
    names = []

    def add(spec: FamilySpec) -> FamilySpec:
        names.append(spec.name)
        return registry.register(spec)

    yield add
    for name in names:
        registry.unregister(name)


def test_built_in_families_are_listed_with_their_issue():
    specs = {spec.name: spec for spec in registry.families()}
    assert BUILT_IN.keys() <= specs.keys()
    for name, issue in BUILT_IN.items():
        assert specs[name].issue == issue
        assert specs[name].description and "\n" not in specs[name].description
    assert "own loop" in specs["subfig"].description
    assert "ultralytics" in registry.__doc__ or "ultralytics" in Path(registry.__file__).read_text()


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_unlanded_family_raises_not_landed_with_the_issue(name):
    if registry.get(name).landed:
        pytest.skip(f"{name} has landed")
    with pytest.raises(NotLandedError) as info:
        registry.run(name, ["max_steps=1"])
    message = str(info.value)
    assert message.startswith(f"`pathasst train {name}` is not available yet: it arrives with issue #{BUILT_IN[name]} (")
    assert info.value.exit_code == 2


def test_a_family_not_landed_says_which_issue_brings_it(family):
    family(FamilySpec("future", "a family still to come", issue=99))
    with pytest.raises(NotLandedError, match=r"`pathasst train future` is not available yet: it arrives with issue #99"):
        registry.run("future", ["max_steps=1"])


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown model family 'nope'.*selector"):
        registry.run("nope", [])


def test_register_refuses_a_taken_name_unless_replacing(family):
    family(FamilySpec("toyfam", "a toy family"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(FamilySpec("toyfam", "another"))
    registry.register(FamilySpec("toyfam", "replaced", main=lambda argv: 0), replace=True)
    assert registry.get("toyfam").description == "replaced"


def test_recipe_dir_is_the_package_data_folder():
    assert registry.recipe_dir("pathclip") == ROOT / "trainers" / "recipes" / "pathclip"
    assert registry.accelerate_config_dir() == ROOT / "trainers" / "recipes" / "accelerate"
    assert (registry.accelerate_config_dir() / "ddp.yaml").is_file()


def test_parse_train_argv_resolves_names_files_and_overrides(tmp_path):
    # a bare name is looked up in the family's recipe folder (the accelerate folder is a real one)
    parsed = registry.parse_train_argv(["a=1", "--recipe", "ddp", "b.c=x y"], family="accelerate")
    assert parsed.recipe == registry.accelerate_config_dir() / "ddp.yaml"
    assert parsed.overrides == ["a=1", "b.c=x y"]

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("{}\n")
    assert registry.parse_train_argv([f"--recipe={recipe}"]).recipe == recipe
    assert registry.parse_train_argv([]) == (None, [])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--recipe", "no_such_recipe"], "no_such_recipe"),
        (["--recipe"], "--recipe"),
        (["--lr", "3"], "unknown option"),
        (["max_steps"], "key=value"),
        (["=3"], "key=value"),
    ],
)
def test_parse_train_argv_errors_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        registry.parse_train_argv(argv, family="accelerate")


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        registry.parse_train_argv(["--help"], family="selector")
    assert info.value.code == 0
    assert "pathasst train selector" in capsys.readouterr().out


FAMILY_MODULE = '''
"""A test family: main(argv) -> int over the shared loop, the way real families plug in."""
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from pathasst.trainers.loop import TrainArgs, TrainTask, train
from pathasst.trainers.registry import load_family_config


@dataclass
class LineConfig(TrainArgs):
    slope: float = 2.0


class LineTask(TrainTask):
    name = "line"

    def __init__(self, cfg):
        self.cfg = cfg

    def build_model(self, args):
        return nn.Linear(1, 1)

    def train_dataset(self, args):
        x = torch.linspace(-1, 1, 32).unsqueeze(1)
        return TensorDataset(x, self.cfg.slope * x)

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x), y)


def main(argv):
    cfg = load_family_config(LineConfig, "linefam", argv)
    result = train(LineTask(cfg), cfg)
    return 0 if result.final_step == cfg.max_steps else 1
'''


def test_registered_family_runs_through_run(family, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from pathasst.trainers.loop import reset_accelerate_state

    (tmp_path / "pathasst_test_linefam.py").write_text(textwrap.dedent(FAMILY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "quick.yaml").write_text("slope: 3.0\nmax_steps: 5\nlr: 0.05\nsave_every: 0\n")
    real_recipe_dir = registry.recipe_dir
    monkeypatch.setattr(registry, "recipe_dir", lambda f: recipes if f == "linefam" else real_recipe_dir(f))
    family(FamilySpec("linefam", "fits a line", issue=None, entry="pathasst_test_linefam:main"))

    out = tmp_path / "run"
    try:
        code = registry.run("linefam", ["--recipe", "quick", f"output_dir={out}", "max_steps=4"])
    finally:
        reset_accelerate_state()
        sys.modules.pop("pathasst_test_linefam", None)
    assert code == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["final_step"] == 4
    config = (out / "config.yaml").read_text()
    assert "slope: 3.0" in config and "max_steps: 4" in config


def test_run_returns_the_family_exit_code(family):
    family(FamilySpec("exitfam", "returns 3", main=lambda argv: 3 if argv == ["x=1"] else 0))
    family(FamilySpec("nonefam", "returns None", main=lambda argv: None))
    assert registry.run("exitfam", ["x=1"]) == 3
    assert registry.run("nonefam") == 0
