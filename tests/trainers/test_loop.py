"""The shared training loop: a toy regression task trained on CPU.

The toy task lives in a module written to tmp_path, so the in-process tests and the subprocesses
that get killed run exactly the same code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from pathasst.config import load_config  # noqa: E402
from pathasst.errors import ConfigError, OutputError  # noqa: E402
from pathasst.trainers import loop  # noqa: E402
from pathasst.trainers.loop import TrainArgs, TrainResult, list_checkpoints, train  # noqa: E402

TOY_SOURCE = '''
"""A small MLP regression with dropout on shuffled synthetic data: RNG matters at every step."""
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from pathasst.trainers.loop import TrainArgs, TrainTask


class ToyTask(TrainTask):
    name = "toy"

    def __init__(self, n=62, dropout=0.2, step_sleep=0.0):
        self.dropout, self.step_sleep = dropout, step_sleep
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.tanh(self.x @ torch.randn(8, 1, generator=g)) + 0.01 * torch.randn(n, 1, generator=g)
        self.eval_calls = []

    def build_model(self, args):
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(self.dropout), nn.Linear(32, 1))

    def train_dataset(self, args):
        return TensorDataset(self.x, self.y)

    def loss(self, model, batch):
        if self.step_sleep:
            time.sleep(self.step_sleep)
        x, y = batch
        pred = model(x)
        return nn.functional.mse_loss(pred, y), {"abs_err": (pred - y).abs().mean()}


class EvalToyTask(ToyTask):
    def evaluate(self, model, accelerator):
        self.eval_calls.append(model.training)
        torch.rand(100)  # evaluation that draws random numbers must not change the training run
        with torch.no_grad():
            return {"mse": nn.functional.mse_loss(model(self.x), self.y)}


class OwnLoaderToyTask(ToyTask):
    """A family that builds its own loader, with no generator of its own."""

    def train_dataloader(self, args):
        return DataLoader(self.train_dataset(args), batch_size=args.batch_size, shuffle=True, drop_last=True)


class _Stream(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


class StreamToyTask(ToyTask):
    """An iterable dataset without a length."""

    def train_dataloader(self, args):
        return DataLoader(_Stream(self.x, self.y), batch_size=args.batch_size)


def toy_args(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir), max_steps=30, batch_size=6, grad_accum_steps=2, lr=1e-2,
        warmup_steps=3, save_every=7, keep_checkpoints=2, log_every=5, seed=1234,
    )
    values.update(overrides)
    return TrainArgs(**values)
'''

RUN_SOURCE = '''
import logging, os, sys, time
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(name)s: %(message)s", force=True)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_task import ToyTask, toy_args
from pathasst.trainers import loop

output_dir, step_sleep, hang_in = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if hang_in != "-":
    # Simulate a kill in the middle of a checkpoint save: accelerate has written the state files
    # into the temp folder, the loop has not yet declared it complete.
    from accelerate import Accelerator

    original = Accelerator.save_state

    def save_state(self, output_dir=None, **kwargs):
        result = original(self, output_dir, **kwargs)
        if os.path.basename(output_dir) == hang_in:
            print("HANGING IN SAVE", output_dir, flush=True)
            time.sleep(120)
        return result

    Accelerator.save_state = save_state
loop.train(ToyTask(step_sleep=step_sleep), toy_args(output_dir))
'''


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    loop.reset_accelerate_state()


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    (folder / "toy_task.py").write_text(TOY_SOURCE)
    (folder / "run_toy.py").write_text(textwrap.dedent(RUN_SOURCE))
    return folder


@pytest.fixture(scope="module")
def toy(toy_dir):
    spec = importlib.util.spec_from_file_location("pathasst_test_toy_task", toy_dir / "toy_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled")
    return env


def _start(toy_dir: Path, output_dir: Path, step_sleep: float = 0.0, hang_in: str = "-", processes: int = 1):
    stderr = open(output_dir.parent / f"{output_dir.name}.stderr", "ab")
    script = [str(toy_dir / "run_toy.py"), str(output_dir), str(step_sleep), hang_in]
    env = _env()
    if processes == 1:
        command = [sys.executable, "-u", *script]
    else:  # torchrun on CPU: gloo over loopback, one process per rank
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *script]
        env.update(ACCELERATE_USE_CPU="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=toy_dir)


def _run_to_end(toy_dir: Path, output_dir: Path, processes: int = 1) -> str:
    proc = _start(toy_dir, output_dir, processes=processes)
    out, _ = proc.communicate(timeout=120)
    err = (output_dir.parent / f"{output_dir.name}.stderr").read_text()[-3000:]
    assert proc.returncode == 0, out[-3000:] + err
    return out


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _run_until(toy_dir: Path, output_dir: Path, marker: str, **kwargs) -> list[str]:
    """Start a run, SIGKILL it (and every process it started) when stdout shows ``marker``."""
    proc = _start(toy_dir, output_dir, **kwargs)
    lines, deadline = [], time.monotonic() + 120
    try:
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                _kill_tree(proc.pid)
                break
            assert time.monotonic() < deadline, "the run never printed " + marker
        else:
            pytest.fail(f"run ended before printing {marker!r}:\n" + "".join(lines[-20:]))
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return lines


def _load_state(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return {
        "model": load_file(checkpoint / "model.safetensors"),
        "optimizer": torch.load(checkpoint / "optimizer.bin", weights_only=False),
        "scheduler": torch.load(checkpoint / "scheduler.bin", weights_only=False),
        "trainer": json.loads((checkpoint / loop.STATE_FILE).read_text()),
    }


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = _load_state(a), _load_state(b)
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["state"].keys() == ob["state"].keys() and oa["state"]
    for index in oa["state"]:
        for key, value in oa["state"][index].items():
            assert torch.equal(value, ob["state"][index][key]), (index, key)
    assert oa["param_groups"] == ob["param_groups"]
    assert sa["scheduler"] == sb["scheduler"]
    assert sa["trainer"]["losses"] == sb["trainer"]["losses"]


@pytest.fixture(scope="module")
def reference_run(toy_dir, tmp_path_factory):
    """The uninterrupted run every resumed run must reproduce bit for bit."""
    output_dir = tmp_path_factory.mktemp("reference") / "run"
    _run_to_end(toy_dir, output_dir)
    return output_dir


# --------------------------------------------------------------------------------------------


def test_run_decreases_loss_and_writes_outputs(toy, tmp_path):
    out = tmp_path / "run"
    result = train(toy.ToyTask(), toy.toy_args(out, max_steps=40, save_every=10))

    assert isinstance(result, TrainResult)
    assert result.final_step == 40 and result.start_step == 0 and result.resumed_from is None
    assert len(result.losses) == 40
    assert sum(result.losses[-5:]) / 5 < 0.5 * sum(result.losses[:5]) / 5
    # newest two of step-10..40 kept, complete, with the data position
    assert [p.name for p in list_checkpoints(out)] == ["step-30", "step-40"]
    assert result.checkpoint_dir == out / "checkpoints" / "step-40"
    state = json.loads((result.checkpoint_dir / loop.STATE_FILE).read_text())
    # 62 samples, batch 6, incomplete batch dropped: 10 batches = 5 optimizer steps per epoch
    assert (state["step"], state["epoch"], state["batch_in_epoch"], state["batches_per_epoch"]) == (40, 8, 0, 10)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["max_steps"] == 40 and config["output_dir"] == str(out)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["final_step"] == 40 and summary["task"] == "toy"
    assert summary["final_loss"] == result.losses[-1]
    assert (out / "model" / "model.safetensors").is_file()


def test_rerun_of_a_finished_run_does_no_work(toy, tmp_path):
    out = tmp_path / "run"
    first = train(toy.ToyTask(), toy.toy_args(out, max_steps=6, save_every=0))
    loop.reset_accelerate_state()
    again = train(toy.ToyTask(), toy.toy_args(out, max_steps=6, save_every=0))
    assert again.start_step == again.final_step == 6
    assert again.resumed_from == out / "checkpoints" / "step-6"
    assert again.losses == first.losses


@pytest.mark.slow
def test_kill_and_resume_is_bitwise_identical(toy_dir, reference_run, tmp_path):
    out = tmp_path / "run"
    # slow steps so that the kill after the first checkpoint lands well before the end
    lines = _run_until(toy_dir, out, "checkpoint saved", step_sleep=0.05)
    assert "step-7" in lines[-1]
    assert not (out / "train_summary.json").exists()
    assert [p.name for p in list_checkpoints(out)][-1] in ("step-7", "step-14")

    resumed = _run_to_end(toy_dir, out)
    assert "resumed from" in resumed
    # step 7 is mid-epoch (batch 4 of 10): the skipped batches and the sampler epoch matter
    _assert_same_state(reference_run / "checkpoints" / "step-30", out / "checkpoints" / "step-30")
    from safetensors.torch import load_file

    ref, got = load_file(reference_run / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.slow
def test_kill_during_checkpoint_save_leaves_no_complete_checkpoint(toy_dir, reference_run, tmp_path):
    out = tmp_path / "run"
    _run_until(toy_dir, out, "HANGING IN SAVE", hang_in=".tmp-step-14")

    ckpts = out / "checkpoints"
    partial = ckpts / ".tmp-step-14"
    assert (partial / "model.safetensors").is_file()  # the state files were written ...
    assert not (ckpts / "step-14").exists()  # ... but the checkpoint was never declared complete
    assert [p.name for p in list_checkpoints(out)] == ["step-7"]
    assert loop.latest_checkpoint(out) == ckpts / "step-7"

    resumed = _run_to_end(toy_dir, out)
    assert "removing incomplete checkpoint folder" in resumed
    assert "resumed from" in resumed and "step-7" in resumed
    assert not partial.exists()
    _assert_same_state(reference_run / "checkpoints" / "step-30", ckpts / "step-30")


@pytest.mark.slow
def test_two_process_kill_and_resume_is_bitwise_identical(toy_dir, tmp_path):
    """The same under data parallelism (2 CPU processes): per-rank RNG states, sharded batches,
    and the main process declaring checkpoints complete only after every rank saved."""
    reference = tmp_path / "reference"
    _run_to_end(toy_dir, reference, processes=2)
    summary = json.loads((reference / "train_summary.json").read_text())
    assert summary["num_processes"] == 2
    assert (reference / "checkpoints" / "step-30" / "random_states_1.pkl").is_file()

    out = tmp_path / "run"
    _run_until(toy_dir, out, "checkpoint saved", step_sleep=0.05, processes=2)
    assert not (out / "train_summary.json").exists()
    resumed = _run_to_end(toy_dir, out, processes=2)
    assert "resumed from" in resumed
    _assert_same_state(reference / "checkpoints" / "step-30", out / "checkpoints" / "step-30")


def test_incomplete_checkpoint_folders_are_ignored(toy, tmp_path):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    (ckpts / ".tmp-step-99").mkdir(parents=True)
    (ckpts / ".tmp-step-99" / loop.STATE_FILE).write_text(json.dumps({"step": 99}))
    (ckpts / "step-50").mkdir()  # named like a checkpoint, but without its state file
    (ckpts / "step-x").mkdir()
    assert list_checkpoints(out) == []

    result = train(toy.ToyTask(), toy.toy_args(out, max_steps=4, save_every=2))
    assert result.start_step == 0 and result.resumed_from is None
    assert not (ckpts / ".tmp-step-99").exists()
    assert [p.name for p in list_checkpoints(out)] == ["step-2", "step-4"]


def test_resume_never_refuses_a_folder_with_checkpoints(toy, tmp_path):
    out = tmp_path / "run"
    train(toy.ToyTask(), toy.toy_args(out, max_steps=4, save_every=0))
    loop.reset_accelerate_state()
    with pytest.raises(OutputError, match="resume=auto"):
        train(toy.ToyTask(), toy.toy_args(out, max_steps=6, resume="never"))


def test_a_folder_in_use_by_another_run_is_refused(toy, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    with open(out / loop.LOCK_FILE, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on elsewhere")
        held.flush()
        with pytest.raises(OutputError, match="in use by another training run"):
            train(toy.ToyTask(), toy.toy_args(out, max_steps=4))
    loop.reset_accelerate_state()
    assert train(toy.ToyTask(), toy.toy_args(out, max_steps=4, save_every=0)).final_step == 4


@pytest.mark.parametrize("task_name", ["ToyTask", "OwnLoaderToyTask", "StreamToyTask"])
def test_resume_from_an_explicit_checkpoint(toy, tmp_path, task_name):
    # in-process variant of kill-and-resume: step 4 of 5 per epoch is mid-epoch; the task's own
    # loader without a generator must resume exactly too, and so must a loader without a length
    task = getattr(toy, task_name)
    first = tmp_path / "first"
    train(task(), toy.toy_args(first, max_steps=10, save_every=4, keep_checkpoints=0))
    loop.reset_accelerate_state()
    result = train(
        task(), toy.toy_args(tmp_path / "second", max_steps=10, resume=str(first / "checkpoints" / "step-4"))
    )
    assert result.start_step == 4 and result.final_step == 10
    assert result.resumed_from == first / "checkpoints" / "step-4"
    _assert_same_state(first / "checkpoints" / "step-10", tmp_path / "second" / "checkpoints" / "step-10")


def _final_weights(result: TrainResult) -> dict:
    from safetensors.torch import load_file

    return load_file(result.checkpoint_dir / "model.safetensors")


def test_gradient_accumulation_matches_a_larger_batch(toy, tmp_path):
    common = dict(max_steps=12, save_every=0)
    accumulated = train(
        toy.ToyTask(n=64, dropout=0.0), toy.toy_args(tmp_path / "accum", batch_size=4, grad_accum_steps=2, **common)
    )
    loop.reset_accelerate_state()
    large = train(
        toy.ToyTask(n=64, dropout=0.0), toy.toy_args(tmp_path / "large", batch_size=8, grad_accum_steps=1, **common)
    )
    a, b = _final_weights(accumulated), _final_weights(large)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    assert accumulated.losses == pytest.approx(large.losses, abs=1e-6)
    # and the runs did learn, so the comparison is not between two barely moved models
    assert sum(accumulated.losses[-3:]) < sum(accumulated.losses[:3])


def test_evaluation_hook_every_n_steps_without_changing_training(toy, tmp_path):
    task = toy.EvalToyTask()
    result = train(task, toy.toy_args(tmp_path / "eval", max_steps=10, eval_every=3, save_every=0))
    assert [record["step"] for record in result.eval_history] == [3, 6, 9]
    assert all(isinstance(record["mse"], float) for record in result.eval_history)
    assert task.eval_calls == [False, False, False]  # the model was in eval mode
    summary = json.loads((tmp_path / "eval" / "train_summary.json").read_text())
    assert [r["step"] for r in summary["eval_history"]] == [3, 6, 9]

    loop.reset_accelerate_state()
    plain = train(toy.ToyTask(), toy.toy_args(tmp_path / "plain", max_steps=10, save_every=0))
    assert result.losses == plain.losses  # evaluation drew random numbers, training did not notice
    a, b = _final_weights(result), _final_weights(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("max_steps", 0, "max_steps"),
        ("batch_size", 0, "batch_size"),
        ("grad_accum_steps", 0, "grad_accum_steps"),
        ("warmup_steps", 31, "warmup_steps"),
        ("lr", 0.0, "lr"),
        ("schedule", "cosine_restarts", "schedule"),
        ("mixed_precision", "fp8", "mixed_precision"),
        ("log_with", "mlflow", "log_with"),
        ("keep_checkpoints", -1, "keep_checkpoints"),
        ("adam_betas", [0.9], "adam_betas"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(key, value, message):
    values = {"max_steps": 30, key: value}
    with pytest.raises(ConfigError, match=message):
        TrainArgs(**values)


@dataclass
class _FamilyConfig(TrainArgs):
    model: str = "mlp"
    width: int = 16

    def validate(self) -> None:
        super().validate()
        if self.width < 1:
            raise loop.TrainConfigError(f"width must be >= 1 (got {self.width})")


def test_family_config_subclasses_train_args_with_load_config(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: wide\nmax_steps: 50\nlr: 0.003\nadam_betas: [0.9, 0.98]\n")
    cfg = load_config(_FamilyConfig, recipe, ["max_steps=20", "mixed_precision=bf16", "width=8"])
    assert isinstance(cfg, TrainArgs)
    assert (cfg.model, cfg.width, cfg.max_steps, cfg.lr, cfg.mixed_precision) == ("wide", 8, 20, 0.003, "bf16")
    assert cfg.adam_betas == [0.9, 0.98]

    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        load_config(_FamilyConfig, recipe, ["max_steps=0"])
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config(_FamilyConfig, recipe, ["warmup_steps=60"])
    with pytest.raises(ConfigError, match="width must be >= 1"):  # the family's own check
        load_config(_FamilyConfig, recipe, ["width=0"])
    with pytest.raises(ConfigError, match="max_step"):
        load_config(_FamilyConfig, recipe, ["max_step=3"])


def test_family_config_trains_and_is_written_whole(toy, tmp_path):
    cfg = _FamilyConfig(output_dir=str(tmp_path / "run"), max_steps=3, save_every=0, width=5)
    train(toy.ToyTask(), cfg)
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["width"] == 5 and written["model"] == "mlp" and written["max_steps"] == 3


def test_runtime_checks_fail_before_the_model_is_built(toy, tmp_path, monkeypatch):
    built = []
    task = toy.ToyTask()
    monkeypatch.setattr(task, "build_model", lambda args: built.append(1))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="mixed_precision=fp16"):
            train(task, toy.toy_args(tmp_path / "a", mixed_precision="fp16"))
        loop.reset_accelerate_state()
    with pytest.raises(ConfigError, match="eval_every"):
        train(task, toy.toy_args(tmp_path / "b", eval_every=5))
    with pytest.raises(ConfigError, match="resume"):
        train(task, toy.toy_args(tmp_path / "c", resume=str(tmp_path / "no-such-checkpoint")))
    from accelerate.utils import is_tensorboard_available

    if not is_tensorboard_available():
        with pytest.raises(ConfigError, match="log_with=tensorboard"):
            train(task, toy.toy_args(tmp_path / "d", log_with="tensorboard"))
    assert built == []
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        train(toy.ToyTask(), toy.toy_args(tmp_path / "e", gradient_checkpointing=True))


def test_launcher_accumulation_that_disagrees_with_the_recipe_is_refused(toy, tmp_path, monkeypatch):
    # what `accelerate launch` exports when its config file sets gradient_accumulation_steps
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    with pytest.raises(ConfigError, match="grad_accum_steps=2 but the accelerate launcher set 4"):
        train(toy.ToyTask(), toy.toy_args(tmp_path / "run"))


def test_bf16_on_cpu_trains(toy, tmp_path):
    result = train(toy.ToyTask(), toy.toy_args(tmp_path / "run", max_steps=4, save_every=0, mixed_precision="bf16"))
    assert result.final_step == 4 and all(0 < loss < 10 for loss in result.losses)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("cosine", [0.0, 0.5, 1.0, 0.5, 0.0]),
        ("linear", [0.0, 0.5, 1.0, 0.5, 0.0]),
        ("constant", [0.0, 0.5, 1.0, 1.0, 1.0]),
    ],
)
def test_schedules_warm_up_then_decay_in_optimizer_steps(schedule, expected):
    factor = loop._lr_lambda(TrainArgs(max_steps=6, warmup_steps=2, schedule=schedule))
    assert [factor(s) for s in (0, 1, 2, 4, 6)] == pytest.approx(expected)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_trains_and_resumes(toy, tmp_path, precision):
    """Run where a CUDA device exists (`pytest -m gpu`): the same loop, on the GPU, in fp16/bf16."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    args = toy.toy_args(tmp_path / "run", max_steps=8, save_every=4, mixed_precision=precision)
    result = train(toy.ToyTask(), args)
    assert result.final_step == 8 and all(0 < loss < 10 for loss in result.losses)
    from pathasst.trainers.loop import reset_accelerate_state

    reset_accelerate_state()
    again = train(toy.ToyTask(), toy.toy_args(tmp_path / "run", max_steps=12, save_every=4,
                                              mixed_precision=precision))
    assert again.start_step == 8 and again.final_step == 12
