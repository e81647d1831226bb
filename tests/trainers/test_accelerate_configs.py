"""The accelerate launcher configs under trainers/recipes/accelerate/ load the way
`accelerate launch --config_file` loads them, with keys it knows."""

from __future__ import annotations

import pytest
import yaml

pytest.importorskip("accelerate")

from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

from pathasst.trainers.registry import accelerate_config_dir  # noqa: E402

EXPECTED = {
    "single_gpu": DistributedType.NO,
    "ddp": DistributedType.MULTI_GPU,
    "fsdp": DistributedType.FSDP,
    "deepspeed_zero2": DistributedType.DEEPSPEED,
    "deepspeed_zero3": DistributedType.DEEPSPEED,
}
BASE_KEYS = {
    "compute_environment", "distributed_type", "mixed_precision", "num_processes", "num_machines",
    "machine_rank", "gpu_ids", "use_cpu", "debug", "main_training_function", "downcast_bf16",
}


def _launch_parser():
    from accelerate.commands.launch import launch_command_parser

    return launch_command_parser()


def test_the_folder_holds_exactly_the_documented_configs():
    folder = accelerate_config_dir()
    assert {p.stem for p in folder.glob("*.yaml")} == set(EXPECTED)
    readme = (folder / "README.md").read_text()
    assert "accelerate launch --config_file" in readme and "-m pathasst.cli train" in readme
    for name in EXPECTED:
        assert f"{name}.yaml" in readme


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_with_the_keys_accelerate_expects(name):
    path = accelerate_config_dir() / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    assert BASE_KEYS <= raw.keys()
    # extra keys would make accelerate refuse the file; from_yaml_file checks that
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.distributed_type == EXPECTED[name]
    assert config.num_machines == 1 and config.machine_rank == 0

    # every key of the fsdp_/deepspeed_ sections is an option `accelerate launch` knows
    options = {action.dest for action in _launch_parser()._actions}
    for section in (config.fsdp_config, config.deepspeed_config):
        for key in section:
            assert key in options, f"{name}.yaml: unknown launcher key {key}"
    # the recipe decides gradient accumulation (see the README): the launcher must not override it
    assert "gradient_accumulation_steps" not in config.deepspeed_config


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_accepts_the_config(name):
    # the launcher's own validation, short of starting processes
    validate = pytest.importorskip("accelerate.commands.launch")._validate_launch_command
    parser = _launch_parser()
    args = parser.parse_args(["--config_file", str(accelerate_config_dir() / f"{name}.yaml"), "train.py"])
    args, _, _ = validate(args)
    assert bool(args.use_fsdp) == (name == "fsdp")
    assert bool(args.use_deepspeed) == name.startswith("deepspeed")
    assert bool(args.multi_gpu) == (name == "ddp")


def test_fsdp_is_full_shard_auto_wrapped_by_transformer_layer_in_bf16():
    config = load_config_from_file(str(accelerate_config_dir() / "fsdp.yaml"))
    fsdp = config.fsdp_config
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config.mixed_precision == "bf16"


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_zero_stage(name, stage):
    config = load_config_from_file(str(accelerate_config_dir() / f"{name}.yaml"))
    assert config.deepspeed_config["zero_stage"] == stage
