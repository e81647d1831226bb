"""PathCLIP: contrastive image-text training of open_clip models through the shared loop.

``pathasst train pathclip --recipe NAME [key=value ...]`` trains any open_clip architecture (the
four ViT variants from OpenAI's weights, or the PathCLIP configs registered from
``trainers/model_configs``: ``PathCLIP-tiny`` for tests, ``PathCLIP-mini`` for CPUs) on PathCap
image-caption pairs, with open_clip's own model, tokenizer, transforms and ``ClipLoss``. Everything
about the run (Accelerate: DDP/FSDP/DeepSpeed, mixed precision, accumulation, schedule,
checkpoints, exact resume, trackers) is :mod:`pathasst.trainers.loop`'s.

Data (``data=``): a PathCap dataset folder or Hub id (Parquet) that ``datasets.load_dataset``
reads, with ``image_column`` and ``caption_column`` (a string or a list of strings per record);
``extra_caption_columns`` add more candidates (e.g. ``caption_raw``). Every step a record with
several candidate captions uses one of them, chosen as a function of ``(seed, epoch, index)``
(see :class:`CaptionSampler`), so an interrupted and resumed run sees the same captions.
Records without an image or without any caption are skipped before training and counted
(``skipped`` in ``train_summary.json`` and in the export's metadata). ``webdataset=`` reads
WebDataset tar shards instead (``jpg``/``png`` + ``txt``; needs the ``webdataset`` package).

Evaluation (``eval_every=N``) runs the tasks named in ``eval_tasks`` on held-out data: the
folder's ``validation`` (else ``test``) split, or ``eval_fraction`` of the training records held
out by group (article, book, site: ``pathasst.records.pathcap_group``), so no group is in both.
``retrieval`` gives image-to-text and text-to-image recall@1/5/10; ``zeroshot`` classifies the
held-out images against prompts (``zeroshot_templates`` x the labels of
``zeroshot_label_column``) and reports accuracy and balanced accuracy. Tasks are plain functions
in :data:`EVAL_TASKS`; :func:`register_eval_task` adds one (the benchmarks registry, issue #8,
plugs in here).

Export (``output_dir/model``): :mod:`pathasst.trainers.clip_export` — the open_clip Hub layout,
and for ViT models also a transformers ``CLIPModel`` + ``CLIPProcessor`` and a ``CLIPVisionModel``.
``export_checkpoint=PATH`` exports a checkpoint without training.

LoRA (``lora_vision=R`` / ``lora_text=R``): PEFT adapters on the tower's linear layers (the
transformer MLPs of open_clip towers; query/key/value/dense of a transformers tower), the rest of
that tower frozen; merged into the weights at export, so the export is a plain model.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence

from pathasst.errors import ConfigError, InputError
from pathasst.trainers.loop import STATE_FILE, TrainArgs, TrainConfigError, TrainResult, TrainTask

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FAMILY = "pathclip"
PACKAGE_PREFIX = "package:"
DEFAULT_TEMPLATES = ["a pathology image of {}.", "an image of {}.", "{}"]
RECALL_AT = (1, 5, 10)


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class PathClipConfig(TrainArgs):
    """PathCLIP's keys, on top of the shared training keys (:class:`TrainArgs`).

    Attributes:
        model: an open_clip model name (``ViT-B-16-quickgelu``, ``PathCLIP-tiny``, ...; see
            ``open_clip.list_models()``), or ``hf-hub:owner/name`` / ``local-dir:PATH`` of an
            open_clip folder (the weights come with it).
        pretrained: for a plain name: an open_clip pretrained tag (``openai``), a weights file, or
            ``none`` (random initialisation, or the tower weights below).
        image_weights: a state dict file for a timm image tower, mapped onto timm's parameters in
            order (shapes checked); ``package:MODULE/relative/path`` resolves inside an installed
            package at run time.
        text_weights: a transformers model folder for a HF text tower (``package:`` allowed);
            default: the config's ``hf_model_name`` from the Hub.
        image_size: override the image tower's input size (default: the architecture's).
        context_length: override the text context length.
        image_column: image column of the dataset.
        caption_column: caption column (a string, or a list of strings per record).
        extra_caption_columns: more columns whose texts are caption candidates (``caption_raw``).
        train_split: split to train on.
        eval_split: split to evaluate on (default: ``validation``, else ``test``, else held out).
        eval_fraction: without such a split: fraction of the training groups held out.
        eval_max_samples: evaluate on at most this many held-out records (the first ones).
        eval_batch_size: batch size of evaluation (0: twice ``batch_size``).
        eval_tasks: evaluation tasks to run (:data:`EVAL_TASKS`: ``retrieval``, ``zeroshot``).
        zeroshot_label_column: held-out column holding class names (zero-shot is skipped without).
        zeroshot_labels: class names (default: the distinct values of that column, sorted).
        zeroshot_templates: prompt templates, ``{}`` replaced by the class name; the text
            embeddings of one class are averaged over them.
        webdataset: WebDataset shard URL(s) (brace notation) to train on instead of ``data``.
        webdataset_size: number of samples in those shards (defines an epoch for the loader).
        lock_image: freeze the image tower (LiT-style), except its projection.
        lock_text: freeze the text tower, except its projection.
        lora_vision: LoRA rank on the image tower (0: off; the rest of that tower is frozen).
        lora_text: LoRA rank on the text tower.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: LoRA dropout.
        export_hf: also write a transformers CLIPModel: ``auto`` (when the architecture allows),
            ``true`` (error if it does not) or ``false``.
        hub_id: the Hub id the export will be published as (a HF text tower is named by it).
        export_checkpoint: export this checkpoint folder to ``output_dir/model`` without training.
    """

    model: str = "PathCLIP-tiny"
    pretrained: str = "none"
    image_weights: Optional[str] = None
    text_weights: Optional[str] = None
    image_size: Optional[int] = None
    context_length: Optional[int] = None
    image_column: str = "image"
    caption_column: str = "caption"
    extra_caption_columns: list[str] = field(default_factory=list)
    train_split: str = "train"
    eval_split: Optional[str] = None
    eval_fraction: float = 0.1
    eval_max_samples: int = 1000
    eval_batch_size: int = 0
    eval_tasks: list[str] = field(default_factory=lambda: ["retrieval", "zeroshot"])
    zeroshot_label_column: Optional[str] = None
    zeroshot_labels: Optional[list[str]] = None
    zeroshot_templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    webdataset: Optional[str] = None
    webdataset_size: int = 0
    lock_image: bool = False
    lock_text: bool = False
    lora_vision: int = 0
    lora_text: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    export_hf: str = "auto"
    hub_id: Optional[str] = None
    export_checkpoint: Optional[str] = None

    def validate(self) -> None:
        super().validate()

        def fail(key: str, expected: str) -> None:
            raise TrainConfigError(f"{key} must be {expected} (got {getattr(self, key)!r})")

        if not self.model:
            fail("model", "an open_clip model name")
        if not (0 < self.eval_fraction < 1):
            fail("eval_fraction", "in (0, 1)")
        for key in ("eval_max_samples",):
            if getattr(self, key) < 1:
                fail(key, ">= 1")
        for key in ("eval_batch_size", "lora_vision", "lora_text", "webdataset_size"):
            if getattr(self, key) < 0:
                fail(key, ">= 0")
        if self.image_size is not None and self.image_size < 8:
            fail("image_size", ">= 8")
        if self.context_length is not None and self.context_length < 4:
            fail("context_length", ">= 4")
        self.export_hf = str(self.export_hf).lower()  # YAML/overrides may give a boolean
        if self.export_hf not in ("auto", "true", "false"):
            fail("export_hf", "auto, true or false")
        unknown = [t for t in self.eval_tasks if t not in EVAL_TASKS]
        if unknown:
            raise TrainConfigError(f"eval_tasks: unknown {', '.join(unknown)}; known: {', '.join(EVAL_TASKS)}")
        bad = [t for t in self.zeroshot_templates if "{}" not in t]
        if bad or not self.zeroshot_templates:
            raise TrainConfigError(f"zeroshot_templates: every template needs a {{}} for the label (got {bad or '[]'})")
        if self.webdataset and self.webdataset_size < self.batch_size:
            raise TrainConfigError("webdataset needs webdataset_size (samples in the shards) >= batch_size")
        if not self.data and not self.webdataset and not self.export_checkpoint:
            raise TrainConfigError("data is required: a PathCap dataset folder or Hub id (data=caps/)")
        if (self.lora_vision and self.lock_image) or (self.lora_text and self.lock_text):
            raise TrainConfigError("lora_* and lock_* on the same tower: LoRA already freezes the tower's weights")


# --------------------------------------------------------------------------------------------
# models


@functools.lru_cache(maxsize=1)
def register_model_configs() -> Path:
    """Register the PathCLIP architecture configs (``trainers/model_configs/*.json``) with open_clip."""
    import open_clip

    folder = Path(str(resources.files("pathasst.trainers.model_configs")))
    open_clip.add_model_config(folder)
    return folder


def resolve_ref(value: str, key: str) -> Path:
    """A path, or ``package:MODULE/relative/path`` inside an installed package (resolved now, on
    this machine: recipes never hold machine paths).

    Raises:
        ConfigError: the package is not installed or the path does not exist, naming ``key``.
    """
    if value.startswith(PACKAGE_PREFIX):
        module, _, rel = value[len(PACKAGE_PREFIX):].partition("/")
        try:
            base = Path(str(resources.files(module)))
        except ModuleNotFoundError:
            raise ConfigError(f"{key}={value}: package '{module}' is not installed "
                              "(pip install 'pathasst[clip]' brings the mini weights)") from None
        path = base / rel
    else:
        path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}={value}: {path} does not exist")
    return path


def check_model_name(name: str) -> None:
    """Fail early (before any data is read) on a model name open_clip does not know.

    Raises:
        ConfigError: listing the valid names.
    """
    import open_clip

    register_model_configs()
    if name.startswith("local-dir:"):
        from pathasst.trainers.clip_export import read_open_clip_config

        read_open_clip_config(Path(name[len("local-dir:"):]))
        return
    if name.startswith("hf-hub:"):
        return  # resolved when the model is built (Hub or Hub cache)
    if name not in open_clip.list_models():
        raise ConfigError(
            f"model={name}: not an open_clip model; valid names: {', '.join(open_clip.list_models())} "
            "(or hf-hub:owner/name, local-dir:PATH)"
        )


def model_config(cfg: PathClipConfig) -> dict[str, Any]:
    """The resolved open_clip architecture (``model_cfg``) of ``cfg``: what the export records."""
    import open_clip

    register_model_configs()
    mc = open_clip.get_model_config(cfg.model)
    if mc is None:
        check_model_name(cfg.model)
        raise ConfigError(f"model={cfg.model}: no architecture config found")
    mc = copy.deepcopy(mc)
    if cfg.image_size is not None:
        mc["vision_cfg"]["image_size"] = cfg.image_size
    if cfg.context_length is not None:
        mc["text_cfg"]["context_length"] = cfg.context_length
    return mc


def model_signature(cfg: PathClipConfig) -> dict[str, Any]:
    """What a checkpoint must share with the config to be resumed (saved in trainer_state.json)."""
    mc = model_config(cfg)
    return {
        "model": cfg.model,
        "embed_dim": mc.get("embed_dim"),
        "image_size": mc["vision_cfg"].get("image_size"),
        "context_length": mc["text_cfg"].get("context_length"),
        "lora_vision": cfg.lora_vision,
        "lora_text": cfg.lora_text,
        "lock_image": cfg.lock_image,
        "lock_text": cfg.lock_text,
    }


def _load_timm_in_order(trunk: "torch.nn.Module", path: Path) -> int:
    """Load a state dict whose names differ from timm's but whose order matches (e.g. the
    efficientnet_lite0 package's), checking every shape; extra trailing entries (a classifier the
    trunk does not have) are ignored. Returns the number of tensors loaded."""
    import torch

    src = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(src, Mapping) and "state_dict" in src:
        src = src["state_dict"]
    dst = trunk.state_dict()
    if len(src) < len(dst):
        raise ConfigError(f"image_weights={path}: {len(src)} tensors, the timm model has {len(dst)}")
    mapped = {}
    for (dk, dv), (sk, sv) in zip(dst.items(), src.items()):
        if tuple(dv.shape) != tuple(sv.shape):
            raise ConfigError(f"image_weights={path}: '{sk}' {tuple(sv.shape)} does not fit '{dk}' {tuple(dv.shape)}")
        mapped[dk] = sv
    trunk.load_state_dict(mapped, strict=True)
    return len(mapped)


@dataclass
class ClipBundle:
    """A built model with what goes with it: transforms, tokenizer, configs."""

    model: Any
    preprocess_train: Any
    preprocess_val: Any
    tokenizer: Any
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    hf_text_dir: Optional[Path] = None


def build_clip(cfg: PathClipConfig) -> ClipBundle:
    """Create the open_clip model of ``cfg`` with its initial weights, transforms and tokenizer."""
    import open_clip

    register_model_configs()
    check_model_name(cfg.model)
    kwargs: dict[str, Any] = {"pretrained_image": False}
    mc = model_config(cfg)
    hf_text_dir: Optional[Path] = None
    schema = cfg.model.split(":", 1)[0] if cfg.model.startswith(("hf-hub:", "local-dir:")) else None
    if schema == "local-dir" and mc["text_cfg"].get("hf_model_name"):
        hf_text_dir = Path(cfg.model[len("local-dir:"):]).resolve()
    if cfg.text_weights:
        hf_text_dir = resolve_ref(cfg.text_weights, "text_weights")
    if mc["text_cfg"].get("hf_model_name") and hf_text_dir is not None:
        mc["text_cfg"]["hf_model_name"] = str(hf_text_dir)
        mc["text_cfg"]["hf_tokenizer_name"] = str(hf_text_dir)
        # an exported folder's tower weights are inside its open_clip weights, not beside its config
        mc["text_cfg"]["hf_model_pretrained"] = schema is None
    if cfg.image_size is not None or cfg.context_length is not None or hf_text_dir is not None:
        kwargs["vision_cfg"], kwargs["text_cfg"] = mc["vision_cfg"], mc["text_cfg"]
    pretrained = None if cfg.pretrained in ("none", "", None) or schema else cfg.pretrained
    if pretrained and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(cfg.model)
        if pretrained not in tags:
            raise ConfigError(f"pretrained={pretrained}: not a file, and {cfg.model} has no such tag "
                              f"(tags: {', '.join(tags) or 'none'}; or 'none')")
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        cfg.model, pretrained=pretrained, **kwargs)
    if cfg.image_weights:
        trunk = getattr(model.visual, "trunk", None)
        if trunk is None:
            raise ConfigError(f"image_weights= needs a timm image tower; {cfg.model} has none")
        n = _load_timm_in_order(trunk, resolve_ref(cfg.image_weights, "image_weights"))
        logger.info("image tower: %d tensors loaded in order from %s", n, cfg.image_weights)
    if hf_text_dir is not None:
        tokenizer = open_clip.tokenizer.HFTokenizer(str(hf_text_dir), context_length=mc["text_cfg"].get("context_length"))
    else:
        tokenizer = open_clip.get_tokenizer(cfg.model, context_length=mc["text_cfg"].get("context_length"))
    pp = getattr(model.visual, "preprocess_cfg", None) or {}
    size = mc["vision_cfg"].get("image_size", 224)
    preprocess_cfg = {
        "image_size": size,
        "mean": list(pp.get("mean") or open_clip.OPENAI_DATASET_MEAN),
        "std": list(pp.get("std") or open_clip.OPENAI_DATASET_STD),
        "interpolation": pp.get("interpolation", "bicubic"),
        "resize_mode": pp.get("resize_mode", "shortest"),
    }
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
        _unfreeze_projection(model, "image")
    if cfg.lock_text:
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        _unfreeze_projection(model, "text")
    if cfg.lora_vision or cfg.lora_text:
        apply_lora(model, cfg)
    return ClipBundle(model, preprocess_train, preprocess_val, tokenizer, mc, preprocess_cfg, hf_text_dir)


def _unfreeze_projection(model, tower: str) -> None:
    # LiT-style locking keeps the projection into the shared space trainable: that is what aligns.
    if tower == "image":
        names = ["visual.proj", "visual.head."]
    else:
        names = ["text_projection", "text.proj."]
    for name, param in model.named_parameters():
        if any(name == n or name.startswith(n) for n in names):
            param.requires_grad = True


# --- LoRA ---------------------------------------------------------------------------------


def _lora_targets(model, tower: str) -> list[str]:
    import torch

    if tower == "image":
        prefixes = ("visual.",)
    else:
        prefixes = ("text.",) if hasattr(model, "text") else ("transformer.",)
    leaves = ("c_fc", "c_proj", "query", "key", "value", "dense", "fc1", "fc2", "qkv", "proj")
    out = []
    for name, module in model.named_modules():
        if not name.startswith(prefixes) or not isinstance(module, torch.nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        # nn.MultiheadAttention's out_proj is read as a weight, never called: LoRA there would be inert
        if leaf in leaves and not name.endswith("attn.out_proj") and name not in ("visual.proj", "text.proj"):
            out.append(name)
    return out


def apply_lora(model, cfg: PathClipConfig) -> None:
    """Add PEFT LoRA adapters to the chosen towers and freeze those towers' other weights.

    One adapter (``default``) over both towers, each tower's layers with its own rank
    (``rank_pattern``), so that every adapted layer is active and merges at export.
    """
    import re

    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError("lora_vision/lora_text need the peft package: pip install 'pathasst[llm]'") from None
    ranks: dict[str, int] = {}
    for tower, rank in (("image", cfg.lora_vision), ("text", cfg.lora_text)):
        if not rank:
            continue
        targets = _lora_targets(model, tower)
        if not targets:
            raise ConfigError(f"lora on the {tower} tower: {cfg.model} has no linear layers LoRA can adapt there")
        prefix = "visual." if tower == "image" else ("text." if hasattr(model, "text") else "transformer.")
        for name, param in model.named_parameters():
            if name.startswith(prefix):
                param.requires_grad = False
        ranks.update({name: rank for name in targets})
    lcfg = LoraConfig(r=max(ranks.values()), lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=sorted(ranks), rank_pattern={f"^{re.escape(k)}": v for k, v in ranks.items()})
    inject_adapter_in_model(lcfg, model)
    for tower, rank in (("image", cfg.lora_vision), ("text", cfg.lora_text)):
        if rank:
            _unfreeze_projection(model, tower)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad = True


def merge_lora(model) -> Any:
    """A copy of ``model`` with every LoRA adapter merged into its base layer (plain modules again)."""
    from peft.tuners.lora import LoraLayer

    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, leaf, module.get_base_layer())
    return model


def has_lora(model) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


# --------------------------------------------------------------------------------------------
# data


def _mix(*values: int) -> int:
    from pathasst.trainers.selector import _mix as mix

    return mix(*values)


class CaptionSampler:
    """Training order as a function of ``(seed, epoch)``; every index comes with the seed
    ``f(seed, epoch, index)`` that picks its caption and its augmentation (resume-exact).

    Yields ``(index, sample_seed)``; Accelerate calls :meth:`set_epoch` and shards the order.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = int(num_samples), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        import torch

        gen = torch.Generator()
        gen.manual_seed(_mix(self.seed, self.epoch, 11))
        order = torch.randperm(self.num_samples, generator=gen).tolist()
        return iter([(i, _mix(self.seed, self.epoch, i, 12)) for i in order])


@dataclass
class PairRecords:
    """The usable records of one split: row indices into ``ds`` and their caption candidates."""

    ds: Any
    rows: list[int]
    captions: list[list[str]]
    origin: str
    skipped: Counter = field(default_factory=Counter)
    groups: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, positions: Sequence[int], origin: str) -> "PairRecords":
        return PairRecords(self.ds, [self.rows[p] for p in positions], [self.captions[p] for p in positions],
                           origin, Counter(), None if self.groups is None else [self.groups[p] for p in positions])


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def _image_missing(ds, column: str) -> list[bool]:
    """Per row: True when the image cell holds neither bytes nor a path (read without decoding)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: list[bool] = []
    for batch in ds.select_columns([column]).with_format("arrow").iter(batch_size=1024):
        col = batch.column(column)
        if pa.types.is_struct(col.type):
            names = [col.type.field(i).name for i in range(col.type.num_fields)]
            missing = pc.is_null(col)
            have = None
            for name in ("bytes", "path"):
                if name in names:
                    f = pc.struct_field(col, name)
                    ok = pc.invert(pc.is_null(f))
                    have = ok if have is None else pc.or_(have, ok)
            if have is not None:
                missing = pc.or_(missing, pc.invert(pc.fill_null(have, False)))
        else:
            missing = pc.is_null(col)
        out += [bool(x) for x in pc.fill_null(missing, True).to_pylist()]
    return out


def scan_records(ds, cfg: PathClipConfig, origin: str) -> PairRecords:
    """Keep the rows with an image and at least one caption; count the others by reason.

    Raises:
        InputError: a configured column is missing (naming the columns there are).
    """
    from datasets import Image as ImageFeature

    columns = [cfg.image_column, cfg.caption_column, *cfg.extra_caption_columns]
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise InputError(
            f"{origin}: no column {', '.join(repr(c) for c in missing)} (columns: {', '.join(ds.column_names)}); "
            "set image_column= / caption_column= / extra_caption_columns="
        )
    if isinstance(ds.features.get(cfg.image_column), ImageFeature):
        ds = ds.cast_column(cfg.image_column, ImageFeature(decode=False))
    no_image = _image_missing(ds, cfg.image_column)
    text_cols = [cfg.caption_column, *cfg.extra_caption_columns]
    texts = ds.select_columns(text_cols).to_dict()
    groups = None
    if "source" in ds.column_names and "source_id" in ds.column_names:
        from pathasst.records import pathcap_group

        meta = ds.select_columns(["source", "source_id"]).to_dict()
        groups = [pathcap_group({"source": s, "source_id": i}) for s, i in zip(meta["source"], meta["source_id"])]
    rows, captions, kept_groups, skipped = [], [], [], Counter()
    for i in range(len(ds)):
        candidates: list[str] = []
        for col in text_cols:
            for t in _texts(texts[col][i]):
                if t not in candidates:
                    candidates.append(t)
        if no_image[i]:
            skipped["no image"] += 1
        elif not candidates:
            skipped["no caption"] += 1
        else:
            rows.append(i)
            captions.append(candidates)
            if groups is not None:
                kept_groups.append(groups[i])
    if skipped:
        logger.warning("%s: skipped %s", origin, ", ".join(f"{n} record(s) with {r}" for r, n in skipped.items()))
    return PairRecords(ds, rows, captions, origin, skipped, kept_groups if groups is not None else None)


def load_splits(cfg: PathClipConfig) -> tuple[PairRecords, Optional[PairRecords]]:
    """``(train, held_out)`` records of ``cfg.data`` (see the module docstring for the held-out rule)."""
    from pathasst.inputs import data_ref
    from pathasst.trainers.selector import _load_dataset_dict
    from pathasst.writer import assign_split

    ref = data_ref(cfg.data)
    dd = _load_dataset_dict(ref.value)
    if cfg.train_split not in dd:
        raise InputError(f"data={cfg.data}: no split '{cfg.train_split}' (splits: {', '.join(dd)}); set train_split=")
    train = scan_records(dd[cfg.train_split], cfg, f"{cfg.data} [{cfg.train_split}]")
    split = cfg.eval_split
    if split is not None and split not in dd:
        raise InputError(f"data={cfg.data}: no split '{split}' (splits: {', '.join(dd)}); set eval_split=")
    if split is None:
        split = next((s for s in ("validation", "test") if s in dd and s != cfg.train_split), None)
    if split is not None:
        return train, scan_records(dd[split], cfg, f"{cfg.data} [{split}]")
    groups = train.groups or [str(r) for r in train.rows]
    ratios = {"train": 1 - cfg.eval_fraction, "held_out": cfg.eval_fraction}
    held = [p for p, g in enumerate(groups) if assign_split(g, ratios, salt=f"pathclip-{cfg.seed}") == "held_out"]
    held_set = set(held)
    kept = [p for p in range(len(train)) if p not in held_set]
    if not held or not kept:
        logger.warning("%s: too few groups to hold out %.0f%%; evaluating on the training records",
                       train.origin, 100 * cfg.eval_fraction)
        return train, train
    sub = train.subset(kept, train.origin)
    sub.skipped = train.skipped
    return sub, train.subset(held, f"{train.origin} held out by group")


class PairDataset:
    """Map-style pairs: ``dataset[(index, sample_seed)] -> (image tensor, token ids)``.

    The caption is ``candidates[sample_seed % len]``; the augmentation runs under
    ``torch.manual_seed(sample_seed)`` in a forked RNG, so both are functions of the sample, not of
    a global stream. An image that fails to decode is replaced by the next record's (logged,
    counted in :attr:`undecodable`).
    """

    def __init__(self, records: PairRecords, cfg: PathClipConfig, transform, tokenizer, train: bool = True):
        self.records, self.cfg, self.transform, self.tokenizer, self.train = records, cfg, transform, tokenizer, train
        self.undecodable: set[int] = set()
        self._images = None

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, cell: Any):
        """RGB PIL image of a cell. The common case (an RGB PNG/JPEG of sane size without an EXIF
        rotation) is opened directly; everything else goes through the house decoder
        (:func:`pathasst.trainers.selector.decode_rgb`: modes, EXIF, size limits), which costs twice
        as much per image and would halve the data rate of a small model."""
        import io

        from PIL import Image

        from pathasst.images import DEFAULT_MAX_PIXELS
        from pathasst.trainers.selector import decode_rgb

        data = cell.get("bytes") if isinstance(cell, Mapping) else None
        if data:
            try:
                img = Image.open(io.BytesIO(data))
                if (img.mode == "RGB" and img.format in ("PNG", "JPEG") and img.width * img.height <= DEFAULT_MAX_PIXELS
                        and max(img.size) <= 1024 and img.getexif().get(0x0112, 1) == 1):
                    img.load()
                    return img
            except (OSError, ValueError, Image.DecompressionBombError):
                pass  # let the house decoder give the reason
        return decode_rgb(cell, max_side=1024)

    def image(self, pos: int):
        from pathasst.images import ImageRejected

        if self._images is None:  # the image column alone: reading whole rows would copy the rest too
            self._images = self.records.ds.select_columns([self.cfg.image_column])
        for step in range(len(self.records)):
            p = (pos + step) % len(self.records)
            if p in self.undecodable:
                continue
            cell = self._images[self.records.rows[p]][self.cfg.image_column]
            try:
                return self._decode(cell)
            except (ImageRejected, OSError, ValueError) as exc:
                self.undecodable.add(p)
                logger.warning("%s: record %d: %s; using the next record's image", self.records.origin,
                               self.records.rows[p], exc)
        raise InputError(f"{self.records.origin}: no image could be decoded")

    def __getitem__(self, key):
        import torch

        pos, seed = key if isinstance(key, tuple) else (key, 0)
        captions = self.records.captions[pos]
        caption = captions[seed % len(captions)] if self.train else captions[0]
        img = self.image(pos)
        if self.train:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only (torch.manual_seed also seeds every accelerator, and costs
                # more than the transform of a small image)
                torch.default_generator.manual_seed(seed)
                pixels = self.transform(img)
        else:
            pixels = self.transform(img)
        return pixels, self.tokenizer([caption])[0]


def collate_pairs(samples):
    import torch

    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def _webdataset_loader(cfg: PathClipConfig, transform, tokenizer):
    """A loader over WebDataset tar shards (``jpg``/``jpeg``/``png`` + ``txt`` per sample).

    Shard order and the sample shuffle buffer are seeded (``detshuffle``: a function of the seed and
    the epoch). Under several processes Accelerate dispatches the batches of process 0 to the
    others, so every process reads all shards (no node splitting here). Resume skips the consumed
    batches by reading them again; undecodable samples are skipped with a warning (counted by
    webdataset's handler, not in the run summary).
    """
    try:
        import webdataset as wds
    except ImportError:
        raise ConfigError(f"webdataset={cfg.webdataset} needs the webdataset package: "
                          "pip install 'pathasst[clip-wds]'") from None
    import torch

    def to_pair(sample):
        img, text = sample
        text = text.decode() if isinstance(text, bytes) else str(text)
        return transform(img.convert("RGB")), tokenizer([text.strip()])[0]

    dataset = (wds.WebDataset(cfg.webdataset, shardshuffle=100, detshuffle=True, seed=cfg.seed,
                              nodesplitter=lambda urls: urls, handler=wds.warn_and_continue, empty_check=True)
               .shuffle(1000, seed=cfg.seed).decode("pil", handler=wds.warn_and_continue)
               .to_tuple("jpg;jpeg;png", "txt", handler=wds.warn_and_continue).map(to_pair)
               .with_length(cfg.webdataset_size))
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, drop_last=True,
                                       num_workers=cfg.num_workers, collate_fn=collate_pairs)


# --------------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvalContext:
    """What an evaluation task gets: normalised embeddings of the held-out images, their captions
    and labels, and a text encoder.

    Attributes:
        image_features: ``(N, D)`` L2-normalised image embeddings.
        captions: the first caption of every image.
        labels: the ``zeroshot_label_column`` values (None without the column).
        encode_texts: texts -> ``(M, D)`` L2-normalised text embeddings.
        cfg: the run's config (labels, templates).
    """

    image_features: "torch.Tensor"
    captions: list[str]
    labels: Optional[list[str]]
    encode_texts: Callable[[Sequence[str]], "torch.Tensor"]
    cfg: PathClipConfig


def recall_at_k(similarity: "torch.Tensor", positives: "torch.Tensor", ks: Sequence[int] = RECALL_AT) -> dict[int, float]:
    """Fraction of queries (rows of ``similarity``) with a positive among their top k.

    ``positives`` is a boolean matrix of the same shape (several positives per query allowed).
    """
    import torch

    order = similarity.argsort(dim=1, descending=True)
    hits = torch.gather(positives, 1, order)
    out = {}
    for k in ks:
        out[k] = float(hits[:, : min(k, hits.shape[1])].any(dim=1).float().mean()) if len(hits) else float("nan")
    return out


def retrieval_task(ctx: EvalContext) -> dict[str, float]:
    """Image-to-text and text-to-image recall@1/5/10 over the held-out pairs.

    Identical captions are one text: an image's positive is its caption's text, and a caption's
    positives are all images that carry it (a duplicated caption never counts as a miss).
    """
    import torch

    texts = list(dict.fromkeys(ctx.captions))
    index = {t: i for i, t in enumerate(texts)}
    owner = torch.tensor([index[c] for c in ctx.captions])
    text_features = ctx.encode_texts(texts)
    sim = ctx.image_features @ text_features.T  # images x texts
    pos = owner[:, None] == torch.arange(len(texts))[None, :]
    i2t, t2i = recall_at_k(sim, pos), recall_at_k(sim.T, pos.T)
    out = {f"i2t_r{k}": v for k, v in i2t.items()}
    out.update({f"t2i_r{k}": v for k, v in t2i.items()})
    out["retrieval_mean_r"] = sum(out.values()) / len(out)
    out["retrieval_n_images"], out["retrieval_n_texts"] = float(len(ctx.captions)), float(len(texts))
    return out


def zero_shot_classifier(encode_texts, labels: Sequence[str], templates: Sequence[str]) -> "torch.Tensor":
    """``(num_labels, D)`` class embeddings: the normalised mean over templates of each label."""
    import torch.nn.functional as F

    rows = []
    for label in labels:
        emb = encode_texts([t.format(label) for t in templates]).mean(0)
        rows.append(F.normalize(emb, dim=-1))
    import torch

    return torch.stack(rows)


def zeroshot_task(ctx: EvalContext) -> dict[str, float]:
    """Zero-shot accuracy and balanced accuracy of the held-out images against label prompts."""
    import torch

    if ctx.labels is None:
        return {}
    names = list(ctx.cfg.zeroshot_labels) if ctx.cfg.zeroshot_labels else sorted(set(ctx.labels))
    keep = [i for i, lab in enumerate(ctx.labels) if lab in names]
    if not keep:
        return {}
    classifier = zero_shot_classifier(ctx.encode_texts, names, ctx.cfg.zeroshot_templates)
    pred = (ctx.image_features[keep] @ classifier.T).argmax(1)
    target = torch.tensor([names.index(ctx.labels[i]) for i in keep])
    correct = (pred == target).float()
    per_class = [float(correct[target == c].mean()) for c in range(len(names)) if (target == c).any()]
    return {"zeroshot_acc": float(correct.mean()), "zeroshot_balanced_acc": sum(per_class) / len(per_class),
            "zeroshot_n": float(len(keep))}


EVAL_TASKS: dict[str, Callable[[EvalContext], Mapping[str, float]]] = {
    "retrieval": retrieval_task,
    "zeroshot": zeroshot_task,
}


def register_eval_task(name: str, fn: Callable[[EvalContext], Mapping[str, float]], replace: bool = False) -> None:
    """Add an evaluation task usable in ``eval_tasks`` (metrics are logged as ``eval/<key>``)."""
    if name in EVAL_TASKS and not replace:
        raise ValueError(f"eval task '{name}' is already registered")
    EVAL_TASKS[name] = fn


def _forward_features(model, images=None, texts=None):
    out = model(images, texts)
    if isinstance(out, Mapping):
        return out.get("image_features"), out.get("text_features"), out.get("logit_scale")
    return out[0], out[1], out[2]


# --------------------------------------------------------------------------------------------
# the task


class PathClipTask(TrainTask):
    """Model, data, contrastive loss, evaluation and export of PathCLIP (see the module docstring)."""

    name = FAMILY
    evaluate_at_start = True  # the untrained model's recall: the baseline a run must beat

    def __init__(self, cfg: PathClipConfig):
        self.cfg = cfg
        self.bundle: Optional[ClipBundle] = None
        self.train_records: Optional[PairRecords] = None
        self.eval_records: Optional[PairRecords] = None
        self._clip_loss = None
        self.last_eval: dict[str, Any] = {}

    # --- setup -------------------------------------------------------------------------------

    def load_data(self) -> None:
        """Read and scan the records (after the model name was checked, before any model is built)."""
        cfg = self.cfg
        if cfg.webdataset:
            return
        self.train_records, self.eval_records = load_splits(cfg)
        n = len(self.train_records)
        if n == 0:
            raise InputError(f"{self.train_records.origin}: no usable record (skipped: {dict(self.train_records.skipped)})")
        from accelerate import PartialState

        procs = PartialState().num_processes
        if cfg.batch_size * procs > n:
            raise TrainConfigError(
                f"batch_size={cfg.batch_size} x {procs} process(es) is larger than the {n} usable training "
                f"records of {self.train_records.origin}: an epoch would give no full batch; lower batch_size"
            )
        if cfg.eval_every and self.eval_records is not None and len(self.eval_records) == 0:
            raise InputError(f"{self.eval_records.origin}: no usable held-out record for eval_every={cfg.eval_every}")
        if cfg.zeroshot_label_column and self.eval_records is not None:
            if cfg.zeroshot_label_column not in self.eval_records.ds.column_names:
                raise InputError(f"{self.eval_records.origin}: no column '{cfg.zeroshot_label_column}' "
                                 f"for zeroshot_label_column (columns: {', '.join(self.eval_records.ds.column_names)})")

    def build_model(self, args):
        if self.bundle is None:
            self.bundle = build_clip(self.cfg)
        return self.bundle.model

    def train_dataloader(self, args):
        import torch
        from torch.utils.data import DataLoader

        b = self.bundle or self._bundle()
        if self.cfg.webdataset:
            return _webdataset_loader(self.cfg, b.preprocess_train, b.tokenizer)
        dataset = PairDataset(self.train_records, self.cfg, b.preprocess_train, b.tokenizer, train=True)
        return DataLoader(dataset, batch_size=args.batch_size, sampler=CaptionSampler(len(dataset), args.seed),
                          drop_last=True, num_workers=args.num_workers, collate_fn=collate_pairs,
                          generator=torch.Generator(), persistent_workers=False)

    def _bundle(self) -> ClipBundle:
        self.build_model(self.cfg)
        return self.bundle

    def enable_gradient_checkpointing(self, model) -> None:
        model.set_grad_checkpointing(True)

    def state_meta(self) -> Mapping[str, Any]:
        return model_signature(self.cfg)

    # --- loss --------------------------------------------------------------------------------

    def _loss_fn(self):
        if self._clip_loss is None:
            from accelerate import PartialState
            from open_clip.loss import ClipLoss

            state = PartialState()
            # local_loss + gather_with_grad: each process scores its own rows against all texts
            # and images of the global batch (open_clip's recommended multi-GPU setting)
            self._clip_loss = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                                       rank=state.process_index, world_size=state.num_processes)
        return self._clip_loss

    def loss(self, model, batch):
        import torch

        images, texts = batch
        bare = getattr(model, "module", model)
        scale_param = getattr(bare, "logit_scale", None)
        if scale_param is not None and scale_param.numel() == 1:
            with torch.no_grad():  # open_clip clamps after every step: temperature at most 100
                scale_param.clamp_(0, math.log(100))
        image_features, text_features, logit_scale = _forward_features(model, images, texts)
        logit_scale = logit_scale.clamp(max=100)
        loss = self._loss_fn()(image_features, text_features, logit_scale)
        return loss, {"logit_scale": logit_scale.detach()}

    # --- evaluation ----------------------------------------------------------------------------

    def evaluate(self, model, accelerator):
        import torch
        import torch.nn.functional as F

        if self.eval_records is None or not len(self.eval_records):
            return None
        cfg, b = self.cfg, self.bundle
        records = self.eval_records
        limit = min(len(records), cfg.eval_max_samples)
        data = PairDataset(records.subset(range(limit), records.origin), cfg, b.preprocess_val, b.tokenizer, train=False)
        bs = cfg.eval_batch_size or 2 * cfg.batch_size
        device = accelerator.device
        feats = []
        # every process runs the same batches: sharded models (FSDP) need all ranks in each forward
        for start in range(0, limit, bs):
            pixels = torch.stack([data.transform(data.image(i)) for i in range(start, min(limit, start + bs))])
            with accelerator.autocast():
                f, _, _ = _forward_features(model, pixels.to(device), None)
            feats.append(F.normalize(f.float(), dim=-1).cpu())
        image_features = torch.cat(feats)

        def encode_texts(texts: Sequence[str]) -> "torch.Tensor":
            out = []
            for start in range(0, len(texts), bs):
                tokens = b.tokenizer(list(texts[start:start + bs])).to(device)
                with accelerator.autocast():
                    _, f, _ = _forward_features(model, None, tokens)
                out.append(F.normalize(f.float(), dim=-1).cpu())
            return torch.cat(out)

        labels = None
        if cfg.zeroshot_label_column:
            col = records.ds.select(records.rows[:limit]).select_columns([cfg.zeroshot_label_column])
            labels = [None if v is None else str(v) for v in col[cfg.zeroshot_label_column]]
        ctx = EvalContext(image_features, [c[0] for c in data.records.captions], labels, encode_texts, cfg)
        metrics: dict[str, Any] = {}
        for name in cfg.eval_tasks:
            metrics.update(EVAL_TASKS[name](ctx))
        self.last_eval = dict(metrics)
        return metrics

    # --- export --------------------------------------------------------------------------------

    def export(self, model, output_dir: Path, accelerator) -> None:
        bare = accelerator.unwrap_model(model)
        state_source = bare
        state = accelerator.get_state_dict(model)  # gathers sharded weights on every process
        if accelerator.is_main_process:
            if has_lora(bare):
                bare.load_state_dict(state)
                state_source = merge_lora(bare)
                state = state_source.state_dict()
            self.write_export({k: v for k, v in state.items()}, output_dir)

    def summary(self) -> Mapping[str, Any]:
        skipped = dict(self.train_records.skipped) if self.train_records else {}
        if self.eval_records is not None and self.eval_records is not self.train_records:
            for reason, n in self.eval_records.skipped.items():
                skipped[f"held-out: {reason}"] = n
        return {
            "train_records": len(self.train_records) if self.train_records else None,
            "eval_records": len(self.eval_records) if self.eval_records else None,
            "skipped": skipped,
        }

    def write_export(self, state: Mapping[str, Any], folder: Path) -> Path:
        """Write ``state`` (open_clip names) as the open_clip folder (+ transformers CLIP)."""
        from pathasst.trainers import clip_export as ce

        cfg, b = self.cfg, self.bundle
        state = {k: v.detach().to("cpu").float().contiguous().clone() if v.is_floating_point() else v.detach().cpu().clone()
                 for k, v in state.items()}
        if "logit_scale" in state:
            state["logit_scale"] = state["logit_scale"].clamp(0, math.log(100))
        hub_id = cfg.hub_id or f"pathasst/PathCLIP-{cfg.model.rsplit('/', 1)[-1].removeprefix('PathCLIP-')}"
        meta = {
            "family": FAMILY,
            "trained_from": cfg.model,
            "pretrained": cfg.pretrained,
            # a local folder by its name only: an export carries no path of the training machine
            "data": _data_label(cfg.data or cfg.webdataset),
            "max_steps": cfg.max_steps,
            "eval": self.last_eval,
            **self.summary(),
        }
        ce.write_open_clip_folder(state, b.model_cfg, b.preprocess_cfg, folder, hf_text_dir=b.hf_text_dir,
                                  hub_id=hub_id, meta=json.loads(json.dumps(meta, default=str)))
        want_hf = cfg.export_hf == "true" or (cfg.export_hf == "auto" and ce.is_vit_clip(b.model_cfg))
        if want_hf:
            ce.write_hf_clip(state, b.model_cfg, b.preprocess_cfg, folder)
        logger.info("exported %s to %s%s", cfg.model, folder, " (open_clip + transformers)" if want_hf else " (open_clip)")
        return folder


def _data_label(value: Optional[str]) -> Optional[str]:
    if not value:
        return None
    path = Path(value)
    return path.name if path.exists() or value.startswith(("/", ".", "~")) else value


# --------------------------------------------------------------------------------------------
# entry points


def check_resume_compatible(cfg: PathClipConfig) -> Optional[Path]:
    """The checkpoint a run would resume from, after checking it was made by the same model.

    Raises:
        TrainConfigError: what differs (model name, embed dim, image size, LoRA ranks, ...).
    """
    from pathasst.trainers.loop import _resolve_resume

    ckpt = _resolve_resume(cfg, Path(cfg.output_dir))
    if ckpt is None:
        return None
    state = json.loads((ckpt / STATE_FILE).read_text())
    saved = state.get("task")
    if not saved:
        return ckpt
    now = model_signature(cfg)
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in now if saved.get(k) != now.get(k)]
    if diffs:
        raise TrainConfigError(f"cannot resume {ckpt}: it was trained with another model ({'; '.join(diffs)}); "
                               "use another output_dir, resume=never in an empty folder, or the same settings")
    return ckpt


def export_checkpoint(cfg: PathClipConfig) -> Path:
    """Export ``cfg.export_checkpoint`` (a ``checkpoints/step-N`` folder) to ``output_dir/model``."""
    from safetensors.torch import load_file

    from pathasst.trainers.loop import MODEL_DIR

    ckpt = Path(cfg.export_checkpoint)
    weights = ckpt / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"export_checkpoint={ckpt}: no model.safetensors (is it a checkpoints/step-N folder?)")
    task = PathClipTask(cfg)
    if (ckpt / STATE_FILE).is_file():
        saved = json.loads((ckpt / STATE_FILE).read_text()).get("task") or {}
        now = model_signature(cfg)
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in now if k in saved and saved[k] != now[k]]
        if diffs:
            raise TrainConfigError(f"export_checkpoint={ckpt}: made with another model ({'; '.join(diffs)})")
    model = task.build_model(cfg)
    model.load_state_dict(load_file(str(weights)), strict=True)
    if has_lora(model):
        model = merge_lora(model)
    return task.write_export(model.state_dict(), Path(cfg.output_dir) / MODEL_DIR)


def train_pathclip(cfg: PathClipConfig) -> tuple[TrainResult, PathClipTask]:
    """Check, load the data, train (or resume) and export; returns the loop's result and the task."""
    from pathasst.trainers.loop import train

    check_model_name(cfg.model)  # before any data is read
    check_resume_compatible(cfg)
    task = PathClipTask(cfg)
    task.load_data()
    return train(task, cfg), task


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``pathasst train pathclip [--recipe NAME_OR_FILE] [key=value ...]``."""
    from pathasst.trainers.registry import load_family_config

    cfg = load_family_config(PathClipConfig, FAMILY, list(argv or []))
    if cfg.export_checkpoint:
        folder = export_checkpoint(cfg)
        print(f"pathclip: exported {cfg.export_checkpoint} to {folder}")
        return 0
    result, task = train_pathclip(cfg)
    line = f"pathclip: {result.final_step} steps, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}" if result.losses else "pathclip: no step"
    if result.eval_history:
        first, last = result.eval_history[0], result.eval_history[-1]
        if "i2t_r1" in last:
            line += f", i2t R@1 {first['i2t_r1']:.3f} -> {last['i2t_r1']:.3f}"
    skipped = task.summary()["skipped"]
    if skipped:
        line += f", skipped {sum(skipped.values())} record(s) ({', '.join(f'{k}: {v}' for k, v in skipped.items())})"
    print(f"{line}; model: {result.model_dir}")
    return 0


__all__ = [
    "EVAL_TASKS",
    "CaptionSampler",
    "ClipBundle",
    "EvalContext",
    "PairDataset",
    "PathClipConfig",
    "PathClipTask",
    "apply_lora",
    "build_clip",
    "check_model_name",
    "check_resume_compatible",
    "export_checkpoint",
    "load_splits",
    "main",
    "merge_lora",
    "model_config",
    "recall_at_k",
    "register_eval_task",
    "register_model_configs",
    "retrieval_task",
    "scan_records",
    "train_pathclip",
    "zeroshot_task",
]
