"""Record contracts (DESIGN.md §4), defined once as ``datasets.Features`` plus the rules Features
cannot express (allowed values, nullability, fixed lengths), and a validator that names the record
and the field that break them.

Every stage that writes a dataset goes through :class:`DatasetSpec`, so a PathCap folder written by
the PDF extractor and one written by the deduplicator have exactly the same schema.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from pathasst.errors import RecordError

SOURCES = ("pubmed", "book", "web", "private")
TASK_TYPES = ("description", "conversation", "reasoning", "tool")
SUBFIG_CATEGORIES = ("subfigure", "panel_label")
SUBFIG_ORIGINS = ("annotated", "synthetic")
ROLES = ("system", "user", "assistant", "tool")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the writer and the validator need to know about one kind of dataset.

    Attributes:
        name: dataset kind, e.g. ``pathcap``.
        features: the Arrow/``datasets`` schema, field order included.
        key: field holding the record's unique id (what resume and the ledger count by).
        nullable: top-level fields that may be None.
        choices: allowed values per field (dotted paths reach inside lists of dicts).
        fixed_len: fields that are lists of a fixed length (``bbox``: 4).
        group: maps a record to its split group (article, book, site) so no group spans splits.
        description: first paragraph of the dataset card.
    """

    name: str
    features: Any
    key: str
    nullable: frozenset[str] = frozenset()
    choices: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    fixed_len: Mapping[str, int] = dataclasses.field(default_factory=dict)
    group: Callable[[Mapping[str, Any]], str] | None = None
    description: str = ""

    def group_of(self, record: Mapping[str, Any]) -> str:
        return self.group(record) if self.group else str(record[self.key])

    def validate(self, record: Mapping[str, Any]) -> None:
        """Raise :class:`RecordError` naming the record and field unless ``record`` fits the spec."""
        validate_record(self, record)


def pathcap_group(record: Mapping[str, Any]) -> str:
    """The split group of a PathCap record: the article, the book, the web site, the collection.

    ``source_id`` formats: PMCID (pubmed); ``<sha256>#p<page>`` (book); the page URL (web);
    ``<collection>/<item>`` (private).
    """
    source, source_id = record.get("source"), str(record.get("source_id", ""))
    if source == "book":
        return "book:" + source_id.split("#", 1)[0]
    if source == "web":
        return "web:" + (urlparse(source_id).hostname or source_id)
    if source == "private":
        return "private:" + source_id.split("/", 1)[0]
    return f"{source}:{source_id}"


def _features():
    # Imported lazily: `datasets` pulls in pyarrow and pandas, which `import pathasst` must not pay.
    from datasets import Features, Image, List, Value

    bbox = List(Value("float32"))  # COCO convention everywhere: [x, y, width, height] in pixels
    pathcap = Features(
        {
            "id": Value("string"),
            "image": Image(),
            "caption": Value("string"),
            "caption_raw": Value("string"),
            "source": Value("string"),
            "source_id": Value("string"),
            "figure_id": Value("string"),
            "subfigure_label": Value("string"),
            "bbox": bbox,
            "page": Value("int32"),
            "license": Value("string"),
            "pathology_score": Value("float32"),
            "width": Value("int32"),
            "height": Value("int32"),
            "phash": Value("string"),
            # provenance kept by the extractors (issue 3): the printed label ("Figure 2.5"), the
            # figure's box on its page in PDF points, the licence URL, the non-commercial flag a
            # release filters on, and source-specific extras as a JSON object (doi, pmid, dpi, ...)
            "figure_label": Value("string"),
            "page_bbox": bbox,
            "license_url": Value("string"),
            "noncommercial": Value("bool"),
            "meta": Value("string"),
        }
    )
    pathsubfig = Features(
        {
            "image_id": Value("string"),
            "image": Image(),
            "width": Value("int32"),
            "height": Value("int32"),
            "objects": List({"bbox": bbox, "category": Value("string")}),
            "origin": Value("string"),
        }
    )
    # Chat messages as transformers' apply_chat_template(tools=...) reads them: an assistant turn
    # may carry `tool_calls` (OpenAI shape; `arguments` stored as a JSON string because argument
    # objects differ in shape per tool: json.loads it before rendering), a tool turn carries the
    # called tool's `name` and the `tool_call_id` it answers. Both are null on other turns.
    message = {
        "role": Value("string"),
        "content": List({"type": Value("string"), "text": Value("string")}),
        "tool_calls": List({
            "id": Value("string"),
            "type": Value("string"),
            "function": {"name": Value("string"), "arguments": Value("string")},
        }),
        "name": Value("string"),
        "tool_call_id": Value("string"),
    }
    pathinstruct = Features(
        {
            "id": Value("string"),
            "image": Image(),
            "messages": List(message),
            "task_type": Value("string"),
            "tools": List(Value("string")),  # each a JSON schema, serialised: schemas differ in shape
            "figure_id": Value("string"),
            "generator": Value("string"),
        }
    )
    results = Features(
        {
            "model_id": Value("string"),
            "model_revision": Value("string"),
            "task_name": Value("string"),
            "task_version": Value("string"),
            "dataset_id": Value("string"),
            "dataset_revision": Value("string"),
            "split": Value("string"),
            "metric": Value("string"),
            "value": Value("float64"),
            "stderr": Value("float64"),
            "ci_low": Value("float64"),
            "ci_high": Value("float64"),
            "n": Value("int64"),
            "seed": Value("int64"),
            "suite_version": Value("string"),
            "config_hash": Value("string"),
            "date": Value("string"),
        }
    )
    return pathcap, pathsubfig, pathinstruct, results


_SPECS: dict[str, DatasetSpec] | None = None


def specs() -> dict[str, DatasetSpec]:
    """All record contracts by name: ``pathcap``, ``pathsubfig``, ``pathinstruct``, ``results``."""
    global _SPECS
    if _SPECS is None:
        pathcap, pathsubfig, pathinstruct, results = _features()
        _SPECS = {
            "pathcap": DatasetSpec(
                name="pathcap",
                features=pathcap,
                key="id",
                nullable=frozenset({
                    "subfigure_label", "bbox", "page", "pathology_score", "phash",
                    "figure_label", "page_bbox", "license_url", "noncommercial", "meta",
                }),
                choices={"source": SOURCES},
                fixed_len={"bbox": 4, "page_bbox": 4},
                group=pathcap_group,
                description="Pathology image-caption pairs (figure- and subfigure-level).",
            ),
            "pathsubfig": DatasetSpec(
                name="pathsubfig",
                features=pathsubfig,
                key="image_id",
                choices={"origin": SUBFIG_ORIGINS, "objects.category": SUBFIG_CATEGORIES},
                fixed_len={"objects.bbox": 4},
                description="Compound pathology figures with subfigure and panel-label boxes (COCO xywh).",
            ),
            "pathinstruct": DatasetSpec(
                name="pathinstruct",
                features=pathinstruct,
                key="id",
                nullable=frozenset({"image", "figure_id", "messages.content.text", "messages.tool_calls",
                                    "messages.name", "messages.tool_call_id"}),
                choices={
                    "task_type": TASK_TYPES,
                    "messages.role": ROLES,
                    "messages.content.type": ("image", "text"),
                },
                description="Pathology instruction-following dialogues, tool invocations included.",
            ),
            "results": DatasetSpec(
                name="results",
                features=results,
                key="config_hash",
                nullable=frozenset({"stderr", "ci_low", "ci_high", "model_revision", "dataset_revision"}),
                description="Benchmark results, one row per (model, task, metric).",
            ),
        }
    return _SPECS


def get_spec(name: str) -> DatasetSpec:
    try:
        return specs()[name]
    except KeyError:
        raise RecordError(f"unknown dataset kind '{name}'; known: {', '.join(specs())}") from None


# --- validation -------------------------------------------------------------------------------

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "large_string": (str,),
    "bool": (bool,),
    "float16": (int, float),
    "float32": (int, float),
    "float64": (int, float),
}


def _check_value(dtype: str, value: Any) -> str | None:
    if dtype.startswith(("int", "uint")):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and dtype.startswith("uint") and value < 0:
            return f"expected a non-negative integer, got {value}"
        return None if ok else f"expected an integer, got {type(value).__name__} {value!r:.60}"
    expected = _PY_TYPES.get(dtype)
    if expected is None:
        return None
    if isinstance(value, bool) and dtype != "bool":
        return f"expected {dtype}, got bool"
    if not isinstance(value, expected):
        return f"expected {dtype}, got {type(value).__name__} {value!r:.60}"
    return None


def _check_image(value: Any) -> str | None:
    from PIL import Image as PILImage

    if isinstance(value, (bytes, bytearray, PILImage.Image)):
        return None
    if isinstance(value, (str, os.PathLike)):
        return None if Path(value).is_file() else f"image file not found: {value}"
    if isinstance(value, Mapping) and set(value) <= {"bytes", "path"}:
        if value.get("bytes") is not None:
            return None
        if value.get("path") and Path(value["path"]).is_file():
            return None
        return "image dict has neither bytes nor an existing path"
    return f"expected image bytes, a PIL image, a path or {{'bytes', 'path'}}, got {type(value).__name__}"


def record_errors(spec: DatasetSpec, record: Mapping[str, Any]) -> list[str]:
    """Every way ``record`` breaks ``spec``, as messages naming the field; empty when valid."""
    # imported once per call, not per field: the walk below is on the writer's hot path
    from datasets import Image, List, Sequence, Value

    errors: list[str] = []

    def walk(feature: Any, value: Any, path: str) -> None:
        if value is None:
            if path not in spec.nullable:
                errors.append(f"field '{path}': is None but may not be null")
            return
        if isinstance(feature, dict):
            if not isinstance(value, Mapping):
                errors.append(f"field '{path}': expected a mapping, got {type(value).__name__}")
                return
            for name, sub in feature.items():
                sub_path = f"{path}.{name}" if path else name
                if name in value:
                    walk(sub, value[name], sub_path)
                elif sub_path not in spec.nullable:  # a nullable nested key may be left out
                    errors.append(f"field '{sub_path}': missing")
            extra = sorted(set(value) - set(feature))
            if extra:
                where = f" in '{path}'" if path else ""
                errors.append(f"unknown field(s) {', '.join(repr(e) for e in extra)}{where}")
        elif isinstance(feature, (List, Sequence)):
            if not isinstance(value, (list, tuple)):
                errors.append(f"field '{path}': expected a list, got {type(value).__name__}")
                return
            n = spec.fixed_len.get(path)
            if n is not None and len(value) != n:
                errors.append(f"field '{path}': expected {n} values, got {len(value)}")
            for item in value:  # items share the list's path: `objects.bbox`, `messages.role`
                walk(feature.feature, item, path)
        elif isinstance(feature, Image):
            problem = _check_image(value)
            if problem:
                errors.append(f"field '{path}': {problem}")
        elif isinstance(feature, Value):
            problem = _check_value(feature.dtype, value)
            allowed = spec.choices.get(path)
            if problem:
                errors.append(f"field '{path}': {problem}")
            elif allowed is not None and value not in allowed:
                errors.append(f"field '{path}': {value!r} is not one of {', '.join(allowed)}")

    walk(dict(spec.features), record, "")
    return errors


def validate_record(spec: DatasetSpec, record: Mapping[str, Any], where: str = "") -> None:
    """Raise :class:`RecordError` naming the record and every offending field."""
    errors = record_errors(spec, record)
    if errors:
        rid = record.get(spec.key, "?") if isinstance(record, Mapping) else "?"
        loc = f" ({where})" if where else ""
        raise RecordError(f"{spec.name} record '{rid}'{loc} is invalid: " + "; ".join(errors))


def image_to_bytes(value: Any) -> dict[str, Any]:
    """Encode any accepted image value as ``{'bytes', 'path'}`` with the bytes embedded.

    Files are embedded as they are (no re-encoding); PIL images are saved in their own format when
    they have one, PNG otherwise.
    """
    from PIL import Image as PILImage

    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, (str, os.PathLike)):
        return {"bytes": Path(value).read_bytes(), "path": Path(value).name}
    if isinstance(value, PILImage.Image):
        buf = io.BytesIO()
        fmt = value.format if value.format in ("PNG", "JPEG", "WEBP", "TIFF") else "PNG"
        value.save(buf, format=fmt)
        return {"bytes": buf.getvalue(), "path": None}
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return {"bytes": bytes(value["bytes"]), "path": value.get("path")}
        return image_to_bytes(value["path"]) | {"path": Path(value["path"]).name}
    raise RecordError(f"cannot embed image of type {type(value).__name__}")
