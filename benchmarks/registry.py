"""The task registry: every benchmark task is one YAML file in ``benchmarks/tasks/`` (DESIGN.md §9.5).

A task file states everything a score depends on: the dataset (Hub id, revision, config, split),
the columns read, class names and prompt ensembles, the generation settings and prompts of VQA
tasks, the metrics and the conventions behind them. Code reads these files; it never decides by a
task's name.

Each task has a human ``version`` and a content hash: ``task_version`` = ``"<version>+<sha8>"``,
where the hash covers the whole parsed file (and the prompt ensemble it names). Editing any field
changes the hash, so a result computed under an edited task can never pass as the official one
(``pathasst bench validate`` compares them).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Optional

from pathasst.errors import ConfigError

KINDS = ("zeroshot", "retrieval", "vqa_closed", "vqa_open", "multiple_choice", "component")
#: metric names each kind may list (the runner computes exactly these)
KIND_METRICS: dict[str, frozenset[str]] = {
    "zeroshot": frozenset({"accuracy", "balanced_accuracy", "weighted_f1"}),
    "retrieval": frozenset(f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10, 50)),
    "vqa_closed": frozenset({"closed_accuracy_keyword", "closed_accuracy_strict"}),
    "vqa_open": frozenset({"open_token_recall", "exact_match", "token_f1", "bleu_1", "bleu_2", "bleu_3"}),
    "multiple_choice": frozenset({"mc_accuracy"}),
    "component": frozenset({
        "auroc", "accuracy", "balanced_accuracy", "weighted_f1", "map50", "map50_95",
        "subcaption_precision", "subcaption_recall", "subcaption_f1", "pairing_precision", "pairing_recall",
    }),
}
#: columns each kind must name (task ``columns`` maps role -> dataset column)
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "zeroshot": ("image", "label"),
    "retrieval": ("image", "text"),
    "vqa_closed": ("image", "question", "answer"),
    "vqa_open": ("image", "question", "answer"),
    "multiple_choice": ("image", "question", "options", "answer"),
    "component": (),
}
_REQUIRED = ("name", "version", "kind", "title", "dataset", "columns", "metrics", "notes")
_OPTIONAL = (
    "classes", "prompts", "prompt", "generation", "select", "parser", "citation", "generic", "component",
    "positive_labels", "class_names_note", "runner", "default_model", "match_threshold",
)
# packaged: ``package:relative/path`` of a data file shipped with pathasst, the task's default local data
_DATASET_KEYS = ("id", "config", "revision", "revision_note", "split", "split_note", "packaged")


@dataclass(frozen=True)
class ClassSpec:
    """One class of a zero-shot task: the dataset's label value and the names prompts use."""

    label: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """A parsed, validated task file.

    Attributes:
        name: registry key (the file name without ``.yaml``).
        version: human version, bumped on purpose when the task changes meaning.
        task_version: ``"<version>+<sha8>"``, the version results are recorded under.
        kind: one of :data:`KINDS`.
        dataset: ``id`` (Hub id or None), ``config``, ``revision`` (None unless pinned), ``split``, notes.
        columns: role -> dataset column (``image``, ``label``, ``text``, ``question``, ...).
        metrics: the metric names reported, in order.
        classes: zero-shot classes (None when they come from the data: generic tasks).
        templates: prompt templates of zero-shot tasks (``{}`` = class name).
        raw: the parsed file, for everything else (prompt, generation, select, parser, notes).
    """

    name: str
    version: int
    task_version: str
    kind: str
    title: str
    dataset: Mapping[str, Any]
    columns: Mapping[str, str]
    metrics: tuple[str, ...]
    classes: Optional[tuple[ClassSpec, ...]] = None
    templates: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def generic(self) -> bool:
        return bool(self.raw.get("generic"))

    @property
    def notes(self) -> str:
        return str(self.raw.get("notes") or "")


def _task_files() -> dict[str, Any]:
    root = resources.files("pathasst.benchmarks.tasks")
    return {p.name[:-5]: p for p in root.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_")}


@lru_cache(maxsize=1)
def prompt_ensembles() -> dict[str, Any]:
    """Named prompt ensembles (``tasks/_prompts.yaml``)."""
    import yaml

    text = resources.files("pathasst.benchmarks.tasks").joinpath("_prompts.yaml").read_text()
    return yaml.safe_load(text)


def list_tasks() -> list[str]:
    """Every registered task name, sorted."""
    return sorted(_task_files())


def version_hash(data: Mapping[str, Any]) -> str:
    """First 8 hex digits of the sha256 of the task's canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:8]


def parse_task(data: Any, where: str) -> Task:
    """Validate a task mapping and build a :class:`Task`.

    Raises:
        ConfigError: naming ``where`` and the key for every problem found.
    """
    errors: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a task file must be a mapping, got {type(data).__name__}")
    for key in _REQUIRED:
        if key not in data:
            errors.append(f"missing key '{key}'")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        errors.append(f"unknown key(s) {', '.join(unknown)}")
    kind = data.get("kind")
    if kind not in KINDS:
        errors.append(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(data.get("version"), int) or isinstance(data.get("version"), bool):
        errors.append(f"version must be an integer, got {data.get('version')!r}")
    ds = data.get("dataset")
    if not isinstance(ds, Mapping):
        errors.append("dataset must be a mapping with id, revision, split")
        ds = {}
    else:
        for key in ("id", "revision", "split"):
            if key not in ds:
                errors.append(f"dataset.{key} is missing (write null when unknown, with a revision_note)")
        extra = sorted(set(ds) - set(_DATASET_KEYS))
        if extra:
            errors.append(f"unknown dataset key(s) {', '.join(extra)}")
        if ds.get("revision") is None and not ds.get("revision_note"):
            errors.append("dataset.revision is null: add dataset.revision_note saying why")
    columns = data.get("columns")
    if not isinstance(columns, Mapping):
        errors.append("columns must be a mapping role -> column")
        columns = {}
    for role in KIND_COLUMNS.get(kind, ()):
        if role not in columns:
            errors.append(f"columns.{role} is missing (kind {kind} reads it)")
    metrics = data.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        errors.append("metrics must be a non-empty list")
        metrics = []
    elif kind in KIND_METRICS:
        bad = [m for m in metrics if m not in KIND_METRICS[kind]]
        if bad:
            errors.append(f"metric(s) {', '.join(bad)} are not computed for kind {kind} "
                          f"(known: {', '.join(sorted(KIND_METRICS[kind]))})")
    if kind == "zeroshot":
        for m in ("accuracy", "balanced_accuracy", "weighted_f1"):
            if m not in metrics:
                errors.append(f"zero-shot tasks report accuracy, balanced_accuracy and weighted_f1 always: {m} missing")

    classes = None
    templates: tuple[str, ...] = ()
    if kind == "zeroshot":
        raw_classes = data.get("classes")
        if raw_classes == "from_data":
            classes = None
        elif not isinstance(raw_classes, list) or not raw_classes:
            errors.append("classes must be a list of {label, names} or 'from_data'")
        else:
            parsed = []
            for i, item in enumerate(raw_classes):
                if not isinstance(item, Mapping) or "label" not in item or not item.get("names"):
                    errors.append(f"classes[{i}] needs label and a non-empty names list")
                    continue
                parsed.append(ClassSpec(str(item["label"]), tuple(str(n) for n in item["names"])))
            labels = [c.label for c in parsed]
            if len(set(labels)) != len(labels):
                errors.append(f"classes: duplicate labels {labels}")
            classes = tuple(parsed)
        prompts = data.get("prompts")
        if isinstance(prompts, str):
            ensembles = prompt_ensembles()
            if prompts not in ensembles:
                errors.append(f"prompts={prompts!r} is not a named ensemble ({', '.join(ensembles)})")
            else:
                templates = tuple(ensembles[prompts]["templates"])
        elif isinstance(prompts, list) and prompts:
            templates = tuple(str(t) for t in prompts)
        else:
            errors.append("prompts must name an ensemble of _prompts.yaml or list templates")
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            errors.append(f"prompt template(s) need exactly one '{{}}': {bad}")
    if kind in ("vqa_closed", "vqa_open", "multiple_choice"):
        prompt = data.get("prompt")
        if not isinstance(prompt, Mapping) or "{question}" not in str(prompt.get("template", "")):
            errors.append("prompt.template must hold {question}")
        elif kind == "multiple_choice" and "{options}" not in prompt["template"]:
            errors.append("prompt.template of a multiple-choice task must hold {options}")
        if not isinstance(data.get("generation"), Mapping):
            errors.append("generation settings (max_new_tokens, do_sample) must be stated")
    if errors:
        raise ConfigError(f"task file {where} is invalid: " + "; ".join(errors))

    hashed = dict(data)
    if isinstance(data.get("prompts"), str):  # the ensemble's text is part of the task
        hashed["prompts"] = {"name": data["prompts"], "templates": list(templates)}
    return Task(
        name=str(data["name"]),
        version=int(data["version"]),
        task_version=f"{data['version']}+{version_hash(hashed)}",
        kind=kind,
        title=str(data["title"]),
        dataset=dict(ds),
        columns=dict(columns),
        metrics=tuple(metrics),
        classes=classes,
        templates=templates,
        raw=dict(data),
    )


@lru_cache(maxsize=None)
def _load(name: str) -> Task:
    import yaml

    path = _task_files()[name]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"task file {name}.yaml is not valid YAML: {exc}") from None
    task = parse_task(data, f"{name}.yaml")
    if task.name != name:
        raise ConfigError(f"task file {name}.yaml declares name={task.name!r}; they must agree")
    return task


def get_task(name: str) -> Task:
    """The task ``name``.

    Raises:
        ConfigError: unknown name; the message lists the closest registered names.
    """
    files = _task_files()
    if name not in files:
        close = difflib.get_close_matches(name, list(files), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown task '{name}'{hint} (`pathasst bench list` shows all {len(files)} tasks)")
    return _load(name)


def all_tasks() -> list[Task]:
    return [get_task(n) for n in list_tasks()]
