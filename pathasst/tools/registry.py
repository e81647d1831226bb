"""The pathology tool registry shared by PathInstruct generation (issue #6) and the PathAsst runtime (#9).

A :class:`Tool` is what a language model sees (name, description, JSON-schema ``parameters``) plus
what the runtime needs (a runner, a ``result_schema`` its output is checked against, and
:meth:`Tool.available`). :func:`openai_schema` gives the OpenAI function-tool dict that both the
``openai`` client and transformers' ``apply_chat_template(tools=...)`` accept.

Arguments and results are validated with the ``jsonschema`` package (Draft 2020-12), imported on
first use: the schemas are real JSON Schema that generated data and other runtimes can check with any
validator, so a home-made subset would drift from what they accept.

Heavy stacks (scikit-image, torch, timm, ultralytics) are imported only when a tool runs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import Any

from pathasst.errors import InputError, PathasstError


class ToolError(PathasstError):
    """A tool cannot run as asked: unknown tool, bad argument, unusable image."""

    exit_code = 2


class ToolArgumentError(ToolError):
    """An argument fails the tool's schema; ``argument`` names it (None for the arguments as a whole)."""

    def __init__(self, tool: str, argument: str | None, message: str):
        where = f"argument '{argument}'" if argument else "arguments"
        super().__init__(f"tool {tool}: {where}: {message}")
        self.tool = tool
        self.argument = argument


class ToolUnavailable(ToolError):
    """The tool is registered but cannot run here (missing extra, not landed); the message says why."""


class ToolResultError(PathasstError):
    """A tool returned a result that does not match its ``result_schema`` (a bug in the tool)."""

    exit_code = 1


def _always() -> tuple[bool, str]:
    return True, ""


@dataclasses.dataclass(frozen=True)
class Tool:
    """One pathology tool.

    Attributes:
        name: the function name a model calls (``[a-zA-Z0-9_-]``).
        description: one or two sentences for the model and for ``pathasst tool list``.
        parameters: JSON Schema (an ``object``) of the arguments; defaults are documented in it.
        result_schema: JSON Schema of the dict :meth:`run` returns.
        runner: ``runner(image, **arguments) -> dict``, ``image`` an RGB PIL image.
        availability: ``() -> (available, reason)``; the reason says why not, and how to fix it.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    result_schema: Mapping[str, Any]
    runner: Callable[..., dict]
    availability: Callable[[], tuple[bool, str]] = _always

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` when the tool can run here, else ``(False, why)``."""
        return self.availability()

    def validate_arguments(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """The arguments, checked against :attr:`parameters`, with schema defaults filled in.

        Raises:
            ToolArgumentError: naming the first argument that fails (unknown, missing, wrong type or range).
        """
        arguments = dict(arguments or {})
        props = self.parameters.get("properties", {})
        if self.parameters.get("additionalProperties") is False:
            unknown = sorted(set(arguments) - set(props))
            if unknown:
                raise ToolArgumentError(self.name, unknown[0],
                                        f"unknown argument; {self.name} takes {sorted(props) or 'none'}")
        for required in self.parameters.get("required", []):
            if required not in arguments:
                raise ToolArgumentError(self.name, required, "is required")
        errors = sorted(_validator(self.parameters).iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            error = errors[0]
            path = list(error.absolute_path)
            name = str(path[0]) if path else None
            raise ToolArgumentError(self.name, name, _message(error))
        filled = {k: v["default"] for k, v in props.items() if isinstance(v, Mapping) and "default" in v}
        filled.update(arguments)
        return filled

    def validate_result(self, result: Any) -> dict[str, Any]:
        """The result, checked against :attr:`result_schema`; :class:`ToolResultError` if it fails."""
        errors = list(_validator(self.result_schema).iter_errors(result))
        if errors:
            error = errors[0]
            where = "/".join(str(p) for p in error.absolute_path) or "the result"
            raise ToolResultError(f"tool {self.name} returned an invalid result at {where}: {_message(error)}")
        return result

    def run(self, image: Any, **arguments: Any) -> dict[str, Any]:
        """Run the tool on ``image`` (a PIL image, a path, or encoded bytes) with validated arguments.

        Raises:
            ToolUnavailable: the tool cannot run here; ToolArgumentError: a bad argument;
            InputError: an image that cannot be read; ToolResultError: a result off its schema.
        """
        ok, reason = self.available()
        if not ok:
            raise ToolUnavailable(f"tool {self.name} is not available: {reason}")
        checked = self.validate_arguments(arguments)
        result = self.runner(_as_rgb(image), **checked)
        return self.validate_result(result)


def _message(error: Any) -> str:
    return str(error.message).splitlines()[0][:300]


@functools.cache
def _validator_for(schema_key: str):
    import json

    import jsonschema

    schema = json.loads(schema_key)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def _validator(schema: Mapping[str, Any]):
    import json

    return _validator_for(json.dumps(schema, sort_keys=True))


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.SchemaError`` unless ``schema`` is valid JSON Schema (Draft 2020-12)."""
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)


def _as_rgb(image: Any):
    from PIL import Image

    from pathasst.images import ImageRejected, load_rgb

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise InputError(f"IMAGE {image}: no such file")
        label = str(image)
    else:
        label = "image"
    try:
        return load_rgb(image)
    except ImageRejected as exc:
        raise InputError(f"IMAGE {label}: {exc.reason}") from None
    except OSError as exc:
        raise InputError(f"IMAGE {label}: cannot read it ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------------------------
# the registry

_REGISTRY: dict[str, Tool] = {}


def register(tool: Tool, *, replace: bool = False) -> Tool:
    """Add ``tool``; a second tool of the same name is an error unless ``replace``."""
    if tool.name in _REGISTRY and not replace:
        raise ValueError(f"a tool named {tool.name!r} is already registered")
    _REGISTRY[tool.name] = tool
    return tool


def get(name: str) -> Tool:
    """The tool called ``name``; :class:`ToolError` listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ToolError(f"no tool named {name!r}; known tools: {', '.join(sorted(_REGISTRY))}") from None


def list_tools() -> list[Tool]:
    """Every registered tool, in registration order."""
    return list(_REGISTRY.values())


def openai_schema(tool: Tool | str) -> dict[str, Any]:
    """The OpenAI function-tool dict of ``tool``, as ``tools=[...]`` takes it (also transformers' chat templates)."""
    tool = get(tool) if isinstance(tool, str) else tool
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": dict(tool.parameters)},
    }


# --------------------------------------------------------------------------------------------
# the built-in tools


def _needs(*modules: str, extra: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"needs {', '.join(missing)}: pip install 'pathasst[{extra}]'"
        return True, ""

    return check


def _run_ihc(image: Any, **arguments: Any) -> dict[str, Any]:
    from pathasst.tools.ihc import quantify_ihc

    return quantify_ihc(image, **arguments)


def _run_pathclip(image: Any, *, labels: list[str], model: str,
                  template: str = "a histopathology image of {}.") -> dict[str, Any]:
    from pathasst.tools.pathclip import zero_shot

    return zero_shot(image, labels, model, template)


@functools.lru_cache(maxsize=4)
def _load_selector(model: str, positive: tuple[str, ...], device: str):
    from pathasst.trainers.selector import Selector

    return Selector.load(model, positive_labels=list(positive) or None, device=device)


def _run_selector(image: Any, *, model: str, positive_labels: list[str] | None = None, device: str = "auto",
                  threshold: float = 0.5) -> dict[str, Any]:
    selector = _load_selector(model, tuple(positive_labels or ()), device)
    probs = selector.predict([image])[0]
    score = float(probs[selector.positive].sum())
    return {
        "pathology_score": min(1.0, max(0.0, score)),
        "is_pathology": score >= threshold,
        "probabilities": {label: float(p) for label, p in zip(selector.labels, probs)},
        "positive_labels": [selector.labels[i] for i in selector.positive],
        "model": str(model),
    }


@functools.lru_cache(maxsize=2)
def _load_subfig_detector(model: str):
    from pathasst.trainers.subfig import load_detector

    return load_detector(model, what="model")


def _run_subfig(image: Any, *, model: str, conf: float = 0.4, iou: float = 0.5, contain: float = 0.8,
                min_side: int = 8, imgsz: int | None = None, device: str | None = None) -> dict[str, Any]:
    import numpy as np

    from pathasst.dataset_builders.curate.detect import choose_panels

    yolo, _ckpt = _load_subfig_detector(model)
    names = {int(k): str(v) for k, v in yolo.names.items()}
    subfig_cls = next(k for k, v in names.items() if v == "subfigure")
    imgsz = imgsz or int((getattr(yolo, "ckpt", None) or {}).get("train_args", {}).get("imgsz") or 640)
    kwargs: dict[str, Any] = {"conf": conf, "iou": iou, "imgsz": imgsz, "verbose": False}
    if device is not None:
        kwargs["device"] = device
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    result = yolo.predict([bgr], **kwargs)[0]
    boxes = result.boxes
    xyxy = boxes.xyxy.cpu().numpy().tolist() if len(boxes) else []
    confs = boxes.conf.cpu().numpy().tolist() if len(boxes) else []
    classes = boxes.cls.cpu().numpy().astype(int).tolist() if len(boxes) else []
    dets = [(b, c) for b, c, k in zip(xyxy, confs, classes) if k == subfig_cls]
    panels = choose_panels(dets, image.width, image.height, conf=conf, contain=contain, min_side=min_side,
                           candidate_conf=min(conf, 0.2))
    return {
        "count": len(panels),
        "panels": [{"bbox": p.xywh, "confidence": float(p.conf)} for p in panels],
        "width": int(image.width),
        "height": int(image.height),
        "model": str(model),
    }


def _builtin_tools() -> list[Tool]:
    from pathasst.tools import ihc

    unit = {"type": "number", "minimum": 0, "maximum": 1}
    return [
        Tool("ihc_quantify", ihc.DESCRIPTION, ihc.PARAMETERS, ihc.RESULT_SCHEMA, _run_ihc,
             _needs("skimage", extra="demo")),
        Tool(
            "pathclip_zero_shot",
            "Zero-shot classification of a pathology image with PathCLIP: the probability of each "
            "candidate label given as text.",
            {
                "type": "object",
                "properties": {
                    "labels": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2,
                               "description": "candidate class names, e.g. ['adenocarcinoma', 'normal colon']"},
                    "template": {"type": "string", "default": "a histopathology image of {}.",
                                 "description": "prompt template; {} is replaced by each label"},
                    "model": {"type": "string", "description": "PathCLIP model folder or Hub id"},
                },
                "required": ["labels", "model"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {
                    "probabilities": {"type": "object", "additionalProperties": unit},
                    "label": {"type": "string"},
                    "model": {"type": "string"},
                },
                "required": ["probabilities", "label"],
            },
            _run_pathclip,
            _needs("torch", "open_clip", extra="clip"),
        ),
        Tool(
            "pathology_selector",
            "Score whether an image is a pathology image (micrograph of tissue or cells) rather than a "
            "chart, diagram or photograph, with the trained pathology-image selector.",
            {
                "type": "object",
                "properties": {
                    "model": {"type": "string", "minLength": 1,
                              "description": "selector model: a timm folder from `pathasst train selector` or a Hub id"},
                    "positive_labels": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                        "description": "the class(es) meaning pathology; default: the model's own"},
                    "threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                                  "description": "pathology score from which is_pathology is true"},
                    "device": {"type": "string", "default": "auto", "description": "auto, cpu, cuda or cuda:N"},
                },
                "required": ["model"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {
                    "pathology_score": unit,
                    "is_pathology": {"type": "boolean"},
                    "probabilities": {"type": "object", "additionalProperties": unit},
                    "positive_labels": {"type": "array", "items": {"type": "string"}},
                    "model": {"type": "string"},
                },
                "required": ["pathology_score", "is_pathology", "probabilities"],
            },
            _run_selector,
            _needs("torch", "timm", extra="vision"),
        ),
        Tool(
            "subfigure_detect",
            "Detect the panels (subfigures) of a compound figure with the YOLO subfigure detector; boxes "
            "in reading order.",
            {
                "type": "object",
                "properties": {
                    "model": {"type": "string", "minLength": 1,
                              "description": "detector checkpoint (.pt) or run folder from `pathasst train subfig`"},
                    "conf": {**unit, "default": 0.4, "description": "minimum detection confidence"},
                    "iou": {**unit, "default": 0.5, "description": "NMS IoU threshold"},
                    "contain": {**unit, "default": 0.8,
                                "description": "drop a panel lying this much inside a more confident one"},
                    "min_side": {"type": "integer", "minimum": 1, "default": 8,
                                 "description": "ignore panels narrower or lower than this (pixels)"},
                    "imgsz": {"type": "integer", "minimum": 32,
                              "description": "detector input size; default: the size it was trained at"},
                    "device": {"type": "string", "description": "cpu, 0, ...; default: first GPU if any"},
                },
                "required": ["model"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {
                    "count": {"type": "integer", "minimum": 0},
                    "panels": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                                         "description": "COCO [x, y, w, h] in image pixels"},
                                "confidence": unit,
                            },
                            "required": ["bbox", "confidence"],
                        },
                    },
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "model": {"type": "string"},
                },
                "required": ["count", "panels"],
            },
            _run_subfig,
            _needs("torch", "ultralytics", extra="detect"),
        ),
    ]


for _tool in _builtin_tools():
    register(_tool)
