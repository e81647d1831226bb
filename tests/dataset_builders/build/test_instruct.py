"""`pathasst build instruct`: shards of `generate instruct` -> one released PathInstruct folder.

Two shards (shard=1/2, shard=2/2) are generated from one PathCap folder against the local
OpenAI-compatible server with the scripted model, as N workers would make them; the build must
release every sample once, keep each sample's PathCap split, gather the generation ledgers, and
account for every input.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from pathasst.cli import main
from pathasst.dataset_builders.generate.scripted import answer
from pathasst.testing.openai_server import OpenAITestServer

from ..generate.conftest import pathcap  # noqa: F401 - the PathCap fixture of the generate tests


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def shards(pathcap, tmp_path_factory) -> list[Path]:  # noqa: F811 - the fixture imported above
    root = tmp_path_factory.mktemp("instruct_shards")
    folders = []
    with OpenAITestServer(answer) as server:
        for k in (1, 2):
            folder = root / f"shard{k}"
            rc, _, err = _cli("generate", "instruct", str(pathcap), "--out", str(folder),
                              f"endpoint.base_url={server.base_url}", "endpoint.model=scripted-model",
                              "endpoint.max_retries=1", "endpoint.timeout_s=5", f"shard={k}/2", "--no-progress")
            assert rc == 0, err
            folders.append(folder)
    return folders


def _rows(folder: Path) -> list[dict]:
    from pathasst.inputs import load_dataset_fresh

    ds = load_dataset_fresh(str(folder))
    return [dict(row, _split=split) for split in ds for row in ds[split].remove_columns("image")]


def test_shards_merge_into_one_folder_with_their_splits_and_ledgers(shards, tmp_path):
    out = tmp_path / "PathInstruct"
    llava = tmp_path / "llava" / "pathinstruct.json"
    rc, stdout, err = _cli("build", "instruct", *map(str, shards), "--out", str(out), "--export-llava", str(llava),
                           "--no-progress")
    assert rc == 0, err
    inputs = [row for folder in shards for row in _rows(folder)]
    released = _rows(out)
    assert len(inputs) > 0 and sorted(r["id"] for r in released) == sorted(r["id"] for r in inputs)
    assert {r["id"]: r["_split"] for r in released} == {r["id"]: r["_split"] for r in inputs}
    generation = [json.loads(line) for line in (out / "generation_rejects.jsonl").read_text().splitlines()]
    upstream = sum(len((f / "rejects.jsonl").read_text().splitlines()) for f in shards if (f / "rejects.jsonl").exists())
    assert len(generation) == upstream and all(item["input"] in ("shard1", "shard2") for item in generation)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounted"] and summary["statistics"]["samples"] == len(released)
    card = (out / "README.md").read_text()
    assert f"{len(released)} samples about" in card and "| scripted-model |" in card and "| tool |" in card
    assert json.loads(llava.read_text()) and f"{len(inputs)} samples in, {len(released)} released" in stdout


def test_overlapping_folders_and_filters_go_to_the_ledger(shards, tmp_path):
    import shutil

    copy = tmp_path / "shard1-again"  # an overlapping rerun: the same samples in another folder
    shutil.copytree(shards[0], copy)
    rc, _, err = _cli("build", "instruct", str(shards[0]), str(shards[0]), "--out", str(tmp_path / "twice"))
    assert rc == 2 and "given more than once" in err
    out = tmp_path / "dup"
    rc, _, err = _cli("build", "instruct", str(shards[0]), str(copy), "task_types=[description]",
                      "--out", str(out), "--no-progress")
    assert rc == 0, err
    ledger = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    first = _rows(shards[0])
    assert sum("duplicate id: already taken from shard1" in item["reason"] for item in ledger) == len(first)
    kept = _rows(out)
    assert kept and {r["task_type"] for r in kept} == {"description"}
    assert len(kept) + len(ledger) == 2 * len(first)


def test_bad_inputs_are_named(pathcap, tmp_path):  # noqa: F811
    rc, _, err = _cli("build", "instruct", str(pathcap), "--out", str(tmp_path / "x"))
    assert rc == 2 and "is not a PathInstruct folder" in err
    rc, _, err = _cli("build", "instruct", str(tmp_path / "missing"), "--out", str(tmp_path / "y"))
    assert rc == 2 and f"DATASET not found: {tmp_path / 'missing'}" in err
    rc, _, err = _cli("build", "instruct", str(pathcap), "task_types=[poetry]", "--out", str(tmp_path / "z"))
    assert rc == 2 and "task_types" in err
