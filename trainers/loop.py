"""The shared training loop every model family reuses (DESIGN.md §6, §9.9).

A family supplies a :class:`TrainTask` (model, data, loss, optional evaluation and export) and a
config; :func:`train` runs one Accelerate loop over it: AdamW, a warm-up + decay schedule counted in
optimizer steps, gradient accumulation, mixed precision, periodic evaluation, atomic checkpoints and
exact resumption.

How a family's config holds these keys: by inheritance. The family dataclass subclasses
:class:`TrainArgs` and adds its own keys, so every key is top-level in recipes and on the command
line (``max_steps=100 output_dir=runs/x``) in every family, the same flat convention the subfig
family keeps over ultralytics' own loop. Flat rather than nested (a ``train:`` section) because
``data``, ``output_dir``, ``max_steps`` and ``seed`` are promised to mean the same in every family
and should be spelled the same too. A family adds checks by overriding :meth:`TrainArgs.validate`
(calling ``super().validate()``), and passes the whole config to :func:`train`::

    @dataclass
    class SelectorConfig(TrainArgs):
        model: str = "convnext_tiny"
        image_size: int = 224

    cfg = load_config(SelectorConfig, recipe, ["max_steps=100", "model=convnext_nano"])
    train(SelectorTask(cfg), cfg)

Resumption contract. A checkpoint (``output_dir/checkpoints/step-N``) holds what
``accelerator.save_state`` writes (model, optimizer, scheduler, gradient scaler, RNG states of
every process) plus ``trainer_state.json``: the optimizer step, the data position (epoch and the
number of batches of that epoch already consumed) and the loss/eval history. On resume the loop
restores all of it, sets the sampler epoch and skips the consumed batches with
``accelerator.skip_first_batches``, so the run continues with the same batches and the same
random numbers as an uninterrupted run: final weights are bitwise equal on the same hardware.
Two things make that hold and are owned here: the shuffling sampler is Accelerate's seedable one
(data order = f(seed, epoch)), and the data loader draws its worker base seed from its own
generator, re-seeded every epoch, never from the global RNG (otherwise creating the iterator on
resume would consume a random number the uninterrupted run did not). Randomness *inside* a
dataset (augmentations) is reproduced exactly only when it is a function of the sample and epoch
rather than of a global stream; the loop cannot rewind a stream that was consumed by skipped
batches in another process.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pathasst.config import config_hash, to_dict, write_resolved_config
from pathasst.errors import ConfigError, OutputError

if TYPE_CHECKING:  # torch and accelerate are imported lazily: importing this module stays cheap
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16")
LOG_WITH = ("none", "tensorboard", "wandb", "all")

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
SUMMARY_FILE = "train_summary.json"
CONFIG_FILE = "config.yaml"
MODEL_DIR = "model"
LOCK_FILE = ".train.lock"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"  # temp folders: never a complete checkpoint, removed at the next start


class TrainConfigError(ConfigError, ValueError):
    """An invalid training value.

    Also a ``ValueError`` so that :func:`pathasst.config.load_config`, which wraps ``ValueError``
    raised by a dataclass's checks, adds the recipe file or override it came from.
    """


@dataclass
class TrainArgs:
    """Training keys that every model family shares and that mean the same everywhere.

    A family's config subclasses it (see the module docstring); every check runs in
    ``__post_init__``, so :func:`pathasst.config.load_config` reports a bad value with its origin.

    Attributes:
        data: dataset folder or Hub id the family's task reads (None: the task's default).
        output_dir: run folder: ``config.yaml``, ``checkpoints/``, ``model/``, ``train_summary.json``.
        max_steps: length of the run in optimizer steps (not micro-batches).
        seed: seeds Python, NumPy and torch, and the data order.
        batch_size: micro-batch size per process.
        grad_accum_steps: micro-batches per optimizer step; the effective batch is
            ``batch_size * grad_accum_steps * num_processes``.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decoupled weight decay (not applied to biases and norm weights).
        adam_betas: AdamW betas.
        adam_eps: AdamW epsilon.
        warmup_steps: linear warm-up from 0 to ``lr``, in optimizer steps.
        schedule: after warm-up: ``cosine`` (to 0 at max_steps), ``linear`` (to 0), ``constant``.
        max_grad_norm: gradient clipping by global norm; 0 turns it off.
        mixed_precision: ``no``, ``fp16`` (needs a GPU) or ``bf16``; takes precedence over the
            accelerate config file's value.
        gradient_checkpointing: trade compute for memory (the model must support it).
        num_workers: data-loader worker processes.
        save_every: checkpoint every N optimizer steps; 0 saves only at the end.
        keep_checkpoints: keep the newest N checkpoints; 0 keeps all.
        eval_every: call the task's ``evaluate`` every N optimizer steps; 0 turns it off.
        log_every: log loss and learning rate every N optimizer steps.
        log_with: experiment tracker: ``none``, ``tensorboard``, ``wandb`` or ``all`` (installed ones).
        resume: ``auto`` (newest complete checkpoint in output_dir, if any), ``never`` (refuse an
            output_dir that holds checkpoints) or the path of a checkpoint folder.
    """

    data: Optional[str] = None
    output_dir: str = "runs/train"
    max_steps: int = 1000
    seed: int = 42
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    num_workers: int = 0
    save_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0
    log_every: int = 10
    log_with: str = "none"
    resume: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the values alone (no hardware involved). Subclasses extend it and call super.

        Raises:
            TrainConfigError: naming the key and the accepted values.
        """

        def fail(key: str, expected: str) -> None:
            raise TrainConfigError(f"{key} must be {expected} (got {getattr(self, key)!r})")

        for key in ("max_steps", "batch_size", "grad_accum_steps", "log_every"):
            if getattr(self, key) < 1:
                fail(key, ">= 1")
        for key in ("warmup_steps", "save_every", "keep_checkpoints", "eval_every", "num_workers"):
            if getattr(self, key) < 0:
                fail(key, ">= 0")
        if self.warmup_steps > self.max_steps:
            raise TrainConfigError(
                f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps})"
            )
        if not (self.lr > 0 and math.isfinite(self.lr)):
            fail("lr", "a positive number")
        if self.weight_decay < 0:
            fail("weight_decay", ">= 0")
        if self.max_grad_norm < 0:
            fail("max_grad_norm", ">= 0 (0 turns clipping off)")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            fail("adam_betas", "two numbers in [0, 1)")
        if self.adam_eps <= 0:
            fail("adam_eps", "> 0")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"one of {', '.join(SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            fail("mixed_precision", f"one of {', '.join(MIXED_PRECISION)}")
        if self.log_with not in LOG_WITH:
            fail("log_with", f"one of {', '.join(LOG_WITH)}")
        if not self.resume:
            fail("resume", "'auto', 'never' or a checkpoint path")
        if not self.output_dir:
            fail("output_dir", "a folder path")
        if self.data:
            from pathasst.errors import InputError
            from pathasst.inputs import data_ref

            try:
                data_ref(self.data)
            except InputError as exc:
                raise TrainConfigError(str(exc)) from None


@dataclass
class TrainResult:
    """What :func:`train` returns (the same facts as ``train_summary.json``).

    Attributes:
        final_step: optimizer steps done in total (equals ``max_steps`` after a full run).
        start_step: step the run started from (0, or the resumed checkpoint's step).
        losses: mean training loss of every optimizer step since step 1 (history from the
            checkpoint included), as seen by the main process.
        eval_history: one dict per evaluation: ``{"step": N, **metrics}``.
        output_dir: the run folder.
        checkpoint_dir: newest complete checkpoint.
        model_dir: where the task exported the final model.
        config_path: the resolved config written at the start.
        summary_path: ``train_summary.json``.
        resumed_from: checkpoint the run continued from, if any.
    """

    final_step: int
    start_step: int
    losses: list[float]
    eval_history: list[dict[str, Any]]
    output_dir: Path
    checkpoint_dir: Optional[Path]
    model_dir: Optional[Path]
    config_path: Path
    summary_path: Path
    resumed_from: Optional[Path] = None


class TrainTask(abc.ABC):
    """What a model family implements to train through :func:`train`.

    Required: :meth:`build_model`, :meth:`loss`, and either :meth:`train_dataset` (the loop builds
    a shuffling loader that resumes exactly) or :meth:`train_dataloader` (own loader, e.g. a
    length-grouped sampler). Everything else has a default.

    ``evaluate`` and ``export`` are called on every process (sharded models need every rank to
    gather weights or metrics); use ``accelerator.is_main_process`` for writing files.
    """

    name: str = "train"
    """Short name: tracker project, progress-bar label, summary."""

    evaluate_at_start: bool = False
    """Also evaluate the initial model (step 0) when ``eval_every`` is set: a baseline in
    ``eval_history`` that later evaluations are compared with (skipped on resume)."""

    @abc.abstractmethod
    def build_model(self, args: TrainArgs) -> "torch.nn.Module":
        """Return the model to train (on CPU; Accelerate moves it)."""

    @abc.abstractmethod
    def loss(self, model: "torch.nn.Module", batch: Any) -> "torch.Tensor | tuple[torch.Tensor, Mapping[str, Any]]":
        """Return the scalar loss of one micro-batch, optionally with a dict of scalar metrics."""

    def train_dataset(self, args: TrainArgs) -> "Dataset":
        """Return the map-style training dataset (used by the default :meth:`train_dataloader`)."""
        raise NotImplementedError(f"{type(self).__name__} must define train_dataset or train_dataloader")

    def collate(self, samples: list[Any]) -> Any:
        """Turn a list of samples into a batch (default: torch's default collation)."""
        from torch.utils.data import default_collate

        return default_collate(samples)

    def train_dataloader(self, args: TrainArgs) -> "DataLoader":
        """Return the training loader: shuffled, ``args.batch_size`` per process, incomplete last
        batch dropped (so every optimizer step sees full batches)."""
        import torch
        from torch.utils.data import DataLoader

        return DataLoader(
            self.train_dataset(args),
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.num_workers,
            collate_fn=self.collate,
            generator=torch.Generator(),
            persistent_workers=False,
        )

    def param_groups(self, model: "torch.nn.Module", args: TrainArgs) -> list[dict[str, Any]]:
        """AdamW parameter groups: weight decay on matrices, none on biases and norm weights."""
        decay, no_decay = [], []
        for _, param in model.named_parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": args.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def enable_gradient_checkpointing(self, model: "torch.nn.Module") -> None:
        """Turn on activation checkpointing (transformers, timm and open_clip spellings)."""
        if hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        elif hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        else:
            raise TrainConfigError(
                f"gradient_checkpointing=true but {type(model).__name__} does not support it"
            )

    def evaluate(self, model: "torch.nn.Module", accelerator: "Accelerator") -> Optional[Mapping[str, Any]]:
        """Return scalar metrics on held-out data (called every ``eval_every`` steps, model in
        eval mode, RNG states preserved so evaluation never changes the training run)."""
        return None

    def should_stop(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """Return True to end the run after this evaluation (early stopping).

        Called after every evaluation with its metrics. The loop then checkpoints this step,
        records ``stopped_at`` in ``trainer_state.json`` and exports; a resumed run that finds
        ``stopped_at`` in its checkpoint does not train further (it only exports again).
        """
        return False

    def state_meta(self) -> Optional[Mapping[str, Any]]:
        """JSON facts saved as ``task`` in every checkpoint's ``trainer_state.json`` (e.g. the model
        signature a resume must match: the family checks it before it starts)."""
        return None

    def summary(self) -> Optional[Mapping[str, Any]]:
        """JSON facts added as ``task_summary`` to ``train_summary.json`` (e.g. skipped records)."""
        return None

    def export(self, model: "torch.nn.Module", output_dir: Path, accelerator: "Accelerator") -> None:
        """Write the final model in its ecosystem's format (default: safetensors state dict).

        ``model`` is the prepared (possibly wrapped) model; ``accelerator.unwrap_model`` and
        ``accelerator.get_state_dict`` give the bare module and the full weights.
        """
        accelerator.save_model(model, output_dir)


def _overrides(task: TrainTask, method: str) -> bool:
    return getattr(type(task), method) is not getattr(TrainTask, method)


# --------------------------------------------------------------------------------------------
# checkpoints


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first.

    Complete means: named ``step-N`` (temp folders are renamed to that only after everything,
    ``trainer_state.json`` last, is on disk) and holding ``trainer_state.json``.
    """
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """Newest complete checkpoint of a run, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _fsync_tree(path: Path) -> None:
    # Durable before the rename that declares it complete: survives a power cut, not only a kill.
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _remove_atomically(path: Path) -> None:
    # Rename first: a kill during rmtree must not leave a half-deleted folder named step-N.
    trash = path.with_name(f"{_TMP_PREFIX}delete-{path.name}-{os.getpid()}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_temp(root: Path) -> None:
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(_TMP_PREFIX):
                logger.info("removing incomplete checkpoint folder %s", path)
                shutil.rmtree(path, ignore_errors=True)


def _save_checkpoint(accelerator: "Accelerator", root: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    final = root / f"step-{step}"
    tmp = root / f"{_TMP_PREFIX}step-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process: sharded weights, per-process RNG states
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state_tmp = tmp / (STATE_FILE + ".part")
        state_tmp.write_text(json.dumps(state, indent=1))
        state_tmp.replace(tmp / STATE_FILE)
        _fsync_tree(tmp)
        if final.exists():  # same step saved before (a rerun of a finished run): replace it
            _remove_atomically(final)
        tmp.rename(final)
        _fsync_dir(root)
        logger.info("checkpoint saved: %s (step %d)", final, step)
        if keep:
            for old in list_checkpoints(root.parent)[:-keep]:
                _remove_atomically(old)
    accelerator.wait_for_everyone()
    return final


@contextlib.contextmanager
def _output_lock(output_dir: Path, enabled: bool) -> Iterator[None]:
    """Hold an exclusive lock on the run folder: two runs writing the same checkpoints would
    corrupt each other. The OS drops the lock when the process dies, even by kill -9."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; run without the guard
        enabled = False
    if not enabled:
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    fh = open(output_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise OutputError(
            f"{output_dir} is in use by another training run ({holder}); "
            "wait for it to finish or choose another output_dir"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _resolve_resume(args: TrainArgs, output_dir: Path) -> Optional[Path]:
    if args.resume == "never":
        existing = list_checkpoints(output_dir)
        if existing:
            raise OutputError(
                f"{output_dir} already holds checkpoints (newest {existing[-1].name}); "
                "use resume=auto to continue it, or choose another output_dir"
            )
        return None
    if args.resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(args.resume)
    if not (path / STATE_FILE).is_file():
        raise TrainConfigError(
            f"resume: {path} is not a complete checkpoint (no {STATE_FILE}); "
            "use 'auto', 'never' or a checkpoints/step-N folder"
        )
    return path


# --------------------------------------------------------------------------------------------
# the loop


def _lr_lambda(args: TrainArgs):
    # The transformers schedules' formulas (get_cosine/linear/constant_schedule_with_warmup),
    # written out so the train extra needs neither transformers nor a model-specific stack.
    warmup, total, kind = args.warmup_steps, args.max_steps, args.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return factor


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Run a block (evaluation) without changing any random state the training run uses."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


def _check_trackers(log_with: str) -> Optional[str]:
    if log_with == "none":
        return None
    if log_with == "all":
        return "all"
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}[log_with]()
    if not available:
        raise TrainConfigError(f"log_with={log_with} but the {log_with} package is not installed")
    return log_with


def _make_accelerator(args: TrainArgs, output_dir: Path, log_with: Optional[str]) -> "Accelerator":
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    try:
        accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.grad_accum_steps,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=False),
            # data order = f(seed, epoch): identical on every process and after a resume
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
            # the scheduler is stepped by the loop once per optimizer step, so warmup_steps and
            # max_steps mean optimizer steps whatever the number of processes
            step_scheduler_with_optimizer=False,
        )
    except ValueError as exc:  # accelerate's own refusal, e.g. bf16 on a GPU without it
        raise TrainConfigError(f"mixed_precision={args.mixed_precision}: {exc}") from None
    device = accelerator.device.type
    if args.mixed_precision == "fp16" and device == "cpu":
        raise TrainConfigError("mixed_precision=fp16 needs a GPU; on CPU use 'bf16' or 'no'")
    if args.mixed_precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainConfigError(
            f"mixed_precision=bf16 is not supported by {torch.cuda.get_device_name()}; use 'fp16' or 'no'"
        )
    if accelerator.gradient_accumulation_steps != args.grad_accum_steps:
        raise TrainConfigError(
            f"grad_accum_steps={args.grad_accum_steps} but the accelerate launcher set "
            f"{accelerator.gradient_accumulation_steps}; remove gradient_accumulation_steps from the "
            "accelerate config file (the recipe decides)"
        )
    return accelerator


def _pin_generator(loader: Any, generator: "torch.Generator") -> None:
    # Accelerate's wrappers pass the loader's generator on to the DataLoader they build, except
    # the dispatcher used for iterable datasets, which drops it: put it back, so that creating the
    # iterator draws its base seed from our generator, not from the global RNG.
    from torch.utils.data import DataLoader

    while loader is not None:
        if isinstance(loader, DataLoader) and loader.generator is None:
            loader.generator = generator
        loader = getattr(loader, "base_dataloader", None)


def _unpack_loss(out: Any) -> "tuple[torch.Tensor, Mapping[str, Any]]":
    if isinstance(out, tuple):
        loss, metrics = out
        return loss, (metrics or {})
    return out, {}


def _scalar(value: Any) -> float:
    return float(value.detach().float().mean().item()) if hasattr(value, "detach") else float(value)


def train(task: TrainTask, args: TrainArgs, config: Any = None) -> TrainResult:
    """Train ``task`` with ``args``; resume, checkpoint, evaluate and export on the way.

    Args:
        task: the family's model, data and loss.
        args: the training keys: usually the family's whole config (a :class:`TrainArgs` subclass).
        config: what to write to ``config.yaml`` when it is not ``args`` itself.

    Returns:
        A :class:`TrainResult`; the same facts are written to ``output_dir/train_summary.json``.

    Raises:
        ConfigError: an invalid value (named), found before any model is built.
        OutputError: ``resume=never`` on a folder that holds checkpoints, or a folder in use by
            another run.
    """
    started = time.time()
    args.validate()
    if args.eval_every and not _overrides(task, "evaluate"):
        raise TrainConfigError(f"eval_every={args.eval_every} but {type(task).__name__} has no evaluate()")
    log_with = _check_trackers(args.log_with)
    output_dir = Path(args.output_dir)
    if args.resume not in ("auto", "never"):
        _resolve_resume(args, output_dir)  # a wrong path fails now, before the accelerator starts
    accelerator = _make_accelerator(args, output_dir, log_with)
    with _output_lock(output_dir, accelerator.is_main_process):
        return _train(task, args, config, accelerator, log_with, started)


def _train(task, args, config, accelerator, log_with, started) -> TrainResult:
    import torch
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    ckpt_root = output_dir / CHECKPOINTS
    resume_from = _resolve_resume(args, output_dir)  # under the lock: no other run is writing
    main = accelerator.is_main_process
    config = args if config is None else config
    cfg_hash = config_hash(config)

    if main:
        _clean_temp(ckpt_root)
        config_path = write_resolved_config(config, output_dir / CONFIG_FILE)
    else:
        config_path = output_dir / CONFIG_FILE
    accelerator.wait_for_everyone()

    set_seed(args.seed)
    model = task.build_model(args)
    if args.gradient_checkpointing:
        task.enable_gradient_checkpointing(model)
    model.train()
    dataloader = task.train_dataloader(args)
    # The loader's own generator feeds the per-iterator base seed (worker seeds); re-seeded each
    # epoch below, so creating an iterator never draws from the global RNG (see module docstring).
    if dataloader.generator is None:
        dataloader.generator = torch.Generator()
    loader_generator = dataloader.generator
    optimizer = torch.optim.AdamW(
        task.param_groups(model, args), lr=args.lr, betas=tuple(args.adam_betas), eps=args.adam_eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(args))
    model, optimizer, dataloader, scheduler = accelerator.prepare(model, optimizer, dataloader, scheduler)
    try:
        batches_per_epoch: Optional[int] = len(dataloader)
    except TypeError:  # an iterable dataset without a length: epochs end when the loader does
        batches_per_epoch = None
    if batches_per_epoch == 0:
        raise TrainConfigError(
            f"batch_size={args.batch_size}: the training data gives no full batch on this process"
        )

    step, epoch, batch_in_epoch = 0, 0, 0
    stopped_at: Optional[int] = None
    losses: list[float] = []
    eval_history: list[dict[str, Any]] = []
    if resume_from is not None:
        state = json.loads((resume_from / STATE_FILE).read_text())
        accelerator.load_state(str(resume_from))
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        losses, eval_history = list(state.get("losses", [])), list(state.get("eval_history", []))
        stopped_at = state.get("stopped_at")
        if state.get("config_hash") != cfg_hash and main:
            logger.warning("resuming %s with a config that differs from the checkpoint's", resume_from)
        if batches_per_epoch is not None and batch_in_epoch > batches_per_epoch:
            raise TrainConfigError(
                f"cannot resume {resume_from}: it stopped at batch {batch_in_epoch} of an epoch, "
                f"but the data now gives {batches_per_epoch} batches per epoch"
            )
        if main:
            logger.info("resumed from %s: step %d, epoch %d, batch %d", resume_from, step, epoch, batch_in_epoch)
    start_step = step

    if log_with and main:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in to_dict(args).items()}
        accelerator.init_trackers(task.name, config=flat)
    if main:
        logger.info(
            "training %s: steps %d..%d, %s batches/epoch, batch %d x accum %d x %d processes",
            task.name, step, args.max_steps, batches_per_epoch or "?", args.batch_size,
            args.grad_accum_steps, accelerator.num_processes,
        )

    def trainer_state() -> dict[str, Any]:
        return {
            "format": 1,
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "batches_per_epoch": batches_per_epoch,
            "losses": losses,
            "eval_history": eval_history,
            "config_hash": cfg_hash,
            "stopped_at": stopped_at,
            "task": dict(task.state_meta() or {}) or None,
        }

    if args.eval_every and task.evaluate_at_start and step == 0 and not eval_history:
        eval_history.append(_evaluate(task, model, accelerator, 0, log_with))
    last_saved: Optional[Path] = resume_from
    progress = tqdm(total=args.max_steps, initial=step, desc=task.name, disable=not main, dynamic_ncols=True)
    step_loss = torch.zeros((), device=accelerator.device)
    step_metrics: dict[str, Any] = {}  # summed over the step's micro-batches, synced only to log
    micro = 0
    if stopped_at is not None and main:
        logger.info("the run stopped early at step %d (task.should_stop): not training further", stopped_at)
    while step < args.max_steps and stopped_at is None:
        epoch_start, produced = batch_in_epoch, 0
        loader_generator.manual_seed(args.seed * 1_000_003 + epoch)
        dataloader.set_epoch(epoch)
        epoch_loader = dataloader
        if batch_in_epoch:
            epoch_loader = accelerator.skip_first_batches(dataloader, batch_in_epoch)
            epoch_loader.set_epoch(epoch)
        _pin_generator(epoch_loader, loader_generator)
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                loss, metrics = _unpack_loss(task.loss(model, batch))
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            batch_in_epoch += 1
            produced += 1
            micro += 1
            step_loss += loss.detach().float()
            for key, value in metrics.items():
                value = value.detach().float().mean() if hasattr(value, "detach") else float(value)
                step_metrics[key] = step_metrics.get(key, 0.0) + value
            if not accelerator.sync_gradients:
                continue

            # one optimizer step is complete
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule in place
                scheduler.step()
            step += 1
            if batches_per_epoch is not None and batch_in_epoch >= batches_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            mean_loss = step_loss.item() / micro
            losses.append(mean_loss)
            lr = scheduler.get_last_lr()[0]
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.3g}")
            if step % args.log_every == 0 or step == args.max_steps:
                logged = {"train/loss": accelerator.reduce(step_loss / micro, "mean").item(), "train/lr": lr}
                logged.update({f"train/{k}": _scalar(v) / micro for k, v in step_metrics.items()})
                if log_with:
                    accelerator.log(logged, step=step)
                if main:
                    logger.info("step %d: %s", step, " ".join(f"{k}={v:.5g}" for k, v in logged.items()))
            step_loss.zero_()
            step_metrics.clear()
            micro = 0

            # Evaluate before saving: the checkpoint then holds the state the next step starts from.
            if args.eval_every and step % args.eval_every == 0:
                eval_history.append(_evaluate(task, model, accelerator, step, log_with))
                if task.should_stop(step, eval_history[-1]):
                    stopped_at = step
                    if main:
                        logger.info("stopping at step %d: the task's should_stop() asked for it", step)
            if (args.save_every and step % args.save_every == 0) or step == args.max_steps or stopped_at is not None:
                last_saved = _save_checkpoint(accelerator, ckpt_root, step, trainer_state(), args.keep_checkpoints)
            if step >= args.max_steps or stopped_at is not None:
                break
        else:  # the loader is exhausted
            if produced == 0 and epoch_start == 0:
                raise TrainConfigError("the training data loader yielded no batch")
            if batch_in_epoch:  # no optimizer step ended exactly at the epoch's end: next epoch
                epoch, batch_in_epoch = epoch + 1, 0
    progress.close()
    if step > args.max_steps and main:
        logger.warning("the resumed checkpoint is at step %d, past max_steps=%d", step, args.max_steps)

    model_dir = output_dir / MODEL_DIR
    accelerator.wait_for_everyone()
    model.eval()
    task.export(model, model_dir, accelerator)
    accelerator.wait_for_everyone()

    summary_path = output_dir / SUMMARY_FILE
    result = TrainResult(
        final_step=step,
        start_step=start_step,
        losses=losses,
        eval_history=eval_history,
        output_dir=output_dir,
        checkpoint_dir=last_saved,
        model_dir=model_dir,
        config_path=config_path,
        summary_path=summary_path,
        resumed_from=resume_from,
    )
    if main:
        summary = {
            "task": task.name,
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()},
            "max_steps": args.max_steps,
            "final_loss": losses[-1] if losses else None,
            "config_hash": cfg_hash,
            "num_processes": accelerator.num_processes,
            "mixed_precision": args.mixed_precision,
            "wall_time_s": round(time.time() - started, 3),
            "stopped_at": stopped_at,
        }
        task_summary = task.summary()
        if task_summary:
            summary["task_summary"] = dict(task_summary)
        tmp = summary_path.with_name(SUMMARY_FILE + ".part")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(summary_path)
        logger.info("training done: step %d, summary %s", step, summary_path)
    accelerator.end_training()
    return result


def _evaluate(task: TrainTask, model, accelerator, step: int, log_with: Optional[str]) -> dict[str, Any]:
    model.eval()
    try:
        with _preserved_rng():
            import torch

            with torch.no_grad():
                metrics = dict(task.evaluate(model, accelerator) or {})
    finally:
        model.train()
    record = {"step": step, **{k: _scalar(v) for k, v in metrics.items()}}
    if log_with:
        accelerator.log({f"eval/{k}": v for k, v in record.items() if k != "step"}, step=step)
    if accelerator.is_main_process:
        logger.info("eval at step %d: %s", step, " ".join(f"{k}={v:.5g}" for k, v in record.items() if k != "step"))
    return record


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide state, so a later :func:`train` in the same process may use
    different settings (mixed precision, accumulation). For tests and notebooks; a launched
    training process never needs it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
