"""Reading a task's evaluation data: by Hub id (with revision) or from a local folder (``--dataset``).

Local folders may be dataset folders (``README.md`` + Parquet, what ``datasets.load_dataset``
reads), ImageFolders (one subfolder per class) or image-text folders (images + ``metadata.jsonl``,
datasets' ``imagefolder`` builder). Every column a task reads is checked before any model runs:
a missing column is one clear error naming the task, the role, the column and the columns present.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pathasst.errors import InputError

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


@dataclass
class EvalData:
    """One split of a task's data, checked.

    Attributes:
        ds: the ``datasets.Dataset`` (filtered by the task's ``select``).
        dataset_id: Hub id, or ``local:<folder name>`` for a local folder.
        revision: the Hub revision asked for (None when not pinned) or ``sha256:<12 hex>`` of a
            local folder's file names and sizes.
        split: the split read.
        ids: one string id per row (the ``id`` column when the task names one, else the row index).
        n_total: rows before the task's ``select`` filter.
    """

    ds: Any
    dataset_id: str
    revision: Optional[str]
    split: str
    ids: list[str]
    n_total: int


def folder_revision(path: Path) -> str:
    """``sha256:`` of every file's relative path and size: cheap on large folders, changes when a
    file is added, removed or rewritten with another size (the results record which copy ran)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and ".cache" not in p.parts:
            h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\n".encode())
    return "sha256:" + h.hexdigest()[:12]


def _is_image_folder(path: Path) -> bool:
    """Class subfolders of images, or images with a metadata.jsonl: datasets' imagefolder layout."""
    if (path / "README.md").exists() or list(path.glob("data/*.parquet")) or list(path.glob("*.parquet")):
        return False
    return any(p.suffix.lower() in _IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file())


def _load_local(path: Path, split: Optional[str]):
    from datasets import DatasetDict, load_dataset

    from pathasst.inputs import load_dataset_fresh

    try:
        if _is_image_folder(path):
            ds = load_dataset("imagefolder", data_dir=str(path))
        else:
            ds = load_dataset_fresh(str(path))  # never a stale cached copy of a rebuilt folder
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds for "not a dataset"
        raise InputError(f"--dataset {path}: cannot read it as a dataset or ImageFolder "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
    if not isinstance(ds, DatasetDict):
        ds = DatasetDict({"train": ds})
    return ds


def _pick_split(ds, wanted: Optional[str], default: str, where: str) -> str:
    if wanted:
        if wanted not in ds:
            raise InputError(f"{where}: no split '{wanted}' (splits: {', '.join(ds)})")
        return wanted
    if default in ds:
        return default
    if len(ds) == 1:
        return next(iter(ds))
    raise InputError(f"{where}: no split '{default}' and several others ({', '.join(ds)}): pass --split")


def load_eval_data(task, dataset: Optional[str] = None, *, split: Optional[str] = None,
                   revision: Optional[str] = None, columns: Optional[dict[str, str]] = None) -> EvalData:
    """The task's evaluation split, from ``dataset`` (local folder) or the task's Hub id.

    Args:
        task: a :class:`~pathasst.benchmarks.registry.Task`.
        dataset: a local folder overriding the Hub id (required for tasks without one).
        split: overrides the task's split.
        revision: Hub revision to load (recorded); overrides the task's pinned one.
        columns: role -> column overrides (``--text-column`` etc.).

    Raises:
        InputError: no data source, unreadable data, unknown split, missing column.
    """
    cols = dict(task.columns) | dict(columns or {})
    if dataset:
        path = Path(dataset).expanduser()
        if not path.exists():
            raise InputError(f"--dataset {dataset}: no such folder")
        dsd = _load_local(path, split)
        where = f"--dataset {dataset}"
        chosen = _pick_split(dsd, split, task.dataset.get("split") or "test", where)
        ds = dsd[chosen]
        dataset_id, rev = f"local:{path.resolve().name}", folder_revision(path)
    else:
        hub_id = task.dataset.get("id")
        if not hub_id:
            raise InputError(f"task {task.name} has no Hub dataset ({task.dataset.get('revision_note', '').strip()}); "
                             "pass a local copy with --dataset FOLDER")
        from datasets import load_dataset

        rev = revision or task.dataset.get("revision")
        chosen = split or task.dataset.get("split")
        try:
            ds = load_dataset(hub_id, task.dataset.get("config"), split=chosen, revision=rev)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"task {task.name}: cannot load {hub_id} (split {chosen}, revision {rev or 'latest'}): "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}; "
                             "offline, pass a local copy with --dataset FOLDER") from None
        where = f"{hub_id} [{chosen}]"
        dataset_id = hub_id
    present = list(ds.column_names)
    missing = {role: col for role, col in cols.items() if col not in present and not (role == "id")}
    if missing:
        desc = ", ".join(f"'{c}' (the task's {r} column)" for r, c in missing.items())
        raise InputError(f"task {task.name}: {where} has no column {desc}; columns present: {', '.join(present)}. "
                         "Rename the column in the data or pass the matching --*-column option")
    n_total = len(ds)
    ds = _apply_select(ds, task.raw.get("select"), cols, task.name)
    if "id" in cols and cols["id"] in present:
        ids = [str(v) for v in ds[cols["id"]]]
    else:
        ids = [str(i) for i in range(len(ds))]
    if len(ds) == 0:
        raise InputError(f"task {task.name}: {where} has no rows to evaluate (after the task's select: {task.raw.get('select')})")
    return EvalData(ds=ds, dataset_id=dataset_id, revision=rev, split=chosen, ids=ids, n_total=n_total)


def _apply_select(ds, select: Optional[dict], cols: dict[str, str], task_name: str):
    """Row filters a task declares: ``answer_in`` / ``answer_not_in`` (normalised answer text) and
    ``column_equals`` ({role or column: value}, case-insensitive)."""
    if not select:
        return ds
    from pathasst.benchmarks.metrics import normalize_answer

    keep = None
    answers = None
    if "answer_in" in select or "answer_not_in" in select:
        answers = [normalize_answer(str(a)) for a in ds[cols["answer"]]]
    if "answer_in" in select:
        allowed = {normalize_answer(a) for a in select["answer_in"]}
        keep = [a in allowed for a in answers]
    if "answer_not_in" in select:
        banned = {normalize_answer(a) for a in select["answer_not_in"]}
        keep2 = [a not in banned for a in answers]
        keep = keep2 if keep is None else [x and y for x, y in zip(keep, keep2)]
    for key, value in (select.get("column_equals") or {}).items():
        col = cols.get(key, key)
        if col not in ds.column_names:
            raise InputError(f"task {task_name}: select needs column '{col}'; columns present: {', '.join(ds.column_names)}")
        keep3 = [str(v).strip().lower() == str(value).strip().lower() for v in ds[col]]
        keep = keep3 if keep is None else [x and y for x, y in zip(keep, keep3)]
    if keep is None:
        return ds
    return ds.select([i for i, k in enumerate(keep) if k])


def label_names(ds, column: str) -> Optional[list[str]]:
    """ClassLabel names of ``column``, or None when it holds raw values."""
    feat = ds.features.get(column)
    return list(feat.names) if hasattr(feat, "names") else None


def label_strings(ds, column: str) -> list[str]:
    """Every row's label as a string: ClassLabel names, booleans as "0"/"1", others as str()."""
    names = label_names(ds, column)
    out = []
    for v in ds[column]:
        if names is not None and isinstance(v, int):
            out.append(names[v])
        elif isinstance(v, bool):
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def readable_name(label: str) -> str:
    """Folder-style label as words: ``lung_aca`` -> ``lung aca``."""
    return " ".join(label.replace("_", " ").replace("-", " ").split())
