"""`pathasst train subfig`: the YOLO subfigure and panel-label detector, trained with ultralytics.

Which YOLO. PathAsst's detector was a YOLOv7, and ultralytics has no YOLOv7 configuration. We use
**YOLOv8** (``yolov8{n,s,m,l,x}.yaml``), the closest of the families ultralytics supports (v5, v8,
11, 12, 26):

- its backbone and neck are YOLOv7's design with the blocks renamed: YOLOv7's E-ELAN aggregates the
  outputs of every stacked convolution of a stage by concatenation, and YOLOv8's C2f does the same
  inside a CSP split (v5's C3 keeps only the last output; 11's C3k2 and 12's attention blocks move
  further away); both necks are PAN-FPN over P3-P5 with an SPP(F) block on top;
- it matches YOLOv7's size classes: YOLOv8m (25.9M parameters, 79 GFLOPs, 50.2 COCO mAP50-95)
  sits next to YOLOv7 (36.9M, 105 GFLOPs, 51.4), YOLOv8s next to YOLOv7-tiny;
- what differs is the head: anchor-free and decoupled with DFL box regression (v7 is
  anchor-based). That is the head every supported family has, and for subfigures it is a gain:
  panels range from whole-page to thumbnail and from tall strips to wide bands, shapes that fixed
  COCO anchors fit badly.
YOLO11 (``model=yolo11m.yaml``) trains through the same recipe keys and is the choice when accuracy
per FLOP matters more than staying close to the published PathAsst detector; YOLOv9's GELAN (same
authors as YOLOv7) is in ultralytics too, but outside the families this project supports.

Training is ultralytics' own loop (see :mod:`pathasst.trainers.registry`), run fully offline
(:mod:`pathasst.ultralytics_offline`), from scratch (a ``.yaml`` architecture: a name ultralytics
ships, a file, or a mapping written inline in the recipe) or from a local ``.pt`` checkpoint.

How the shared training keys (:class:`~pathasst.trainers.loop.TrainArgs`) map onto ultralytics:

============================  ===============================================================
``data``                      a YOLO ``data.yaml``, a folder holding one, or a PathSubfig
                              dataset folder (exported to the YOLO layout under
                              ``output_dir/yolo_data``). A relative ``path:`` in a data.yaml is
                              resolved against the yaml's folder (ultralytics would use the
                              working directory); the resolved copy is ``output_dir/data.yaml``.
``output_dir``                ultralytics' ``save_dir``: ``weights/best.pt``, ``weights/last.pt``,
                              ``results.csv``, ``args.yaml``, plus our ``config.yaml`` and
                              ``train_summary.json``.
``max_steps``                 ultralytics counts epochs: the run lasts
                              ``min(epochs, ceil(max_steps * grad_accum_steps / batches_per_epoch))``
                              epochs, i.e. max_steps rounded up to whole epochs. The default is
                              unbounded, so ``epochs`` governs.
``seed``                      ``seed`` (with ultralytics' ``deterministic=True``).
``batch_size``                ``batch``.
``grad_accum_steps``          ``nbs = batch_size * grad_accum_steps`` (ultralytics accumulates
                              ``nbs / batch`` batches per optimizer step and scales weight decay
                              by the same ratio, so ``weight_decay`` is applied as given).
``lr``, ``weight_decay``      ``lr0``, ``weight_decay`` (``optimizer=auto`` ignores lr: use SGD,
                              AdamW, ...).
``adam_betas``                ``momentum = adam_betas[0]`` (SGD momentum and Adam beta1; beta2 is
                              fixed at 0.999 by ultralytics).
``warmup_steps``              0 (default): ultralytics' ``warmup_epochs`` (3, or
                              ``ultralytics.warmup_epochs``); N > 0: ``warmup_epochs`` =
                              N optimizer steps expressed in epochs.
``schedule``                  ``linear`` (ultralytics' default, to ``lrf``), ``cosine``
                              (``cos_lr=True``), ``constant`` (``lrf=1``).
``mixed_precision``           ``no`` -> ``amp=False``; ``fp16`` -> ``amp=True`` on CUDA (the
                              download-based AMP self-test replaced, see ultralytics_offline;
                              with several GPUs ultralytics' DDP workers run their own check,
                              which fails to download offline and then enables AMP);
                              ``bf16`` is refused (ultralytics trains in fp16 or fp32).
``num_workers``               ``workers`` (ultralytics uses 0 on CPU anyway).
``resume``                    ``auto``: continue ``output_dir/weights/last.pt`` with
                              ultralytics' ``resume=True`` when it is an unfinished run;
                              ``never``: refuse an output_dir holding one; a path: resume that
                              ``last.pt`` (or run folder) into ``output_dir``.
``log_with``                  ``tensorboard``/``all`` turn on ultralytics' TensorBoard callback.
not used                      ``adam_eps``, ``max_grad_norm`` (fixed at 10), ``save_every`` and
                              ``keep_checkpoints`` (``last.pt`` every epoch; see
                              ``ultralytics.save_period``), ``eval_every`` (validation every epoch;
                              ``val=false`` validates the final epoch only), ``log_every``.
                              ``gradient_checkpointing=true`` is refused.
============================  ===============================================================

Every other ultralytics training argument (augmentations, ``lrf``, ``cache``, ``save_period``,
``close_mosaic`` ...) goes in the ``ultralytics:`` mapping of a recipe, or on the command line as
``ultralytics.mosaic=0.5``.

Evaluation: :func:`evaluate` reports mAP50 and mAP50-95 of a checkpoint on one split of a YOLO
dataset (``pathasst curate detect --eval DATA --model M --split test`` on the command line); after
training, the summary holds the validation split's numbers and, when the data has one, the test
split's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import yaml

from pathasst.config import config_hash, to_dict, write_resolved_config
from pathasst.errors import ConfigError, InputError, OutputError
from pathasst.trainers.loop import TrainArgs, TrainConfigError

log = logging.getLogger(__name__)

FAMILY = "subfig"
CLASS_NAMES: dict[int, str] = {0: "subfigure", 1: "panel_label"}
CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "train_summary.json"
DATA_FILE = "data.yaml"
MODEL_FILE = "model.yaml"
EXPORT_DIR = "yolo_data"
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm", ".heic")

# ultralytics arguments that the top-level keys own: setting them in `ultralytics:` would be a
# second, conflicting way to say the same thing.
_OWNED = {
    "model": "model", "data": "data", "epochs": "epochs/max_steps", "batch": "batch_size",
    "imgsz": "imgsz", "lr0": "lr", "momentum": "adam_betas", "weight_decay": "weight_decay",
    "nbs": "grad_accum_steps", "seed": "seed", "workers": "num_workers", "amp": "mixed_precision",
    "device": "device", "optimizer": "optimizer", "cos_lr": "schedule", "resume": "resume",
    "project": "output_dir", "name": "output_dir", "save_dir": "output_dir", "exist_ok": "output_dir",
    "pretrained": "pretrained", "patience": "patience", "plots": "plots", "val": "val", "mode": "-",
    "task": "-",
}


@dataclass
class SubfigConfig(TrainArgs):
    """Config of ``pathasst train subfig``: the shared training keys plus the detector's own.

    The shared keys' meaning for this family is the table in the module docstring; the defaults of
    several of them are ultralytics' defaults (SGD, lr 0.01, momentum 0.937, weight decay 5e-4,
    batch 16 x 4 accumulated = nominal batch 64, linear decay).

    Attributes:
        model: ``.yaml`` architecture (a name ultralytics ships such as ``yolov8m.yaml``, or a
            file), a local ``.pt`` checkpoint to fine-tune, or a mapping: an architecture written
            inline (``nc``, ``backbone``, ``head``), saved as ``output_dir/model.yaml``.
        pretrained: a local ``.pt`` whose matching weights initialise a ``.yaml`` model.
        imgsz: training and validation image size (letterboxed square), a multiple of 32.
        epochs: the most epochs to train (see ``max_steps``).
        optimizer: ultralytics optimizer name: SGD, Adam, AdamW, NAdam, RAdam, RMSProp, MuSGD or
            auto (auto picks its own learning rate and ignores ``lr``).
        device: ``cpu``, ``0``, ``0,1`` (ultralytics' own DDP), ...; None picks the first GPU if any.
        patience: early stopping after this many epochs without improvement of fitness
            (0.1 mAP50 + 0.9 mAP50-95 on val).
        plots: write ultralytics' label, batch and curve plots.
        val: validate every epoch (False: only after the last one).
        eval_split: after training, also evaluate ``best.pt`` on this split when the data has it.
        ultralytics: any other ultralytics training argument (augmentation, ``lrf``, ``cache``...).
    """

    model: Any = "yolov8m.yaml"
    pretrained: Optional[str] = None
    imgsz: int = 640
    epochs: int = 100
    optimizer: str = "SGD"
    device: Optional[str] = None
    patience: int = 100
    plots: bool = True
    val: bool = True
    eval_split: Optional[str] = "test"
    ultralytics: dict[str, Any] = field(default_factory=dict)
    # TrainArgs keys with ultralytics' defaults for this family
    output_dir: str = "runs/subfig"
    max_steps: int = 1_000_000_000
    batch_size: int = 16
    grad_accum_steps: int = 4
    lr: float = 0.01
    weight_decay: float = 0.0005
    adam_betas: list[float] = field(default_factory=lambda: [0.937, 0.999])
    schedule: str = "linear"

    def validate(self) -> None:
        super().validate()
        if self.imgsz < 32:
            raise TrainConfigError(f"imgsz must be >= 32 pixels (got {self.imgsz})")
        if self.epochs < 1:
            raise TrainConfigError(f"epochs must be >= 1 (got {self.epochs})")
        if self.patience < 0:
            raise TrainConfigError(f"patience must be >= 0 (got {self.patience})")
        if self.mixed_precision == "bf16":
            raise TrainConfigError("mixed_precision=bf16 is not supported by ultralytics: use fp16 or no")
        if self.gradient_checkpointing:
            raise TrainConfigError("gradient_checkpointing is not supported by ultralytics' YOLO trainer")
        if isinstance(self.model, Mapping):
            missing = [k for k in ("backbone", "head") if k not in self.model]
            if missing:
                raise TrainConfigError(
                    f"model: an inline architecture needs {' and '.join(missing)} (ultralytics model YAML keys)"
                )
        elif isinstance(self.model, str) and self.model:
            _check_model_ref(self.model, "model")
        else:
            raise TrainConfigError(f"model must be a .yaml/.pt reference or an inline architecture (got {self.model!r})")
        if self.pretrained:
            if Path(self.pretrained).suffix.lower() != ".pt":
                raise TrainConfigError(f"pretrained={self.pretrained}: expected a local .pt checkpoint")
            _check_model_ref(self.pretrained, "pretrained")
        if not isinstance(self.ultralytics, Mapping):
            raise TrainConfigError("ultralytics must be a mapping of ultralytics training arguments")
        owned = sorted(k for k in self.ultralytics if k in _OWNED)
        if owned:
            hints = ", ".join(f"{k} -> {_OWNED[k]}=" for k in owned)
            raise TrainConfigError(f"ultralytics.{owned[0]}: set through the top-level key instead ({hints})")
        if self.schedule == "constant" and "lrf" in self.ultralytics:
            raise TrainConfigError("schedule=constant sets lrf=1; drop ultralytics.lrf")
        if self.warmup_steps and "warmup_epochs" in self.ultralytics:
            raise TrainConfigError("warmup_steps and ultralytics.warmup_epochs both set: keep one")


def _check_model_ref(ref: str, key: str) -> None:
    from pathasst.ultralytics_offline import check_local_model

    try:
        check_local_model(ref, key)
    except ConfigError as exc:
        raise TrainConfigError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# data: a YOLO data.yaml, a folder holding one, or a PathSubfig dataset folder


@dataclass
class YoloData:
    """A data.yaml ultralytics can read without guessing: absolute ``path``, no ``download``.

    Attributes:
        yaml_path: the resolved data.yaml.
        names: class index to name.
        splits: split key (train, val, test) to its image sources (folders or list files).
    """

    yaml_path: Path
    names: dict[int, str]
    splits: dict[str, list[Path]]

    def count_images(self, split: str) -> int:
        """Images in a split (folders counted recursively; list files by their lines)."""
        n = 0
        for src in self.splits.get(split, []):
            if src.is_dir():
                n += sum(1 for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            elif src.is_file() and src.suffix == ".txt":
                n += sum(1 for line in src.read_text().splitlines() if line.strip())
            elif src.is_file():
                n += 1
        return n


def _names(raw: Any, where: str) -> dict[int, str]:
    if isinstance(raw, list):
        return {i: str(n) for i, n in enumerate(raw)}
    if isinstance(raw, Mapping):
        try:
            return {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            pass
    raise InputError(f"{where}: 'names' must be a list or an index-to-name mapping")


def load_yolo_data(data_yaml: Path, out_yaml: Optional[Path] = None) -> YoloData:
    """Read a YOLO data.yaml and return it resolved (written to ``out_yaml`` when given).

    Raises:
        InputError: unreadable yaml, no train/val, no names, a split whose images are missing.
    """
    try:
        data = yaml.safe_load(Path(data_yaml).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"data={data_yaml}: cannot read the YOLO data yaml ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"data={data_yaml}: a YOLO data yaml is a mapping (path, train, val, names)")
    if "val" not in data and "validation" in data:
        data["val"] = data.pop("validation")
    missing = [k for k in ("train", "val") if not data.get(k)]
    if missing:
        raise InputError(f"data={data_yaml}: '{missing[0]}:' is missing; YOLO data yamls need train and val")
    if data.get("names") is None:
        raise InputError(f"data={data_yaml}: 'names' is missing (e.g. {{0: subfigure, 1: panel_label}})")
    names = _names(data["names"], f"data={data_yaml}")
    root = Path(data.get("path") or ".")
    if not root.is_absolute():
        # relative to the yaml's own folder, not to the working directory (ultralytics' reading)
        root = (Path(data_yaml).resolve().parent / root).resolve()
    splits: dict[str, list[Path]] = {}
    for key in ("train", "val", "test"):
        value = data.get(key)
        if not value:
            continue
        items = value if isinstance(value, list) else [value]
        paths = [(root / str(v)).resolve() for v in items]
        absent = [str(p) for p in paths if not p.exists()]
        if absent:
            raise InputError(f"data={data_yaml}: {key} images not found: {', '.join(absent)}")
        splits[key] = paths
    data["path"] = str(root)
    data["names"] = names
    data.pop("download", None)  # never let ultralytics fetch a dataset
    data.pop("nc", None)
    if out_yaml is not None:
        out_yaml.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_yaml.with_name(out_yaml.name + ".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(out_yaml)
    return YoloData(out_yaml or Path(data_yaml), names, splits)


def _is_pathsubfig(folder: Path) -> bool:
    return (folder / "data").is_dir() and any((folder / "data").glob("*.parquet"))


def _safe_name(image_id: str) -> str:
    digest = hashlib.sha1(image_id.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', image_id)[-80:]}-{digest}"


def _shard_split(path: Path) -> str:
    match = re.match(r"^(?P<split>.+?)-(\d{5}-of-\d{5}|p\d{6})\.parquet$", path.name)
    return match["split"] if match else path.stem.split("-", 1)[0]


def pathsubfig_to_yolo(dataset: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export a PathSubfig dataset folder to the YOLO layout; return its data.yaml.

    Layout: ``images/{train,val,test}/``, ``labels/{...}/`` with one ``class cx cy w h`` line per
    object (normalised), and ``data.yaml`` with ``names: {0: subfigure, 1: panel_label}``. The
    dataset's ``validation`` split becomes ``val``; without one, ``test`` (or else ``train``)
    stands in, with a warning. Boxes are clipped to the image; a box left with no area is
    skipped and counted in ``export.json``.

    This is the minimal conversion the trainer needs so that ``data=`` may name a PathSubfig
    folder; ``pathasst build subfig --yolo-export`` writes the same layout for published datasets.
    An export already complete for the same shards is reused (a resumed run finds it).

    Raises:
        InputError: no Parquet shards, or an unknown object category.
    """
    import pyarrow.parquet as pq

    src = Path(dataset)
    out = Path(out_dir)
    shards = sorted((src / "data").glob("*.parquet"))
    if not shards:
        raise InputError(f"data={src}: no data/*.parquet shards: not a PathSubfig dataset folder")
    fingerprint = hashlib.sha256(
        json.dumps([[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in shards]).encode()
    ).hexdigest()[:16]
    marker = out / "export.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("fingerprint") == fingerprint:
                return out / DATA_FILE
        except json.JSONDecodeError:
            pass
    if out.exists():
        shutil.rmtree(out)
    split_map = {"train": "train", "validation": "val", "val": "val", "test": "test"}
    category = {name: idx for idx, name in CLASS_NAMES.items()}
    counts: dict[str, int] = {}
    skipped_boxes = 0
    for shard in shards:
        split = split_map.get(_shard_split(shard), _shard_split(shard))
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=64):
            for row in batch.to_pylist():
                image = row.get("image") or {}
                data = image.get("bytes") if isinstance(image, dict) else None
                if not data:
                    continue
                w, h = int(row["width"]), int(row["height"])
                suffix = ".jpg" if data[:3] == b"\xff\xd8\xff" else ".png"
                stem = _safe_name(str(row["image_id"]))
                (out / "images" / split / f"{stem}{suffix}").write_bytes(data)
                lines = []
                for obj in row.get("objects") or []:
                    if obj["category"] not in category:
                        raise InputError(f"{shard}: image {row['image_id']}: unknown category {obj['category']!r}")
                    x, y, bw, bh = (float(v) for v in obj["bbox"])
                    x0, y0 = max(0.0, x), max(0.0, y)
                    x1, y1 = min(float(w), x + bw), min(float(h), y + bh)
                    if x1 - x0 < 1 or y1 - y0 < 1:
                        skipped_boxes += 1
                        continue
                    lines.append(
                        f"{category[obj['category']]} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                        f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
                    )
                (out / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
                counts[split] = counts.get(split, 0) + 1
    if not counts.get("train"):
        raise InputError(f"data={src}: the dataset has no train split")
    spec: dict[str, Any] = {"path": ".", "train": "images/train"}
    val = next((s for s in ("val", "test", "train") if counts.get(s)), "train")
    if val != "val":
        log.warning("data=%s has no validation split: validating on %s", src, val)
    spec["val"] = f"images/{val}"
    if counts.get("test"):
        spec["test"] = "images/test"
    spec["names"] = dict(CLASS_NAMES)
    (out / DATA_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    marker.write_text(json.dumps({"source": str(src), "fingerprint": fingerprint, "images": counts,
                                  "skipped_boxes": skipped_boxes}, indent=1))
    return out / DATA_FILE


def resolve_data(data: Optional[str], work_dir: Path) -> YoloData:
    """``data=`` as a resolved YOLO dataset, written as ``work_dir/data.yaml``.

    Raises:
        InputError: missing, a Hub id, or a folder that is neither YOLO nor PathSubfig.
    """
    if not data:
        raise InputError("data= is required: a YOLO data.yaml, a folder holding one, or a PathSubfig dataset folder")
    path = Path(data).expanduser()
    if not path.exists():
        raise InputError(
            f"data={data}: not found. The detector trains on local data: a YOLO data.yaml, a YOLO folder, or a "
            "PathSubfig dataset folder (download a Hub dataset first with `hf download --repo-type dataset`)"
        )
    if path.is_dir():
        if (path / DATA_FILE).is_file():
            path = path / DATA_FILE
        elif _is_pathsubfig(path):
            path = pathsubfig_to_yolo(path, work_dir / EXPORT_DIR)
        else:
            raise InputError(
                f"data={data}: the folder holds neither data.yaml (YOLO layout) nor data/*.parquet (PathSubfig)"
            )
    elif path.suffix.lower() not in (".yaml", ".yml"):
        raise InputError(f"data={data}: expected a YOLO data .yaml, a YOLO folder or a PathSubfig folder")
    return load_yolo_data(path, work_dir / DATA_FILE)


# --------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_state(path: Path) -> dict[str, Any]:
    """``epoch`` (-1 once training finished and the optimizer was stripped), whether it can resume,
    and its training arguments, read from an ultralytics checkpoint."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"{path}: not a readable ultralytics checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt and "ema" not in ckpt:
        raise InputError(f"{path}: not an ultralytics checkpoint (no 'model' entry)")
    epoch = ckpt.get("epoch", -1)
    return {
        "epoch": epoch,
        "resumable": epoch is not None and epoch >= 0 and ckpt.get("optimizer") is not None,
        "train_args": ckpt.get("train_args") or {},
    }


def resolve_checkpoint(ref: str | os.PathLike, what: str = "--model") -> Path:
    """A detector checkpoint from a ``.pt`` path or a run folder (``weights/best.pt``).

    Raises:
        InputError: missing, or a model folder of another family (named), or not a ``.pt``.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        for candidate in (path / "weights" / "best.pt", path / "weights" / "last.pt", path / "best.pt"):
            if candidate.is_file():
                return candidate
        family = _folder_family(path)
        raise InputError(
            f"{what} {ref} is {family}, not an ultralytics YOLO detector; pass the weights/best.pt written by "
            "`pathasst train subfig` (or its run folder)"
        )
    if not path.is_file():
        raise InputError(f"{what} {ref}: no such file or folder")
    if path.suffix.lower() != ".pt":
        raise InputError(
            f"{what} {ref}: expected an ultralytics .pt checkpoint (got a {path.suffix or 'suffix-less'} file); "
            "pass the weights/best.pt written by `pathasst train subfig`"
        )
    return path


def _folder_family(path: Path) -> str:
    if (path / "open_clip_config.json").is_file():
        return "an open_clip model folder (PathCLIP)"
    if (path / "adapter_config.json").is_file():
        return "a PEFT adapter folder"
    config = path / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError):
            cfg = {}
        if isinstance(cfg, dict) and "architecture" in cfg:
            return f"a timm model folder ({cfg['architecture']}, e.g. the pathology-image selector)"
        if isinstance(cfg, dict) and "model_type" in cfg:
            return f"a transformers model folder ({cfg['model_type']})"
        return "a model folder with a config.json"
    if (path / ".pathasst" / "manifest.json").is_file() or (path / "data").is_dir():
        return "a dataset folder"
    if (path / "checkpoints").is_dir():
        return "a run folder of the shared training loop (another model family)"
    return "a folder without weights/best.pt"


def load_detector(ref: str | os.PathLike, what: str = "--model"):
    """Load a subfigure detector checkpoint with ultralytics, checking that it is one.

    Returns:
        ``(model, path)``: the ``ultralytics.YOLO`` model and the checkpoint file.

    Raises:
        InputError: not a file ultralytics can load, not a detection model, or a detector whose
            classes do not include ``subfigure``.
    """
    path = resolve_checkpoint(ref, what)
    from pathasst.ultralytics_offline import import_ultralytics

    ultralytics = import_ultralytics()
    try:
        model = ultralytics.YOLO(str(path))
    except Exception as exc:  # noqa: BLE001 - whatever ultralytics raises on a foreign file
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise InputError(
            f"{what} {ref}: ultralytics cannot load it as a YOLO checkpoint ({type(exc).__name__}: {detail}); "
            "pass the weights/best.pt written by `pathasst train subfig`"
        ) from None
    if model.task != "detect":
        raise InputError(f"{what} {ref}: a YOLO {model.task} model, not a detector of subfigures")
    names = {int(k): str(v) for k, v in model.names.items()}
    if "subfigure" not in names.values():
        raise InputError(
            f"{what} {ref}: detects {sorted(names.values())[:8]}, not subfigures; train a subfigure detector "
            "with `pathasst train subfig`"
        )
    return model, path


# --------------------------------------------------------------------------------------------
# evaluation


def _metrics(det_metrics: Any) -> dict[str, Any]:
    results = dict(det_metrics.results_dict)
    out: dict[str, Any] = {
        "map50": round(float(results.get("metrics/mAP50(B)", 0.0)), 6),
        "map50_95": round(float(results.get("metrics/mAP50-95(B)", 0.0)), 6),
        "precision": round(float(results.get("metrics/precision(B)", 0.0)), 6),
        "recall": round(float(results.get("metrics/recall(B)", 0.0)), 6),
    }
    per_class: dict[str, Any] = {}
    with contextlib.suppress(Exception):  # no prediction at all leaves ultralytics' arrays empty
        for row in det_metrics.summary():
            per_class[str(row["Class"])] = {
                "images": int(row["Images"]),
                "instances": int(row["Instances"]),
                "map50": round(float(row["mAP50"]), 6),
                "map50_95": round(float(row["mAP50-95"]), 6),
            }
    nt = getattr(det_metrics, "nt_per_class", None)
    out["instances"] = int(nt.sum()) if nt is not None else None
    out["per_class"] = per_class
    return out


def evaluate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    split: str = "test",
    *,
    imgsz: Optional[int] = None,
    batch: int = 16,
    device: Optional[str] = None,
    conf: float = 0.001,
    iou: float = 0.7,
    work_dir: Optional[str | os.PathLike] = None,
) -> dict[str, Any]:
    """mAP50 and mAP50-95 of a detector on one split of a YOLO dataset, through ultralytics' val.

    Args:
        model: a ``.pt`` checkpoint or a ``pathasst train subfig`` run folder.
        data: a YOLO data.yaml, a folder holding one, or a PathSubfig dataset folder.
        split: ``train``, ``val`` or ``test``.
        imgsz: evaluation size; default: the size the model was trained at.
        batch: images per forward pass.
        device: ``cpu``, ``0``, ...; None: first GPU if any.
        conf: confidence floor of the predictions scored (mAP needs the whole PR curve: keep it low).
        iou: NMS IoU threshold.
        work_dir: where the resolved data.yaml (and a PathSubfig export) go; default: a temporary folder.

    Returns:
        ``{"model", "data", "split", "images", "instances", "map50", "map50_95", "precision",
        "recall", "per_class": {name: {...}}, "imgsz", "conf", "iou"}``.

    Raises:
        InputError: bad model or data, or a split the data does not have.
    """
    from pathasst.ultralytics_offline import import_ultralytics

    import_ultralytics()
    split = {"validation": "val"}.get(split, split)
    detector, path = load_detector(model, "model")
    with contextlib.ExitStack() as stack:
        work = Path(work_dir) if work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        resolved = resolve_data(str(data), work)
        if split not in resolved.splits:
            raise InputError(f"data={data}: no '{split}' split (has {', '.join(resolved.splits)})")
        _check_names(resolved.names, detector.names, f"data={data}")
        size = imgsz or int((detector.ckpt or {}).get("train_args", {}).get("imgsz") or 640)
        kwargs: dict[str, Any] = dict(
            data=str(resolved.yaml_path), split=split, imgsz=size, batch=batch, conf=conf, iou=iou,
            plots=False, save_json=False, verbose=False, save_dir=str(work / f"val-{split}"),
        )
        if device is not None:
            kwargs["device"] = device
        metrics = detector.val(**kwargs)
        result = {
            "model": str(path),
            "data": str(data),
            "split": split,
            "images": resolved.count_images(split),
            **_metrics(metrics),
            "imgsz": size,
            "conf": conf,
            "iou": iou,
        }
    return result


def _check_names(data_names: Mapping[int, str], model_names: Mapping[Any, str], where: str) -> None:
    model_names = {int(k): str(v) for k, v in model_names.items()}
    if dict(data_names) != model_names:
        raise InputError(f"{where}: classes {dict(data_names)} differ from the model's {model_names}")


# --------------------------------------------------------------------------------------------
# training


def _epochs(cfg: SubfigConfig, n_train: int) -> tuple[int, int]:
    """(epochs to run, batches per epoch) from ``epochs`` and ``max_steps``."""
    batches = max(1, math.ceil(n_train / cfg.batch_size))
    from_steps = math.ceil(cfg.max_steps * cfg.grad_accum_steps / batches)
    return max(1, min(cfg.epochs, from_steps)), batches


def ultralytics_args(cfg: SubfigConfig, data: YoloData, output_dir: Path) -> dict[str, Any]:
    """The keyword arguments of ``YOLO.train`` for a config (see the module docstring's table)."""
    n_train = data.count_images("train")
    if n_train == 0:
        raise InputError(f"data: no training images in {', '.join(map(str, data.splits.get('train', [])))}")
    epochs, batches = _epochs(cfg, n_train)
    args: dict[str, Any] = dict(cfg.ultralytics)
    args.update(
        data=str(data.yaml_path),
        epochs=epochs,
        imgsz=cfg.imgsz,
        batch=cfg.batch_size,
        nbs=cfg.batch_size * cfg.grad_accum_steps,
        workers=cfg.num_workers,
        seed=cfg.seed,
        optimizer=cfg.optimizer,
        lr0=cfg.lr,
        momentum=cfg.adam_betas[0],
        weight_decay=cfg.weight_decay,
        cos_lr=cfg.schedule == "cosine",
        amp=cfg.mixed_precision == "fp16",
        patience=cfg.patience,
        plots=cfg.plots,
        val=cfg.val,
        save_dir=str(output_dir),
        exist_ok=True,
        verbose=True,
    )
    if cfg.schedule == "constant":
        args["lrf"] = 1.0
    if cfg.warmup_steps:
        args["warmup_epochs"] = cfg.warmup_steps * cfg.grad_accum_steps / batches
    if cfg.device is not None:
        args["device"] = cfg.device
    if cfg.pretrained:
        args["pretrained"] = cfg.pretrained
    return args


def _check_ultralytics_keys(keys: Sequence[str]) -> None:
    from ultralytics.cfg import DEFAULT_CFG_DICT

    unknown = sorted(k for k in keys if k not in DEFAULT_CFG_DICT)
    if unknown:
        import difflib

        hints = {k: difflib.get_close_matches(k, DEFAULT_CFG_DICT, n=1) for k in unknown}
        detail = ", ".join(f"{k}" + (f" (did you mean {hints[k][0]}?)" if hints[k] else "") for k in unknown)
        raise ConfigError(f"ultralytics: unknown training argument(s): {detail}")


def _model_source(cfg: SubfigConfig, output_dir: Path) -> str:
    if isinstance(cfg.model, Mapping):
        path = output_dir / MODEL_FILE
        path.write_text(yaml.safe_dump(to_dict(dict(cfg.model)), sort_keys=False))
        return str(path)
    return str(cfg.model)


def _resume_from(cfg: SubfigConfig, output_dir: Path) -> tuple[Optional[Path], bool]:
    """(checkpoint to resume, whether the run in output_dir is already complete)."""
    last = output_dir / "weights" / "last.pt"
    if cfg.resume == "never":
        if last.exists():
            raise OutputError(
                f"{output_dir} already holds a run (weights/last.pt); use resume=auto to continue it, "
                "or choose another output_dir"
            )
        return None, False
    if cfg.resume == "auto":
        if not last.exists():
            return None, False
        state = checkpoint_state(last)
        return (last, False) if state["resumable"] else (None, True)
    path = Path(cfg.resume).expanduser()
    if path.is_dir():
        path = path / "weights" / "last.pt"
    if not path.is_file():
        raise TrainConfigError(f"resume={cfg.resume}: no such checkpoint (expected a last.pt or its run folder)")
    state = checkpoint_state(path)
    if not state["resumable"]:
        raise TrainConfigError(
            f"resume={cfg.resume}: that run is finished (its optimizer state was stripped); start a new run "
            f"with model={path} to fine-tune from it"
        )
    return path, False


def _write_summary(output_dir: Path, summary: dict[str, Any]) -> Path:
    path = output_dir / SUMMARY_FILE
    tmp = path.with_name(SUMMARY_FILE + ".part")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)
    return path


def train(cfg: SubfigConfig, callbacks: Optional[Mapping[str, Callable]] = None) -> dict[str, Any]:
    """Train (or resume) a detector as configured; return the summary also written to
    ``output_dir/train_summary.json``.

    Args:
        cfg: the resolved config.
        callbacks: ultralytics callbacks by event name (``on_fit_epoch_end``...), added to the
            model before training: progress hooks, early stops, tests.

    Raises:
        ConfigError, InputError, OutputError: before any training starts.
    """
    from pathasst.trainers.loop import _output_lock
    from pathasst.ultralytics_offline import import_ultralytics, patched_amp_check

    started = time.monotonic()
    ultralytics = import_ultralytics(cfg.log_with)
    _check_ultralytics_keys(list(cfg.ultralytics))
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    with _output_lock(output_dir, True):
        resume_ckpt, finished = _resume_from(cfg, output_dir)
        data = resolve_data(cfg.data, output_dir)
        if "subfigure" not in data.names.values():
            raise InputError(
                f"data={cfg.data}: classes {data.names} do not include 'subfigure'; the subfig family trains "
                "subfigure (and panel_label) detectors"
            )
        args = ultralytics_args(cfg, data, output_dir)
        extra = {"family": FAMILY, "ultralytics_args": {k: v for k, v in args.items() if k != "verbose"}}
        if finished:
            log.info("%s holds a finished run; nothing to train (resume=never or a new output_dir starts another)",
                     output_dir)
        else:
            if resume_ckpt is None:
                write_resolved_config(cfg, output_dir / CONFIG_FILE, extra=extra)
                model = ultralytics.YOLO(_model_source(cfg, output_dir), task="detect")
                train_kwargs = args
            else:
                log.info("resuming %s with ultralytics' resume (its checkpoint's arguments are kept)", resume_ckpt)
                model = ultralytics.YOLO(str(resume_ckpt))
                train_kwargs = {k: args[k] for k in ("data", "save_dir", "workers", "plots", "val") if k in args}
                if "device" in args:
                    train_kwargs["device"] = args["device"]
                train_kwargs["resume"] = True
            for event, fn in (callbacks or {}).items():
                model.add_callback(event, fn)
            amp_guard = patched_amp_check() if args.get("amp") else contextlib.nullcontext()
            with amp_guard:
                model.train(**train_kwargs)
        summary = _summarise(cfg, data, output_dir, resume_ckpt, started)
        _write_summary(output_dir, summary)
    return summary


def _summarise(cfg: SubfigConfig, data: YoloData, output_dir: Path, resumed: Optional[Path], started: float
               ) -> dict[str, Any]:
    import ultralytics

    best, last = output_dir / "weights" / "best.pt", output_dir / "weights" / "last.pt"
    if not best.is_file():
        raise OutputError(f"training in {output_dir} ended without weights/best.pt")
    train_args = checkpoint_state(last if last.is_file() else best)["train_args"]
    epochs_done = 0
    results_csv = output_dir / "results.csv"
    if results_csv.is_file():
        epochs_done = max(0, len(results_csv.read_text().strip().splitlines()) - 1)
    batches = max(1, math.ceil(data.count_images("train") / int(train_args.get("batch") or cfg.batch_size)))
    accumulate = max(1, round(int(train_args.get("nbs") or 64) / int(train_args.get("batch") or cfg.batch_size)))
    device = cfg.device.split(",")[0] if cfg.device else None  # evaluation runs on one device
    metrics = {"val": evaluate(best, data.yaml_path, "val", batch=cfg.batch_size, device=device,
                               work_dir=output_dir / ".eval")}
    if cfg.eval_split and cfg.eval_split not in ("val", "validation") and cfg.eval_split in data.splits:
        metrics[cfg.eval_split] = evaluate(best, data.yaml_path, cfg.eval_split, batch=cfg.batch_size,
                                           device=device, work_dir=output_dir / ".eval")
    for m in metrics.values():
        for key in ("model", "data", "conf", "iou"):
            m.pop(key, None)
    shutil.rmtree(output_dir / ".eval", ignore_errors=True)
    return {
        "family": FAMILY,
        "model": cfg.model if isinstance(cfg.model, str) else MODEL_FILE,
        "best": "weights/best.pt",
        "last": "weights/last.pt",
        "epochs": int(train_args.get("epochs") or 0),
        "epochs_done": epochs_done,
        "optimizer_steps_approx": epochs_done * math.ceil(batches / accumulate),
        "images": {k: data.count_images(k) for k in data.splits},
        "names": data.names,
        "metrics": metrics,
        "map50": metrics["val"]["map50"],
        "map50_95": metrics["val"]["map50_95"],
        "resumed_from": str(resumed) if resumed else None,
        "config_hash": config_hash(cfg),
        "ultralytics_version": ultralytics.__version__,
        "seconds": round(time.monotonic() - started, 2),
    }


def main(argv: Sequence[str] = ()) -> int:
    """``pathasst train subfig [--recipe NAME_OR_FILE] [key=value ...]``."""
    from pathasst.trainers.registry import load_family_config

    cfg = load_family_config(SubfigConfig, FAMILY, argv)
    summary = train(cfg)
    val = summary["metrics"]["val"]
    extra = ""
    for split, m in summary["metrics"].items():
        if split != "val":
            extra += f"; {split} mAP50 {m['map50']:.3f}, mAP50-95 {m['map50_95']:.3f}"
    print(
        f"subfig: {summary['epochs_done']} epochs -> {Path(cfg.output_dir) / summary['best']} "
        f"(val mAP50 {val['map50']:.3f}, mAP50-95 {val['map50_95']:.3f}{extra})",
        file=sys.stderr,
    )
    return 0


# --------------------------------------------------------------------------------------------
# toy data for smoke tests and benchmarks


def toy_compound_figure(layout: tuple[int, int], seed: int = 0, size: tuple[int, int] = (192, 160),
                        gutter: int = 8, background: str = "white"):
    """A compound figure: ``rows x cols`` tissue panels on a plain canvas, and the panel boxes.

    For smoke tests and benchmarks only (the real generator, with letters, insets and irregular
    layouts, is ``pathasst build subfig --synthetic``).

    Returns:
        ``(PIL image, [[x, y, w, h], ...])`` with boxes in pixels, in reading order.
    """
    from PIL import Image

    from pathasst.testing.images import tissue_tile

    rows, cols = layout
    width, height = size
    canvas = Image.new("RGB", size, background)
    pw, ph = (width - gutter * (cols + 1)) // cols, (height - gutter * (rows + 1)) // rows
    boxes = []
    for r in range(rows):
        for c in range(cols):
            x, y = gutter + c * (pw + gutter), gutter + r * (ph + gutter)
            tile = tissue_tile(max(pw, ph), seed=seed * 31 + r * cols + c, stain="he" if (seed + c) % 2 else "ihc")
            canvas.paste(tile.resize((pw, ph)), (x, y))
            boxes.append([float(x), float(y), float(pw), float(ph)])
    return canvas, boxes


TOY_LAYOUTS: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (2, 2), (1, 1), (1, 2))


def toy_yolo_dataset(out_dir: str | os.PathLike, splits: Mapping[str, int] = {"train": 8, "val": 4},
                     size: tuple[int, int] = (192, 160), seed: int = 0) -> Path:
    """Write a toy YOLO dataset of :func:`toy_compound_figure` figures; return its data.yaml.

    Layouts cycle through :data:`TOY_LAYOUTS`; ``names`` are :data:`CLASS_NAMES` (no panel_label
    boxes: the toy panels carry no letters).
    """
    out = Path(out_dir)
    for offset, (split, n) in enumerate(splits.items()):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            layout = TOY_LAYOUTS[i % len(TOY_LAYOUTS)]
            img, boxes = toy_compound_figure(layout, seed=seed + 10_000 * offset + i, size=size)
            img.save(out / "images" / split / f"{split}-{i:04d}.png")
            w, h = size
            (out / "labels" / split / f"{split}-{i:04d}.txt").write_text("".join(
                f"0 {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n" for x, y, bw, bh in boxes
            ))
    spec = {"path": ".", **{("val" if s == "validation" else s): f"images/{s}" for s in splits},
            "names": dict(CLASS_NAMES)}
    (out / DATA_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    return out / DATA_FILE


__all__ = [
    "CLASS_NAMES",
    "SubfigConfig",
    "YoloData",
    "checkpoint_state",
    "evaluate",
    "load_detector",
    "load_yolo_data",
    "main",
    "pathsubfig_to_yolo",
    "resolve_checkpoint",
    "resolve_data",
    "toy_compound_figure",
    "toy_yolo_dataset",
    "train",
    "ultralytics_args",
]
