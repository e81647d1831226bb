"""The pathology-image selector: a timm image classifier trained through the shared loop.

``pathasst train selector --recipe NAME [key=value ...]`` trains any timm architecture (ConvNeXt-Tiny
by default) to tell pathology images from everything else a document holds (charts, photographs,
diagrams, scanned text), or to sort images into more classes. The same module holds what inference
needs (:class:`Selector`, used by ``pathasst curate select``) so that training-time validation and
curation score an image identically: same decoding (:func:`decode_rgb`), same resize
(:func:`eval_transform`, timm's own transform from the model's ``pretrained_cfg``), same softmax.

Data (``data=``):

* an **ImageFolder** directory: one subfolder per class (``pathology/``, ``non_pathology/``), images
  anywhere below it; or
* a **dataset** folder or Hub id that ``datasets.load_dataset`` reads, with an image column
  (``image_column=``) and a label column (``label_column=``; ``ClassLabel`` or strings).

Validation comes from ``val_data=`` (same two forms), else the dataset's ``val_split``, else a
stratified ``val_fraction`` of the training data (fixed by ``seed``).

Exactness on resume. The loop restores the model, optimizer and data position; the randomness of
augmentation is made a function of ``(seed, epoch, position in the epoch)``: the sampler
(:class:`EpochSampler`, the data order = f(seed, epoch)) hands each sample its own augmentation
seed, so a resumed run draws the same crops and jitters as an uninterrupted one, with any number of
loader workers.

Early stopping. ``evaluate`` updates the patience state (:class:`EarlyStopping`) and the loop's
``should_stop`` hook reads it: when validation ``early_stopping_metric`` has not improved for
``early_stopping_patience`` evaluations, the loop checkpoints that step with ``stopped_at`` in its
``trainer_state.json``, leaves its loop and exports, as at a normal end. ``max_steps`` is never
changed, so the learning-rate schedule and ``train_summary.json`` keep the configured length next to
the step the run stopped at (``max_steps``, ``final_step``, ``stopped_at``). On resume, the patience
state is rebuilt by replaying the checkpoint's ``eval_history``; a run whose checkpoint says it
stopped is not trained further (the loop reads ``stopped_at``), only exported again.

Export (``output_dir/model``) is timm's Hub layout: ``config.json`` (``architecture``,
``num_classes``, ``label_names``, ``model_args``, ``pretrained_cfg`` with mean, std, input size,
``crop_mode='squash'``) and ``model.safetensors``, so ``timm.create_model("local-dir:DIR",
pretrained=True)`` and, once pushed, ``timm.create_model("hf-hub:owner/name", pretrained=True)``
rebuild it with its head. A ``pathasst`` section of ``config.json`` names the positive (pathology)
classes and the validation result of the exported weights.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

from pathasst.trainers.loop import STATE_FILE, TrainArgs, TrainConfigError, TrainResult, TrainTask

from pathasst.errors import ConfigError, InputError
from pathasst.images import DEFAULT_MAX_PIXELS, ImageRejected

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

FAMILY = "selector"
BALANCE = ("sampler", "loss", "none")
STOP_METRICS = {"auroc": True, "accuracy": True, "loss": False}  # name -> higher is better
BEST_DIR = "best"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_KEY = "pathasst"  # our section of the exported config.json
IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".j2k", ".ppm", ".pgm", ".avif",
})
_HUB_ID = re.compile(r"^(hf-hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# Ruifrok & Johnston's stain vectors (as in skimage.color.rgb_from_hed): rows are the optical
# densities of hematoxylin, eosin and DAB in R, G, B.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class SelectorConfig(TrainArgs):
    """The selector's keys, on top of the shared training keys (:class:`TrainArgs`).

    Attributes:
        model: any timm architecture name (``convnext_tiny``, ``test_convnext``, ``resnet50``...).
        pretrained: initial weights: ``none`` (random), a local folder in timm's Hub layout (e.g.
            an earlier selector export) or a ``.safetensors``/``.pth`` state dict, or a Hub model
            id ``owner/name`` (``timm/convnext_tiny.fb_in22k_ft_in1k``; needs the network or the
            Hub cache). A head of another size is replaced by a fresh one.
        model_kwargs: extra keyword arguments of ``timm.create_model`` (``drop_path_rate``, or
            ``depths``/``dims`` for a custom ConvNeXt); recorded in the export.
        labels: class names in head order. Default: the data's (sorted folder names, or the
            ``ClassLabel`` names, or the sorted distinct strings of the label column).
        num_classes: optional check: the number of classes the data must have.
        positive_labels: the class(es) that mean "pathology": their summed probability is the
            score ``curate select`` thresholds and the score validation AUROC ranks.
        image_size: square input side; images are resized whole to it ("squash"), never cropped,
            so that no panel of a figure is cut away at inference.
        image_column: image column of a dataset (not used for ImageFolder data).
        label_column: label column of a dataset.
        train_split: split of a dataset to train on.
        val_data: a separate validation ImageFolder or dataset (same forms as ``data``).
        val_split: split of the dataset (``val_data`` or else ``data``) to validate on, when present.
        val_fraction: otherwise, the stratified fraction of the training data held out.
        eval_batch_size: batch size of validation (0: twice ``batch_size``).
        balance: ``sampler`` (draw classes equally often, with replacement), ``loss`` (inverse
            frequency class weights in the cross-entropy) or ``none``.
        label_smoothing: cross-entropy label smoothing.
        crop_scale_min: smallest area fraction of the random resized crop (1.0: whole images).
        flip: random horizontal and vertical flips.
        rotate90: random rotations by multiples of 90 degrees (micrographs have no "up").
        color_jitter: brightness, contrast and saturation jitter (hue a quarter of it), applied to
            half of the images; 0 turns it off.
        hed_jitter: stain jitter in H&E-DAB optical density space (Tellez et al. 2018): each stain
            scaled by U(1-s, 1+s) and shifted by U(-s, s), on half of the images; 0 turns it off.
        jpeg_prob: probability of re-compressing an image as JPEG (figures come as JPEGs).
        jpeg_quality_min: lowest JPEG quality drawn (up to 95).
        early_stopping_patience: stop after this many evaluations without improvement of
            ``early_stopping_metric`` (0: never stop early). Needs ``eval_every``.
        early_stopping_metric: ``auroc`` (of the positive classes against the rest), ``accuracy``
            or ``loss``.
        early_stopping_min_delta: an improvement must exceed this.
        export_best: export the weights of the best evaluation rather than the last step's.
        max_image_pixels: images declaring more pixels are skipped (decompression bombs).
    """

    model: str = "convnext_tiny"
    pretrained: Optional[str] = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    labels: Optional[list[str]] = None
    num_classes: Optional[int] = None
    positive_labels: list[str] = field(default_factory=lambda: ["pathology"])
    image_size: int = 224
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    val_data: Optional[str] = None
    val_split: str = "validation"
    val_fraction: float = 0.1
    eval_batch_size: int = 0
    balance: str = "sampler"
    label_smoothing: float = 0.0
    crop_scale_min: float = 0.5
    flip: bool = True
    rotate90: bool = True
    color_jitter: float = 0.2
    hed_jitter: float = 0.05
    jpeg_prob: float = 0.3
    jpeg_quality_min: int = 50
    early_stopping_patience: int = 0
    early_stopping_metric: str = "auroc"
    early_stopping_min_delta: float = 0.0
    export_best: bool = True
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def validate(self) -> None:
        super().validate()

        def fail(key: str, expected: str) -> None:
            raise TrainConfigError(f"{key} must be {expected} (got {getattr(self, key)!r})")

        if not self.data:
            raise TrainConfigError(
                "data= is required: an ImageFolder directory (one subfolder per class) or a dataset "
                "folder / Hub id with an image and a label column"
            )
        if not self.model:
            fail("model", "a timm model name")
        if self.image_size < 16:
            fail("image_size", ">= 16")
        if self.balance not in BALANCE:
            fail("balance", f"one of {', '.join(BALANCE)}")
        if not 0 <= self.val_fraction < 1:
            fail("val_fraction", "in [0, 1)")
        if self.eval_batch_size < 0:
            fail("eval_batch_size", ">= 0")
        if not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", "in [0, 1)")
        if not 0 < self.crop_scale_min <= 1:
            fail("crop_scale_min", "in (0, 1]")
        for key in ("color_jitter", "hed_jitter"):
            if not 0 <= getattr(self, key) <= 1:
                fail(key, "in [0, 1]")
        if not 0 <= self.jpeg_prob <= 1:
            fail("jpeg_prob", "in [0, 1]")
        if not 1 <= self.jpeg_quality_min <= 95:
            fail("jpeg_quality_min", "in [1, 95]")
        if not self.positive_labels:
            fail("positive_labels", "a non-empty list of class names")
        if self.labels is not None:
            if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
                fail("labels", "at least two distinct class names")
            missing = [p for p in self.positive_labels if p not in self.labels]
            if missing:
                raise TrainConfigError(f"positive_labels {missing} are not among labels {self.labels}")
        if self.num_classes is not None:
            if self.num_classes < 2:
                fail("num_classes", ">= 2")
            if self.labels is not None and len(self.labels) != self.num_classes:
                raise TrainConfigError(f"num_classes={self.num_classes} but labels has {len(self.labels)} names")
        if self.early_stopping_patience < 0:
            fail("early_stopping_patience", ">= 0")
        if self.early_stopping_metric not in STOP_METRICS:
            fail("early_stopping_metric", f"one of {', '.join(STOP_METRICS)}")
        if self.early_stopping_min_delta < 0:
            fail("early_stopping_min_delta", ">= 0")
        if self.early_stopping_patience and not self.eval_every:
            raise TrainConfigError("early_stopping_patience needs evaluations: set eval_every > 0")
        if self.max_image_pixels < 1:
            fail("max_image_pixels", ">= 1")
        if self.val_data:
            _check_data_value(self.val_data, "val_data")
        _pretrained_kind(self.pretrained)  # raises on a value that is neither none, a path nor a Hub id


def _check_data_value(value: str, key: str) -> None:
    from pathasst.inputs import data_ref

    try:
        data_ref(value, key=key)
    except InputError as exc:
        raise TrainConfigError(str(exc)) from None


def _pretrained_kind(value: Optional[str]) -> str:
    """``none``, ``local`` or ``hub``; raises :class:`TrainConfigError` for anything else."""
    if value is None or str(value).strip().lower() in ("", "none", "null", "false"):
        return "none"
    if Path(value).expanduser().exists():
        return "local"
    if _HUB_ID.match(value) and not value.startswith((".", "/", "~")):
        return "hub"
    raise TrainConfigError(
        f"pretrained={value}: no such file or folder, and not a Hub model id like "
        "timm/convnext_tiny.fb_in22k_ft_in1k (use 'none' for random initialisation)"
    )


# --------------------------------------------------------------------------------------------
# images


def decode_rgb(
    src: Any,
    *,
    max_side: Optional[int] = None,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
) -> "Image.Image":
    """Decode any image a dataset or folder holds into an RGB PIL image a model can take.

    Goes through :func:`pathasst.images.normalize_image` (grayscale, palette, alpha, CMYK, 16-bit and
    float images made RGB/L; EXIF rotation; the size refused before decoding above ``max_pixels``;
    JPEGs decoded at reduced scale) and downscales so the longer side is at most ``max_side``,
    which bounds memory whatever the file declares.

    Args:
        src: bytes, a path, a PIL image, or a ``datasets`` image dict ``{"bytes", "path"}``.
        max_side: downscale (never upscale) to this longer side.
        max_pixels: refuse larger images before decoding them.
        min_side: refuse images whose shorter side (after downscaling) is smaller.

    Raises:
        ImageRejected: with a ledger-ready reason.
    """
    from pathasst.images import load_rgb, normalize_image

    if isinstance(src, Mapping):
        if src.get("bytes") is not None:
            src = src["bytes"]
        elif src.get("path"):
            src = src["path"]
        else:
            raise ImageRejected("no image: the record's image holds neither bytes nor a path")
    if src is None:
        raise ImageRejected("no image: the record has no image")
    try:
        norm = normalize_image(src, max_side=max_side, max_pixels=max_pixels)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise ImageRejected(f"cannot read image: {exc}") from None
    if min(norm.width, norm.height) < min_side:
        raise ImageRejected(f"image too small: {norm.width}x{norm.height} pixels, shorter side < {min_side}")
    return load_rgb(norm)


class RandomRot90:
    """Rotate a CHW tensor by a random multiple of 90 degrees (square crops keep their shape)."""

    def __call__(self, img: "torch.Tensor") -> "torch.Tensor":
        import torch

        k = int(torch.randint(0, 4, (1,)).item())
        return torch.rot90(img, k, dims=(-2, -1)) if k else img

    def __repr__(self) -> str:
        return "RandomRot90()"


class HEDJitter:
    """Stain augmentation in hematoxylin-eosin-DAB space (Tellez et al., 2018).

    The RGB image is turned into optical densities, projected on the three stain vectors
    (:data:`RGB_FROM_HED`), each stain concentration is scaled by ``U(1-sigma, 1+sigma)`` and shifted
    by ``U(-sigma, sigma)``, and the result is projected back: the colour varies the way staining
    and scanning vary between labs, the tissue does not.

    Takes and returns a uint8 CHW tensor.
    """

    def __init__(self, sigma: float = 0.05):
        import numpy as np

        self.sigma = float(sigma)
        self._rgb_from_hed = np.asarray(RGB_FROM_HED, dtype=np.float32)
        self._hed_from_rgb = np.linalg.inv(self._rgb_from_hed).astype(np.float32)

    def __call__(self, img: "torch.Tensor") -> "torch.Tensor":
        import torch

        rgb_from_hed = torch.from_numpy(self._rgb_from_hed)
        hed_from_rgb = torch.from_numpy(self._hed_from_rgb)
        alpha = 1 + (torch.rand(3) * 2 - 1) * self.sigma
        beta = (torch.rand(3) * 2 - 1) * self.sigma
        c, h, w = img.shape
        x = img.to(torch.float32).div(255).clamp_min(1 / 255).reshape(c, -1).T  # (HW, 3)
        stains = (-torch.log(x)) @ hed_from_rgb
        od = (stains * alpha + beta) @ rgb_from_hed
        out = torch.exp(-od).clamp(0, 1).T.reshape(c, h, w)
        return out.mul(255).round().to(torch.uint8)

    def __repr__(self) -> str:
        return f"HEDJitter(sigma={self.sigma})"


class RandomJPEG:
    """Re-compress a uint8 CHW tensor as JPEG at a quality drawn from ``[low, high]`` (Pillow's
    encoder: torchvision's JPEG codec is deprecated). Figures reach us as JPEGs of every quality."""

    def __init__(self, quality: tuple[int, int] = (50, 95)):
        self.low, self.high = int(quality[0]), int(quality[1])

    def __call__(self, img: "torch.Tensor") -> "torch.Tensor":
        import io

        import numpy as np
        import torch
        from PIL import Image

        quality = int(torch.randint(self.low, self.high + 1, (1,)).item())
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            arr = np.array(decoded.convert("RGB"))
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return f"RandomJPEG(quality=({self.low}, {self.high}))"


def train_transform(cfg: SelectorConfig, mean: Sequence[float], std: Sequence[float]):
    """The training augmentation: PIL image in, normalised float tensor ``(3, S, S)`` out.

    Random resized crop (area ``crop_scale_min``..1, aspect 3/4..4/3, resized to S x S like the
    squash of evaluation), flips, 90-degree rotations, colour jitter (HSV-like), HED stain jitter,
    JPEG re-compression, then the model's mean/std. Draws only from torch's global RNG, which the
    dataset seeds per sample (see the module docstring).
    """
    import torch
    from torchvision.transforms import v2

    size = (cfg.image_size, cfg.image_size)
    steps: list[Any] = [
        v2.PILToTensor(),
        v2.RandomResizedCrop(size, scale=(cfg.crop_scale_min, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
    ]
    if cfg.flip:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if cfg.rotate90:
        steps.append(RandomRot90())
    if cfg.color_jitter > 0:
        cj = cfg.color_jitter
        jitter = v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=min(0.5, cj / 4))
        steps.append(v2.RandomApply([jitter], p=0.5))
    if cfg.hed_jitter > 0:
        steps.append(v2.RandomApply([HEDJitter(cfg.hed_jitter)], p=0.5))
    if cfg.jpeg_prob > 0:
        steps.append(v2.RandomApply([RandomJPEG((cfg.jpeg_quality_min, 95))], p=cfg.jpeg_prob))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(data_config: Mapping[str, Any]):
    """timm's evaluation transform for a resolved data config (what a user of the export gets from
    ``timm.data.create_transform(**timm.data.resolve_data_config(model=model))``)."""
    from timm.data import create_transform

    return create_transform(**dict(data_config), is_training=False)


def selector_data_config(model: "torch.nn.Module") -> dict[str, Any]:
    from timm.data import resolve_data_config

    return resolve_data_config(model=model)


# --------------------------------------------------------------------------------------------
# labelled data


class _HubImages:
    """Random access to the raw (undecoded) images of a ``datasets.Dataset``; picklable."""

    def __init__(self, ds, column: str):
        from datasets import Image as ImageFeature

        self.ds = ds.select_columns([column]).cast_column(column, ImageFeature(decode=False))
        self.column = column

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return self.ds[int(i)][self.column]

    def describe(self, i: int) -> str:
        value = self[i]
        return f"row {i}" + (f" ({value.get('path')})" if isinstance(value, Mapping) and value.get("path") else "")


class _FileImages(list):
    """Image paths of an ImageFolder."""

    def describe(self, i: int) -> str:
        return str(self[i])


@dataclass
class LabelledImages:
    """Images and their class indices, with the class names (index order).

    Attributes:
        images: random access to raw images (paths, or ``{"bytes", "path"}`` dicts).
        labels: class index of each image.
        names: class names; ``labels`` index into them.
        origin: where it came from, for messages.
    """

    images: Any
    labels: "np.ndarray"
    names: list[str]
    origin: str

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, indices: Optional[Sequence[int]] = None) -> dict[str, int]:
        import numpy as np

        labels = self.labels if indices is None else self.labels[np.asarray(indices, dtype=np.int64)]
        found = np.bincount(labels, minlength=len(self.names)) if len(labels) else np.zeros(len(self.names), int)
        return {name: int(n) for name, n in zip(self.names, found)}


def is_image_folder(path: Path) -> bool:
    """An ImageFolder is a directory with class subfolders of images and no dataset files.

    A dataset folder (``README.md`` card, ``data/*.parquet``, csv/json/arrow files) is read with
    ``datasets.load_dataset`` instead.
    """
    if not path.is_dir() or (path / "README.md").is_file():
        return False
    data_suffixes = (".parquet", ".arrow", ".csv", ".json", ".jsonl", ".tsv")
    for sub in (path, path / "data"):
        if sub.is_dir() and any(p.suffix.lower() in data_suffixes for p in sub.iterdir() if p.is_file()):
            return False
    return any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def scan_image_folder(root: Path, labels: Optional[Sequence[str]] = None) -> LabelledImages:
    """Every image below each class subfolder of ``root``, in a stable order.

    Args:
        root: the ImageFolder.
        labels: the class names in head order; every name must have a subfolder and every
            subfolder a name (default: the sorted subfolder names).

    Raises:
        InputError: no classes, a class without images, folders and ``labels`` that disagree.
    """
    import numpy as np

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labels is not None:
        missing, extra = sorted(set(labels) - set(classes)), sorted(set(classes) - set(labels))
        if missing or extra:
            raise InputError(
                f"{root}: class folders {classes} do not match labels {list(labels)}"
                + (f"; missing folders: {missing}" if missing else "")
                + (f"; folders not in labels: {extra}" if extra else "")
            )
        classes = list(labels)
    if len(classes) < 2:
        raise InputError(f"{root}: an ImageFolder needs at least two class subfolders, found {classes or 'none'}")
    paths, targets, ignored = _FileImages(), [], 0
    for index, name in enumerate(classes):
        found = 0
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                if Path(filename).suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(os.path.join(dirpath, filename))
                    targets.append(index)
                    found += 1
                else:
                    ignored += 1
        if not found:
            raise InputError(f"{root / name}: class '{name}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if ignored:
        logger.info("%s: ignored %d files that are not images (by suffix)", root, ignored)
    return LabelledImages(paths, np.asarray(targets, dtype=np.int64), classes, str(root))


@functools.lru_cache(maxsize=4)
def _load_dataset_dict(value: str):
    """``datasets.load_dataset(value)`` as a DatasetDict (memory-mapped; cached for the splits)."""
    from datasets import DatasetDict

    from pathasst.inputs import load_dataset_fresh

    try:
        ds = load_dataset_fresh(value)
    except FileNotFoundError as exc:
        raise InputError(f"{value}: cannot load it as a dataset: {exc}") from None
    if not isinstance(ds, DatasetDict):
        ds = DatasetDict({"train": ds})
    return ds


def dataset_images(ds, image_column: str, label_column: str, labels: Optional[Sequence[str]],
                   origin: str) -> LabelledImages:
    """A ``datasets.Dataset`` with an image and a label column as :class:`LabelledImages`.

    Labels are ``ClassLabel`` indices (names from the feature), strings, or integers (then
    ``labels`` must name them). With ``labels`` given, the data's names are mapped onto that order.
    """
    import numpy as np
    from datasets import ClassLabel

    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        raise InputError(
            f"{origin}: no column {' or '.join(repr(c) for c in missing)} (columns: {', '.join(ds.column_names)}); "
            "set image_column= / label_column="
        )
    feature = ds.features[label_column]
    raw = list(ds.select_columns([label_column])[label_column])
    if isinstance(feature, ClassLabel):
        data_names = list(feature.names)
        values = [data_names[int(v)] for v in raw]
    elif raw and all(isinstance(v, str) for v in raw):
        values = list(raw)
        data_names = sorted(set(values))
    elif raw and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw):
        if labels is None:
            raise InputError(f"{origin}: label column '{label_column}' holds integers without class names; "
                             "set labels=[...]")
        if min(raw) < 0 or max(raw) >= len(labels):
            raise InputError(f"{origin}: label column '{label_column}' has values outside 0..{len(labels) - 1}")
        values = [labels[int(v)] for v in raw]
        data_names = list(labels)
    else:
        raise InputError(f"{origin}: label column '{label_column}' must hold class names, ClassLabel or integers")
    names = list(labels) if labels is not None else data_names
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputError(f"{origin}: labels {unknown} are not among labels {names}")
    index = {name: i for i, name in enumerate(names)}
    targets = np.asarray([index[v] for v in values], dtype=np.int64)
    return LabelledImages(_HubImages(ds, image_column), targets, names, origin)


def load_labelled(
    value: str,
    *,
    split: Optional[str] = None,
    labels: Optional[Sequence[str]] = None,
    image_column: str = "image",
    label_column: str = "label",
    key: str = "data",
) -> LabelledImages:
    """Read an ImageFolder, or one split of a dataset folder / Hub id, as :class:`LabelledImages`.

    Raises:
        InputError: missing path, unknown split or column, unlabelled images.
    """
    from pathasst.inputs import data_ref

    ref = data_ref(value, key=key)
    if ref.kind == "local" and is_image_folder(ref.path):
        return scan_image_folder(ref.path, labels)
    ds = _load_dataset_dict(ref.value)
    split = split or ("train" if "train" in ds else next(iter(ds)))
    if split not in ds:
        raise InputError(f"{key}={value}: no split '{split}' (splits: {', '.join(ds)})")
    return dataset_images(ds[split], image_column, label_column, labels, f"{value} [{split}]")


def stratified_split(labels: "np.ndarray", fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, held_out)`` indices: ``fraction`` of every class (at least one of a class that has
    two or more images) held out, chosen by ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    train, held = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        held += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(held)


# --------------------------------------------------------------------------------------------
# datasets and sampler


def _mix(*values: int) -> int:
    acc = 0x9E3779B97F4A7C15
    for v in values:
        acc = (acc ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
    return acc & 0x7FFFFFFFFFFFFFFF


class EpochSampler:
    """Training order as a function of ``(seed, epoch)`` only, with per-sample augmentation seeds.

    Yields ``(index, augmentation_seed)`` pairs; the dataset seeds the transform with the second.
    With ``weights`` it draws ``len`` indices with replacement in proportion to the weights (class
    balancing); without, a permutation. Accelerate calls :meth:`set_epoch` through the loader, and
    shards the same order across processes.
    """

    def __init__(self, num_samples: int, seed: int, weights: Optional[Sequence[float]] = None):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        import torch

        gen = torch.Generator()
        gen.manual_seed(_mix(self.seed, self.epoch, 1))
        if self.weights is None:
            order = torch.randperm(self.num_samples, generator=gen)
        else:
            order = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), self.num_samples,
                                      replacement=True, generator=gen)
        epoch_seed = _mix(self.seed, self.epoch, 2)
        return iter([(int(i), _mix(epoch_seed, pos)) for pos, i in enumerate(order.tolist())])


class TrainImages:
    """Map-style training data: ``dataset[(i, aug_seed)] -> (tensor, label)``.

    An image that cannot be decoded is logged once and replaced by the next decodable image of the
    same class (deterministically), so one corrupt file never ends a long run; a class with no
    decodable image at all raises.
    """

    def __init__(self, data: LabelledImages, indices: Sequence[int], transform, decode_side: int, max_pixels: int):
        import numpy as np

        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = data.labels[self.indices]
        self.transform = transform
        self.decode_side = decode_side
        self.max_pixels = max_pixels
        self._bad: set[int] = set()
        self._by_class = {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}

    def __len__(self) -> int:
        return len(self.indices)

    def _image(self, pos: int) -> "Image.Image":
        import numpy as np

        cls = int(self.labels[pos])
        same = self._by_class[cls]
        start = int(np.searchsorted(same, pos))
        for step in range(len(same)):
            cand = int(same[(start + step) % len(same)])
            if cand in self._bad:
                continue
            try:
                return decode_rgb(self.data.images[int(self.indices[cand])], max_side=self.decode_side,
                                  max_pixels=self.max_pixels)
            except ImageRejected as exc:
                self._bad.add(cand)
                logger.warning("skipping training image %s: %s",
                               self.data.images.describe(int(self.indices[cand])), exc.reason)
        raise InputError(f"{self.data.origin}: no image of class '{self.data.names[cls]}' can be decoded")

    def __getitem__(self, key):
        import torch

        pos, aug_seed = key if isinstance(key, tuple) else (key, _mix(key))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(aug_seed)
            x = self.transform(self._image(int(pos)))
        return x, int(self.labels[pos])


class EvalImages:
    """Map-style evaluation data: ``dataset[i] -> (tensor, label, valid)``; ``i = -1`` is padding.

    Undecodable images come back with ``valid = False`` and are left out of the metrics.
    """

    def __init__(self, data: LabelledImages, indices: Sequence[int], transform, image_size: int,
                 decode_side: int, max_pixels: int, label_map: Optional[Sequence[int]] = None):
        import numpy as np

        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.image_size = image_size
        self.decode_side = decode_side
        self.max_pixels = max_pixels
        self.label_map = None if label_map is None else list(label_map)

    def __len__(self) -> int:
        return len(self.indices)

    def label(self, i: int) -> int:
        y = int(self.data.labels[self.indices[i]])
        return self.label_map[y] if self.label_map is not None else y

    def __getitem__(self, i: int):
        import torch

        blank = torch.zeros(3, self.image_size, self.image_size)
        if i < 0:
            return blank, 0, False
        source = self.data.images[int(self.indices[i])]
        try:
            img = decode_rgb(source, max_side=self.decode_side, max_pixels=self.max_pixels)
        except ImageRejected as exc:
            logger.warning("evaluation skips %s: %s", self.data.images.describe(int(self.indices[i])), exc.reason)
            return blank, self.label(i), False
        return self.transform(img), self.label(i), True


# --------------------------------------------------------------------------------------------
# metrics


def auroc(scores: Sequence[float], targets: Sequence[int]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``targets`` (1 = positive).

    The Mann-Whitney rank formula with average ranks for ties: the probability that a random
    positive scores above a random negative, ties counting one half. Equal to
    ``sklearn.metrics.roc_auc_score``; NaN when a class is absent.
    """
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets).astype(bool)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average rank (1-based) over each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(
    probs: "np.ndarray",
    targets: "np.ndarray",
    positive: Sequence[int],
    threshold: Optional[float] = None,
    names: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Accuracy (argmax), AUROC of the positive classes' summed probability, and, with a
    ``threshold``, the binary decision's accuracy, precision and recall.

    Args:
        probs: ``(n, C)`` softmax probabilities.
        targets: ``(n,)`` class indices.
        positive: indices of the positive (pathology) classes.
        threshold: score at or above which an image counts as positive.
        names: class names, for per-class counts.
    """
    import numpy as np

    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    n = len(targets)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out | {"accuracy": float("nan"), "auroc": float("nan")}
    score = probs[:, list(positive)].sum(axis=1)
    is_pos = np.isin(targets, list(positive))
    out["accuracy"] = float((probs.argmax(axis=1) == targets).mean())
    out["auroc"] = auroc(score, is_pos)
    out["positives"] = int(is_pos.sum())
    out["negatives"] = int(n - is_pos.sum())
    if names is not None:
        out["per_class"] = {name: int((targets == i).sum()) for i, name in enumerate(names)}
    if threshold is not None:
        pred = score >= threshold
        tp, fp = int((pred & is_pos).sum()), int((pred & ~is_pos).sum())
        fn, tn = int((~pred & is_pos).sum()), int((~pred & ~is_pos).sum())
        out.update(
            threshold=float(threshold),
            binary_accuracy=(tp + tn) / n,
            precision=tp / (tp + fp) if tp + fp else float("nan"),
            recall=tp / (tp + fn) if tp + fn else float("nan"),
            confusion={"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        )
    return out


class EarlyStopping:
    """Patience bookkeeping on one metric; replayable from a run's ``eval_history``."""

    def __init__(self, metric: str = "auroc", patience: int = 0, min_delta: float = 0.0):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.maximize = STOP_METRICS[metric]
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.bad_evals = 0
        self.stopped_at: Optional[int] = None

    def update(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """Record one evaluation; True when it is the best so far."""
        value = metrics.get(self.metric)
        value = None if value is None or not math.isfinite(float(value)) else float(value)
        improved = value is not None and (
            self.best is None
            or (value > self.best + self.min_delta if self.maximize else value < self.best - self.min_delta)
        )
        if improved:
            self.best, self.best_step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
        if self.patience and self.bad_evals >= self.patience and self.stopped_at is None:
            self.stopped_at = step
        return improved

    def replay(self, history: Sequence[Mapping[str, Any]]) -> None:
        for record in history:
            self.update(int(record["step"]), record)

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step,
                "patience": self.patience, "stopped_at": self.stopped_at}


# --------------------------------------------------------------------------------------------
# models


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_timm_folder(path: Path, what: str = "model") -> dict[str, Any]:
    """The ``config.json`` of a timm classifier folder; a clear error for any other folder.

    Raises:
        InputError: not a folder, or a folder of another family (open_clip, transformers, PEFT,
            ultralytics), or a timm folder without weights or with an unknown architecture.
    """
    import timm

    if not path.is_dir():
        raise InputError(f"{what} {path}: not a folder (expected a timm model folder: config.json + model.safetensors)")
    names = {p.name for p in path.iterdir()}
    hint = ""
    if "open_clip_config.json" in names:
        hint = " It holds an open_clip model (open_clip_config.json)."
    elif "adapter_config.json" in names:
        hint = " It holds a PEFT adapter (adapter_config.json)."
    elif any(n.endswith(".pt") for n in names):
        hint = " It holds a .pt checkpoint (an ultralytics/YOLO model?)."
    config = _read_json(path / CONFIG_FILE)
    if config is not None and "pretrained_cfg" not in config and ("model_type" in config or "architectures" in config):
        hint = f" Its config.json is a transformers config (model_type {config.get('model_type')!r})."
    expected = (" The selector needs a timm image classifier in timm's Hub layout, as written by "
                "`pathasst train selector` or timm's save_for_hf: config.json with architecture, num_classes, "
                "label_names and pretrained_cfg, and model.safetensors.")
    if config is None or not isinstance(config.get("architecture"), str) or "pretrained_cfg" not in config:
        raise InputError(f"{what} {path} is not a timm image classifier folder.{hint}{expected}")
    if not timm.is_model(config["architecture"]):
        raise InputError(f"{what} {path}: architecture '{config['architecture']}' is not a timm model "
                         f"(timm {timm.__version__}).{expected}")
    if not any(n in names for n in (WEIGHTS_FILE, "pytorch_model.bin", "model.pth")):
        raise InputError(f"{what} {path}: no weights file ({WEIGHTS_FILE} or pytorch_model.bin).{expected}")
    return config


def _read_model_config(ref: str, what: str = "model") -> tuple[str, Optional[dict[str, Any]]]:
    """``(timm model name, config.json)`` for a local folder or a Hub id; ``what`` names it in errors."""
    path = Path(ref).expanduser()
    if not ref.startswith("hf-hub:") and path.exists():
        return f"local-dir:{path}", check_timm_folder(path, what)
    if not _HUB_ID.match(ref) or ref.startswith((".", "/", "~")):
        raise InputError(f"{what} {ref}: no such folder (and not a Hub model id like owner/name)")
    repo = ref.removeprefix("hf-hub:")
    config = None
    try:
        from huggingface_hub import hf_hub_download
        from timm.models._hub import hf_split

        repo_id, revision = hf_split(repo)
        config = _read_json(Path(hf_hub_download(repo_id, CONFIG_FILE, revision=revision)))
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing: say which and stop
        where = "" if ref.startswith("hf-hub:") else "no such folder, and "
        raise InputError(f"{what} {ref}: {where}cannot fetch its config.json from the Hub as a model id "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if config is None or "architecture" not in config or "pretrained_cfg" not in config:
        raise InputError(f"{what} {ref} is not a timm image classifier on the Hub (config.json without "
                         "architecture / pretrained_cfg)")
    return f"hf-hub:{repo}", config


def _configure_for_selector(model, labels: Sequence[str], image_size: int) -> None:
    """Point the model's pretrained_cfg at what the selector trains and serves: our labels, a
    square input resized whole (``squash``), the init's mean/std; drop what described the init
    (Hub id, tag, licence, test-time sizes)."""
    cfg = dict(model.pretrained_cfg)
    for key in ("file", "source", "url", "hf_hub_id", "hf_hub_filename", "tag", "license", "test_input_size",
                "test_crop_pct", "test_pool_size", "label_descriptions", "label_offset", "paper_ids",
                "paper_name", "notes", "origin_url"):
        cfg.pop(key, None)
    cfg.update(
        input_size=(3, image_size, image_size),
        crop_pct=1.0,
        crop_mode="squash",
        num_classes=len(labels),
        label_names=list(labels),
    )
    if tuple(model.pretrained_cfg.get("input_size", ())[1:]) != (image_size, image_size):
        cfg["pool_size"] = None
    model.pretrained_cfg = cfg


def create_selector_model(cfg: SelectorConfig, labels: Sequence[str]) -> "torch.nn.Module":
    """The timm model for ``cfg``: architecture, initial weights (``pretrained``), a head of
    ``len(labels)`` classes, and the selector's pretrained_cfg.

    Raises:
        ConfigError: unknown architecture, or pretrained weights of another architecture.
        InputError: a pretrained folder of another family.
    """
    import timm

    if not timm.is_model(cfg.model):
        close = timm.list_models(f"*{cfg.model.split('.')[0][:8]}*")[:8]
        similar = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(f"model={cfg.model} is not a timm model{similar}")
    n = len(labels)
    kwargs = dict(cfg.model_kwargs)
    kind = _pretrained_kind(cfg.pretrained)
    if kind == "none":
        model = timm.create_model(cfg.model, pretrained=False, num_classes=n, **kwargs)
    elif kind == "local" and Path(cfg.pretrained).expanduser().is_file():
        model = timm.create_model(cfg.model, pretrained=False, num_classes=n, **kwargs)
        _load_state_file(model, Path(cfg.pretrained).expanduser())
    else:
        name, config = _read_model_config(cfg.pretrained, what="pretrained weights")
        if config["architecture"] != cfg.model:
            raise ConfigError(
                f"pretrained={cfg.pretrained} holds a '{config['architecture']}' model but model={cfg.model}; "
                f"set model={config['architecture']}"
            )
        # A head of another size is re-initialised by timm (num_classes differs from the checkpoint's).
        model = timm.create_model(name, pretrained=True, num_classes=n, **kwargs)
    _configure_for_selector(model, labels, cfg.image_size)
    return model


def _load_state_file(model, path: Path) -> None:
    """Load a state dict file, replacing a classifier of another shape; anything else must match."""
    from timm.models import load_state_dict

    state = load_state_dict(str(path))
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier") or ""
    heads = [head] if isinstance(head, str) else list(head)
    dropped = [k for k in list(state) if k in own and state[k].shape != own[k].shape
               and any(k.startswith(h + ".") for h in heads)]
    for k in dropped:
        del state[k]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in dropped]
    if missing or unexpected:
        raise ConfigError(
            f"pretrained={path} does not fit model={model.pretrained_cfg.get('architecture')}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )
    if dropped:
        logger.info("pretrained %s: head %s re-initialised for %d classes", path, dropped, model.num_classes)


def save_selector(state: Mapping[str, "torch.Tensor"], template: "torch.nn.Module", folder: Path,
                  positive_labels: Sequence[str], info: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a selector in timm's Hub layout: ``model.safetensors`` + ``config.json``.

    Args:
        state: the full state dict to save.
        template: the model whose architecture, arguments and ``pretrained_cfg`` describe ``state``
            (may hold other weights, or be wrapped parameters: only its attributes are read).
        folder: the folder to write; replaced atomically (written beside it, then renamed).
        positive_labels: written to the ``pathasst`` section.
        info: more facts for that section (validation metrics, steps, ...).
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    labels = list(template.pretrained_cfg["label_names"])
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    meta = _json_safe({"family": FAMILY, "positive_labels": list(positive_labels), **dict(info or {})})
    data_config = {k: template.pretrained_cfg[k] for k in ("input_size", "crop_pct", "crop_mode", "interpolation",
                                                          "mean", "std") if k in template.pretrained_cfg}
    save_config_for_hf(template, str(tmp / CONFIG_FILE), model_config={"label_names": labels, META_KEY: meta},
                       data_config=data_config)
    if folder.exists():
        trash = folder.with_name(f".tmp-old-{folder.name}-{os.getpid()}")
        folder.rename(trash)
        tmp.rename(folder)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(folder)
    return folder


def _json_safe(value: Any) -> Any:
    """Strict JSON: NaN and infinities (an AUROC with one class) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# the training task


class SelectorTask(TrainTask):
    """Model, data, loss, validation, early stopping and export of the selector (see module doc)."""

    name = FAMILY

    def __init__(self, cfg: SelectorConfig):
        import numpy as np

        self.cfg = cfg
        self.train_data = load_labelled(cfg.data, split=cfg.train_split, labels=cfg.labels,
                                        image_column=cfg.image_column, label_column=cfg.label_column)
        names = self.train_data.names
        if cfg.num_classes is not None and len(names) != cfg.num_classes:
            raise ConfigError(f"num_classes={cfg.num_classes} but {cfg.data} has {len(names)} classes: {names}")
        missing = [p for p in cfg.positive_labels if p not in names]
        if missing:
            raise ConfigError(f"positive_labels {missing} are not classes of {cfg.data} (classes: {names}); "
                              "set positive_labels= or labels=")
        if all(n in cfg.positive_labels for n in names):
            raise ConfigError(f"every class of {cfg.data} is in positive_labels {cfg.positive_labels}: "
                              "nothing to tell apart")
        self.labels = names
        self.positive = [names.index(p) for p in cfg.positive_labels]
        self.train_indices, self.val_data, self.val_indices = self._split()
        counts = self.train_data.counts(self.train_indices)
        empty = [k for k, v in counts.items() if v == 0]
        if empty:
            raise InputError(f"{cfg.data}: no training images of class(es) {empty}")
        self.class_counts = counts
        freq = np.asarray([counts[n] for n in names], dtype=np.float64)
        self.class_weights = freq.sum() / (len(freq) * freq)  # 1 for balanced data
        if cfg.eval_every and not len(self.val_indices):
            raise ConfigError("eval_every > 0 but there is no validation data: set val_data=, a dataset with "
                              f"a '{cfg.val_split}' split, or val_fraction > 0")
        val_counts = self.val_data.counts(self.val_indices) if len(self.val_indices) else {}
        if cfg.early_stopping_patience and cfg.early_stopping_metric == "auroc":
            pos = sum(v for k, v in val_counts.items() if k in cfg.positive_labels)
            if not pos or pos == sum(val_counts.values()):
                raise ConfigError(f"early stopping on AUROC needs positive and negative validation images; "
                                  f"validation has {val_counts}")
        logger.info("selector data: classes %s; train %s; validation %s", names, counts, val_counts or "none")
        self.stopper = EarlyStopping(cfg.early_stopping_metric, cfg.early_stopping_patience,
                                     cfg.early_stopping_min_delta)
        self.start_step: Optional[int] = None
        self.evals_done = 0
        self.data_config: Optional[dict[str, Any]] = None
        self.configured_max_steps = cfg.max_steps
        self.is_main = True  # logging in should_stop (which has no accelerator): set by evaluate
        self.best_dir = Path(cfg.output_dir) / BEST_DIR

    # --- data ------------------------------------------------------------------------------

    def _split(self) -> tuple[list[int], LabelledImages, list[int]]:
        cfg = self.cfg
        if cfg.val_data:
            split = None if is_image_folder(Path(cfg.val_data)) else _pick_split(cfg.val_data, cfg.val_split)
            val = load_labelled(cfg.val_data, split=split, labels=self.labels, image_column=cfg.image_column,
                                label_column=cfg.label_column, key="val_data")
            return list(range(len(self.train_data))), val, list(range(len(val)))
        if not is_image_folder(Path(cfg.data)) and _has_split(cfg.data, cfg.val_split):
            val = load_labelled(cfg.data, split=cfg.val_split, labels=self.labels, image_column=cfg.image_column,
                                label_column=cfg.label_column)
            return list(range(len(self.train_data))), val, list(range(len(val)))
        train, held = stratified_split(self.train_data.labels, cfg.val_fraction, cfg.seed)
        return train, self.train_data, held

    @property
    def decode_side(self) -> int:
        return 2 * self.cfg.image_size

    def train_dataset(self, args):
        assert self.data_config is not None, "build_model runs first"
        transform = train_transform(self.cfg, self.data_config["mean"], self.data_config["std"])
        return TrainImages(self.train_data, self.train_indices, transform, self.decode_side, self.cfg.max_image_pixels)

    def train_dataloader(self, args):
        import torch
        from torch.utils.data import DataLoader

        dataset = self.train_dataset(args)
        weights = None
        if self.cfg.balance == "sampler":
            weights = [float(self.class_weights[int(y)]) for y in dataset.labels]
        return DataLoader(
            dataset,
            batch_size=args.batch_size,
            sampler=EpochSampler(len(dataset), args.seed, weights),
            drop_last=True,
            num_workers=args.num_workers,
            collate_fn=self.collate,
            generator=torch.Generator(),
            persistent_workers=False,
        )

    # --- model and loss --------------------------------------------------------------------

    def build_model(self, args):
        self.prepare_resume()
        model = create_selector_model(self.cfg, self.labels)
        self.data_config = selector_data_config(model)
        return model

    def loss(self, model, batch):
        import torch
        import torch.nn.functional as F

        x, y = batch
        logits = model(x).float()
        weight = None
        if self.cfg.balance == "loss":
            weight = torch.as_tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        loss = F.cross_entropy(logits, y, weight=weight, label_smoothing=self.cfg.label_smoothing)
        return loss, {"accuracy": (logits.argmax(1) == y).float().mean()}

    # --- resume and early stopping ---------------------------------------------------------

    def prepare_resume(self) -> Optional[Path]:
        """Read the checkpoint the loop will resume from (if any): its step and eval history.

        Rebuilds the early-stopping state by replaying that history. Idempotent.
        """
        if self.start_step is not None:
            return None
        from pathasst.trainers.loop import latest_checkpoint

        cfg = self.cfg
        checkpoint = None
        if cfg.resume == "auto":
            checkpoint = latest_checkpoint(cfg.output_dir)
        elif cfg.resume != "never" and (Path(cfg.resume) / STATE_FILE).is_file():
            checkpoint = Path(cfg.resume)
        self.start_step, history = 0, []
        if checkpoint is not None:
            state = json.loads((checkpoint / STATE_FILE).read_text())
            self.start_step, history = int(state["step"]), list(state.get("eval_history", []))
        self.stopper.replay(history)
        best_state = _read_json(self.best_dir / "state.json")
        if best_state and best_state.get("step", 0) > self.start_step:
            # saved by a run that went past the checkpoint we resume from: that future is replayed
            logger.info("removing best weights of step %s (resuming from step %d)", best_state["step"], self.start_step)
            shutil.rmtree(self.best_dir, ignore_errors=True)
        return checkpoint

    def evaluate(self, model, accelerator):
        self.is_main = accelerator.is_main_process
        self.evals_done += 1
        start = self.start_step or 0
        step = (start // self.cfg.eval_every + self.evals_done) * self.cfg.eval_every
        probs, targets, loss = self.predict_validation(model, accelerator)
        metrics = classification_metrics(probs.numpy(), targets.numpy(), self.positive)
        metrics["loss"] = loss
        result = {k: metrics[k] for k in ("accuracy", "auroc", "loss", "n")}
        improved = self.stopper.update(step, result)
        if improved and self.cfg.export_best:
            self._save_best(model, accelerator, step, result)
        return result

    def should_stop(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """True once the patience is spent (set by the evaluation just made); the loop then
        checkpoints this step, records ``stopped_at`` and exports."""
        stopped = self.stopper.stopped_at
        if stopped is None:
            return False
        if stopped != step:  # evaluate() numbers evaluations itself; the two must agree
            logger.warning("early stopping recorded step %d, the loop is at step %d", stopped, step)
        if self.is_main:
            logger.info(
                "early stopping at step %d: %s has not improved for %d evaluations (best %.5g at step %s)",
                step, self.cfg.early_stopping_metric, self.stopper.bad_evals, self.stopper.best or float("nan"),
                self.stopper.best_step,
            )
        return True

    def predict_validation(self, model, accelerator) -> tuple["torch.Tensor", "torch.Tensor", float]:
        """Softmax probabilities and targets of the validation images (undecodable ones left out),
        computed in shards across processes and gathered; and the mean cross-entropy."""
        import torch
        import torch.nn.functional as F
        from torch.utils.data import DataLoader, Subset

        assert self.data_config is not None
        dataset = EvalImages(self.val_data, self.val_indices, eval_transform(self.data_config), self.cfg.image_size,
                             self.decode_side, self.cfg.max_image_pixels)
        rank, world = accelerator.process_index, accelerator.num_processes
        per = math.ceil(len(dataset) / world)
        mine = list(range(rank, len(dataset), world))
        mine += [-1] * (per - len(mine))
        loader = DataLoader(Subset(dataset, mine), batch_size=self.cfg.eval_batch_size or 2 * self.cfg.batch_size,
                            num_workers=self.cfg.num_workers, shuffle=False)
        logits, labels, valid = [], [], []
        for x, y, ok in loader:
            logits.append(model(x.to(accelerator.device)).float())
            labels.append(y.to(accelerator.device))
            valid.append(ok.to(accelerator.device))
        num_classes = len(self.labels)
        logits_t = torch.cat(logits) if logits else torch.zeros(0, num_classes, device=accelerator.device)
        labels_t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=accelerator.device)
        valid_t = torch.cat(valid) if valid else torch.zeros(0, dtype=torch.bool, device=accelerator.device)
        if world > 1:
            logits_t, labels_t, valid_t = (accelerator.gather(t.contiguous()) for t in (logits_t, labels_t, valid_t))
        logits_t, labels_t = logits_t[valid_t].cpu(), labels_t[valid_t].cpu()
        loss = float(F.cross_entropy(logits_t, labels_t).item()) if len(labels_t) else float("nan")
        return logits_t.softmax(dim=1), labels_t, loss

    def _save_best(self, model, accelerator, step: int, metrics: Mapping[str, Any]) -> None:
        from safetensors.torch import save_file

        state = accelerator.get_state_dict(model)  # every process: gathers sharded weights
        if not accelerator.is_main_process:
            return
        tmp = self.best_dir.with_name(f".tmp-{BEST_DIR}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        (tmp / "state.json").write_text(json.dumps({"step": step, "metrics": dict(metrics)}, indent=1))
        if self.best_dir.exists():
            shutil.rmtree(self.best_dir)
        tmp.rename(self.best_dir)

    # --- export ----------------------------------------------------------------------------

    def export(self, model, output_dir: Path, accelerator) -> None:
        from safetensors.torch import load_file

        state = accelerator.get_state_dict(model)
        if not accelerator.is_main_process:
            return
        exported = "final"
        best_state = _read_json(self.best_dir / "state.json")
        if self.cfg.export_best and best_state and (self.best_dir / WEIGHTS_FILE).is_file():
            state, exported = load_file(str(self.best_dir / WEIGHTS_FILE)), "best"
        info = {
            "exported_weights": exported,
            "image_size": self.cfg.image_size,
            "class_counts_train": self.class_counts,
            "early_stopping": self.stopper.as_dict() if self.cfg.eval_every else None,
            "validation": (best_state or {}).get("metrics") if exported == "best" else None,
            "best_step": (best_state or {}).get("step") if exported == "best" else None,
            "configured_max_steps": self.configured_max_steps,
        }
        save_selector(state, accelerator.unwrap_model(model), Path(output_dir), self.cfg.positive_labels, info)
        logger.info("selector exported (%s weights) to %s", exported, output_dir)


def _has_split(value: str, split: str) -> bool:
    return split in _load_dataset_dict(value)


def _pick_split(value: str, preferred: str) -> str:
    ds = _load_dataset_dict(value)
    for name in (preferred, "validation", "test", "train"):
        if name in ds:
            return name
    return next(iter(ds))


# --------------------------------------------------------------------------------------------
# inference


class Selector:
    """A trained selector ready to score images.

    Attributes:
        model: the timm model (eval mode, on ``device``).
        labels: class names in head order.
        positive: indices of the positive (pathology) classes.
        data_config: timm's resolved data config (input size, mean, std, crop mode).
        source: what it was loaded from.
    """

    def __init__(self, model, labels: Sequence[str], positive: Sequence[int], device: str, source: str = ""):
        self.model = model.eval().to(device)
        self.labels = list(labels)
        self.positive = list(positive)
        self.device = device
        self.source = source
        self.data_config = selector_data_config(model)
        self.transform = eval_transform(self.data_config)

    @property
    def image_size(self) -> int:
        return int(self.data_config["input_size"][-1])

    @property
    def decode_side(self) -> int:
        """Images are decoded down to this longer side before the resize (bounds memory)."""
        return 2 * max(self.data_config["input_size"][1:])

    @classmethod
    def load(cls, ref: str, *, positive_labels: Optional[Sequence[str]] = None, device: str = "auto") -> "Selector":
        """Load a selector from a local folder (timm Hub layout) or a Hub id (``owner/name``).

        Args:
            ref: the folder, or ``owner/name`` / ``hf-hub:owner/name``.
            positive_labels: the pathology class(es); default: the model's ``pathasst`` section,
                else ``["pathology"]``.
            device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N``.

        Raises:
            InputError: missing folder, a model of another family, no label names, a positive
                label the model does not have.
        """
        import timm
        import torch

        name, config = _read_model_config(ref)
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - a broken folder must read as such, not as a traceback
            detail = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise InputError(f"model {ref}: timm cannot load it: {type(exc).__name__}: {detail}") from None
        labels = model.pretrained_cfg.get("label_names") or (config or {}).get("label_names")
        if isinstance(labels, Mapping):
            labels = [labels[k] for k in sorted(labels, key=int)]
        if not labels or len(labels) != model.num_classes:
            raise InputError(f"model {ref} has no label_names for its {model.num_classes} classes: cannot tell "
                             "which class means pathology")
        meta = (config or {}).get(META_KEY) or {}
        positive_labels = list(positive_labels or meta.get("positive_labels") or ["pathology"])
        missing = [p for p in positive_labels if p not in labels]
        if missing:
            raise InputError(f"model {ref}: positive label(s) {missing} are not among its labels {list(labels)}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={device} but no CUDA device is available; use 'cpu' or 'auto'")
        return cls(model, labels, [list(labels).index(p) for p in positive_labels], device, source=str(ref))

    def predict(self, images: Sequence["Image.Image"]) -> "np.ndarray":
        """Softmax probabilities ``(n, num_classes)`` of RGB PIL images."""
        import numpy as np
        import torch

        if not images:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        batch = torch.stack([self.transform(img) for img in images]).to(self.device)
        with torch.inference_mode():
            logits = self.model(batch).float()
        return logits.softmax(dim=1).cpu().numpy()

    def score(self, images: Sequence["Image.Image"]) -> "np.ndarray":
        """The pathology score of each image: the summed probability of the positive classes."""
        probs = self.predict(images)
        return probs[:, self.positive].sum(axis=1)

    def decode(self, src: Any, *, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, min_side: int = 1) -> "Image.Image":
        """:func:`decode_rgb` with this model's decode size."""
        return decode_rgb(src, max_side=self.decode_side, max_pixels=max_pixels, min_side=min_side)


def evaluate_selector(
    selector: Selector,
    data: LabelledImages,
    *,
    batch_size: int = 32,
    threshold: Optional[float] = 0.5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy and AUROC of ``selector`` on labelled images (class names must be the model's).

    Images that cannot be decoded are left out and counted in ``skipped``.

    Raises:
        InputError: a class of the data the model does not know.
    """
    import numpy as np
    from tqdm.auto import tqdm

    unknown = [n for n in data.names if n not in selector.labels]
    if unknown:
        raise InputError(f"{data.origin}: classes {unknown} are not among the model's labels {selector.labels}")
    label_map = [selector.labels.index(n) for n in data.names]
    dataset = EvalImages(data, range(len(data)), selector.transform, selector.image_size, selector.decode_side,
                         max_pixels, label_map=label_map)
    probs, targets = [], []
    pending: list[Any] = []
    pending_targets: list[int] = []
    skipped = 0

    def flush() -> None:
        if pending:
            probs.append(selector.predict(pending))
            targets.extend(pending_targets)
            pending.clear()
            pending_targets.clear()

    for i in tqdm(range(len(dataset)), desc="evaluate", unit="img", disable=not progress):
        source = data.images[int(dataset.indices[i])]
        try:
            img = selector.decode(source, max_pixels=max_pixels)
        except ImageRejected as exc:
            skipped += 1
            logger.warning("evaluation skips %s: %s", data.images.describe(i), exc.reason)
            continue
        pending.append(img)
        pending_targets.append(dataset.label(i))
        if len(pending) >= batch_size:
            flush()
    flush()
    all_probs = np.concatenate(probs) if probs else np.zeros((0, len(selector.labels)))
    metrics = classification_metrics(all_probs, np.asarray(targets, dtype=np.int64), selector.positive,
                                     threshold=threshold, names=selector.labels)
    metrics["skipped"] = skipped
    metrics["positive_labels"] = [selector.labels[i] for i in selector.positive]
    return metrics


# --------------------------------------------------------------------------------------------
# entry point


def train_selector(cfg: SelectorConfig) -> tuple[TrainResult, SelectorTask]:
    """Train (or resume) a selector; returns the loop's result and the task (labels, stopper)."""
    from pathasst.trainers.loop import train

    original = copy.deepcopy(cfg)  # what config.yaml and the config hash describe
    task = SelectorTask(cfg)
    task.prepare_resume()  # patience state replayed; a stopped run's checkpoint holds stopped_at
    return train(task, cfg, config=original), task


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``pathasst train selector [--recipe NAME_OR_FILE] [key=value ...]``."""
    from pathasst.trainers.registry import load_family_config

    cfg = load_family_config(SelectorConfig, FAMILY, list(argv or []))
    result, task = train_selector(cfg)
    best = task.stopper
    line = f"selector: {result.final_step} steps"
    if result.final_step < task.configured_max_steps:
        line += f" (stopped early; configured {task.configured_max_steps})"
    if best.best is not None:
        line += f", best validation {best.metric} {best.best:.4f} at step {best.best_step}"
    print(f"{line}; model: {result.model_dir}")
    return 0


__all__ = [
    "EarlyStopping",
    "EpochSampler",
    "HEDJitter",
    "LabelledImages",
    "RandomJPEG",
    "RandomRot90",
    "Selector",
    "SelectorConfig",
    "SelectorTask",
    "auroc",
    "check_timm_folder",
    "classification_metrics",
    "create_selector_model",
    "decode_rgb",
    "eval_transform",
    "evaluate_selector",
    "load_labelled",
    "main",
    "save_selector",
    "scan_image_folder",
    "stratified_split",
    "train_selector",
    "train_transform",
]
