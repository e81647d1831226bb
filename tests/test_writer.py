"""The dataset writer: Hub-ready folders, the ledger, splits by group, resume, locks, failures."""

import errno
import io
import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from pathasst.errors import OutputError
from pathasst.records import get_spec
from pathasst.writer import DatasetWriter, assign_split

SPEC = get_spec("pathcap")


def png(seed: int, size: int = 32) -> bytes:
    rng = np.random.RandomState(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def record(i: int, group: str | None = None, **changes):
    rec = {
        "id": f"fig-{i}",
        "image": png(i),
        "caption": f"H&E section {i}",
        "caption_raw": f"H&E section {i}",
        "source": "pubmed",
        "source_id": group or f"PMC{i % 23}",
        "figure_id": f"F{i}",
        "subfigure_label": None,
        "bbox": None,
        "page": None,
        "license": "CC BY 4.0",
        "pathology_score": None,
        "width": 32,
        "height": 32,
        "phash": None,
    }
    rec.update(changes)
    return rec


def load(folder):
    from datasets import load_dataset

    return load_dataset(str(folder))


def all_ids(folder):
    return [r for split in load(folder).values() for r in split["id"]]


def test_folder_loads_with_datasets_and_has_card(tmp_path):
    out = tmp_path / "ds"
    with DatasetWriter(out, SPEC, config={"a": 1}, max_shard_records=10) as w:
        for i in range(60):
            w.add(record(i))
        summary = w.finalize()
    ds = load(out)
    assert sum(len(s) for s in ds.values()) == 60 == summary.total_records
    assert set(ds) == {k for k, v in summary.records.items() if v}
    row = ds["train"][0]
    assert row["image"].size == (32, 32)
    assert ds["train"].features == SPEC.features
    card = (out / "README.md").read_text()
    assert "configs:" in card and "dataset_info:" in card and "num_examples" in card
    files = sorted(p.name for p in (out / "data").iterdir())
    assert all(f.endswith(".parquet") and "-of-" in f for f in files)
    n_train = len([f for f in files if f.startswith("train-")])
    assert f"train-00000-of-{n_train:05d}.parquet" in files
    assert (out / "config.yaml").exists()


def test_every_input_is_written_or_rejected_with_reason(tmp_path):
    out = tmp_path / "ds"
    inputs = [record(i) for i in range(20)]
    inputs.append(record(5))  # duplicate id
    inputs.append(record(99, source="arxiv"))  # not an allowed source
    inputs.append({k: v for k, v in record(100).items() if k != "caption"})
    with DatasetWriter(out, SPEC, config={}) as w:
        for rec in inputs:
            w.add(rec)
        w.reject("fig-200", "no caption: caption not found near figure", page=3)
        summary = w.finalize()
    ledger = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert summary.total_records + summary.rejected == len(inputs) + 1
    assert summary.total_records == 20 and len(ledger) == 4
    reasons = {item["id"]: item["reason"] for item in ledger}
    assert reasons["fig-5"] == "duplicate id"
    assert "field 'source'" in reasons["fig-99"] and "arxiv" in reasons["fig-99"]
    assert "field 'caption': missing" in reasons["fig-100"]
    assert ledger[-1] == {"id": "fig-200", "reason": "no caption: caption not found near figure", "page": 3}
    assert summary.reject_reasons == {"invalid record": 2, "duplicate id": 1, "no caption": 1}


def test_no_group_spans_two_splits(tmp_path):
    out = tmp_path / "ds"
    with DatasetWriter(out, SPEC, config={}, max_shard_records=7) as w:
        for i in range(300):
            w.add(record(i, group=f"PMC{i % 40}"))
        w.finalize()
    seen: dict[str, set] = {}
    for split, part in load(out).items():
        for sid in part["source_id"]:
            seen.setdefault(sid, set()).add(split)
    assert len(seen) == 40
    assert all(len(s) == 1 for s in seen.values())
    assert len({next(iter(s)) for s in seen.values()}) == 3  # 40 groups reach all three splits


def test_split_assignment_is_stable_and_follows_ratios():
    ratios = {"train": 0.8, "validation": 0.1, "test": 0.1}
    draws = [assign_split(f"group-{i}", ratios) for i in range(20000)]
    assert draws == [assign_split(f"group-{i}", ratios) for i in range(20000)]
    assert abs(draws.count("train") / 20000 - 0.8) < 0.02
    assert assign_split("x", {"train": 1.0, "test": 0.0}) == "train"
    assert [assign_split(f"g{i}", ratios, salt="other") for i in range(50)] != draws[:50]


def test_unit_commits_all_or_nothing(tmp_path):
    out = tmp_path / "ds"
    w = DatasetWriter(out, SPEC, config={})
    with w.unit("book.pdf"):
        w.add(record(1, group="book"))
        w.add(record(2, group="book"))
        w.reject("book.pdf#fig3", "no caption: figure without caption")
    with pytest.raises(RuntimeError):
        with w.unit("broken.pdf"):
            w.add(record(3))
            raise RuntimeError("extractor crashed")
    assert w.is_done("book.pdf") and not w.is_done("broken.pdf")
    summary = w.finalize()
    assert summary.total_records == 2 and summary.rejected == 1
    assert sorted(all_ids(out)) == ["fig-1", "fig-2"]


def test_rerun_resumes_without_duplicates(tmp_path):
    out = tmp_path / "ds"
    config = {"source": "x"}
    with DatasetWriter(out, SPEC, config=config, max_shard_records=5) as w:
        for i in range(23):
            w.add(record(i))
    # the run stopped before finalize (Ctrl-C keeps finished units): the same command continues
    with DatasetWriter(out, SPEC, config=config, max_shard_records=5) as w:
        skipped = 0
        for i in range(40):
            if w.is_done(f"fig-{i}"):
                skipped += 1
                continue
            w.add(record(i))
        summary = w.finalize()
    assert skipped == 23
    ids = all_ids(out)
    assert len(ids) == len(set(ids)) == 40 == summary.total_records
    # a finalized folder can be reopened and finalized again with no change
    with DatasetWriter(out, SPEC, config=config, max_shard_records=5) as w:
        assert w.is_done("fig-39")
        again = w.finalize()
    assert sorted(again.shards) == sorted(summary.shards)
    assert sorted(all_ids(out)) == sorted(ids)


KILL_SCRIPT = textwrap.dedent(
    """
    import io, sys, time
    import numpy as np
    from PIL import Image
    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    out, n = sys.argv[1], int(sys.argv[2])
    slow = len(sys.argv) > 3
    def png(i):
        b = io.BytesIO()
        Image.fromarray((np.random.RandomState(i).rand(32, 32, 3) * 255).astype("uint8")).save(b, "PNG")
        return b.getvalue()
    with DatasetWriter(out, get_spec("pathcap"), config={"n": n}, max_shard_records=8) as w:
        for i in range(n):
            key = f"fig-{i}"
            if w.is_done(key):
                continue
            if i % 10 == 9:
                w.reject(key, "no caption: synthetic rejection")
            else:
                w.add({"id": key, "image": png(i), "caption": "c", "caption_raw": "c", "source": "web",
                       "source_id": f"https://site{i % 13}.example/page{i}", "figure_id": key,
                       "subfigure_label": None, "bbox": None, "page": None, "license": "CC0",
                       "pathology_score": None, "width": 32, "height": 32, "phash": None})
            if slow:
                time.sleep(0.01)
        w.finalize()
    """
)


@pytest.mark.slow
def test_kill_minus_nine_then_rerun_loses_nothing_and_duplicates_nothing(tmp_path):
    script = tmp_path / "write.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "ds"
    n = 400
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(n), "slow"])
    manifest = out / ".pathasst" / "manifest.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = json.loads(manifest.read_text())
    assert committed["status"] == "running" and len(committed["shards"]) >= 6
    rerun = subprocess.run([sys.executable, str(script), str(out), str(n)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    ids = all_ids(out)
    rejected = [json.loads(line)["id"] for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 360
    assert len(rejected) == len(set(rejected)) == 40
    assert set(ids) | set(rejected) == {f"fig-{i}" for i in range(n)}
    assert not [p for p in (out / "data").iterdir() if p.suffix == ".tmp"]


def test_second_run_on_same_folder_is_refused_while_first_runs(tmp_path):
    out = tmp_path / "ds"
    first = DatasetWriter(out, SPEC, config={}, command="pathasst extract pdf books/ --out ds")
    with pytest.raises(OutputError, match=r"in use by another run \(pid \d+ .*pathasst extract pdf books/"):
        DatasetWriter(out, SPEC, config={})
    first.finalize()
    DatasetWriter(out, SPEC, config={}).finalize()  # free again once the first has finished


def test_different_config_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "ds"
    with DatasetWriter(out, SPEC, config={"threshold": 0.5}) as w:
        w.add(record(1))
        w.finalize()
    with pytest.raises(OutputError, match="different config.*--resume.*--overwrite"):
        DatasetWriter(out, SPEC, config={"threshold": 0.7})
    with DatasetWriter(out, SPEC, config={"threshold": 0.7}, resume=True) as w:
        assert w.is_done("fig-1")
        w.add(record(2))
        assert w.finalize().total_records == 2
    with DatasetWriter(out, SPEC, config={"threshold": 0.9}, overwrite=True) as w:
        assert not w.is_done("fig-1")
        w.add(record(3))
        w.finalize()
    assert all_ids(out) == ["fig-3"]


def test_folder_with_foreign_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty and holds no pathasst run.*notes.txt"):
        DatasetWriter(tmp_path, SPEC, config={})
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write to output folder"):
        DatasetWriter(blocker / "ds", SPEC, config={})


def test_disk_full_keeps_committed_records_and_rerun_completes(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    out = tmp_path / "ds"
    real_write = pq.ParquetWriter.write_table
    calls = {"n": 0}

    def failing_write(self, table, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing_write)
    w = DatasetWriter(out, SPEC, config={}, max_shard_records=4)
    with pytest.raises(OutputError, match="disk full .* records committed before are safe"):
        with w:
            for i in range(50):
                w.add(record(i, group="one-group"))
    manifest = json.loads((out / ".pathasst" / "manifest.json").read_text())
    committed = sum(s["num_records"] for s in manifest["shards"])
    assert committed >= 4
    assert not [p for p in (out / "data").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(pq.ParquetWriter, "write_table", real_write)
    with DatasetWriter(out, SPEC, config={}, max_shard_records=4) as w:
        for i in range(50):
            if not w.is_done(f"fig-{i}"):
                w.add(record(i, group="one-group"))
        w.finalize()
    ids = all_ids(out)
    assert len(ids) == len(set(ids)) == 50


def test_crash_during_final_renames_is_completed_on_reopen(tmp_path, monkeypatch):
    import os as os_module

    out = tmp_path / "ds"
    w = DatasetWriter(out, SPEC, config={}, max_shard_records=3)
    for i in range(12):
        w.add(record(i, group="g"))
    real_replace = os_module.replace
    calls = {"n": 0}

    def flaky_replace(src, dst):
        if str(dst).endswith(".parquet") and "-of-" in str(dst):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # the process dies between two renames
        return real_replace(src, dst)

    monkeypatch.setattr("pathasst.writer.os.replace", flaky_replace)
    with pytest.raises(KeyboardInterrupt):
        w.finalize()
    w._release_lock()
    monkeypatch.setattr("pathasst.writer.os.replace", real_replace)
    with DatasetWriter(out, SPEC, config={}, max_shard_records=3) as again:
        summary = again.finalize()
    assert summary.total_records == 12
    assert sorted(all_ids(out)) == sorted(f"fig-{i}" for i in range(12))


def test_explicit_split_and_unknown_split(tmp_path):
    from pathasst.errors import RecordError

    with DatasetWriter(tmp_path / "ds", SPEC, config={}, splits={"test": 1.0}) as w:
        w.add(record(1), split="test")
        with pytest.raises(RecordError, match="split 'train' is not one of test"):
            w.add(record(2), split="train")
        w.finalize()
    assert list(load(tmp_path / "ds")) == ["test"]
    with DatasetWriter(tmp_path / "two", SPEC, config={}) as w:
        with pytest.raises(RecordError, match="differs from split 'train'.*records of one input share a split"):
            with w.unit("atlas.pdf"):
                w.add(record(1), split="train")
                w.add(record(2), split="test")
        assert not w.is_done("atlas.pdf")


def test_a_folder_with_no_record_holds_an_empty_shard_not_other_files_as_data(tmp_path):
    # Without any shard, load_dataset(folder) took summary.json or the ledger for the data.
    import pyarrow.parquet as pq
    from datasets import load_dataset

    spec = get_spec("pathcap")
    with DatasetWriter(tmp_path / "empty", spec) as writer:
        writer.reject("a", "caption too short")
        summary = writer.finalize()
    (tmp_path / "empty" / "summary.json").write_text('{"what": "a stage summary beside the data"}')
    assert summary.total_records == 0 and summary.rejected == 1
    shard = tmp_path / "empty" / "data" / "train-00000-of-00001.parquet"
    assert pq.read_table(shard).num_rows == 0
    ds = load_dataset(str(tmp_path / "empty"), streaming=True)
    assert list(ds["train"]) == [] and ds["train"].features == spec.features
    # datasets refuses to materialise an empty split (an error, never summary.json as rows)
    with pytest.raises(ValueError):
        load_dataset(str(tmp_path / "empty"))
