"""Input references: missing paths are caught before work starts, Hub ids pass through."""

import pytest

from pathasst.errors import ConfigError, InputError
from pathasst.inputs import data_ref, require_paths


def test_missing_paths_are_listed_together(tmp_path):
    (tmp_path / "a.pdf").write_bytes(b"%PDF")
    assert require_paths([tmp_path / "a.pdf"]) == [tmp_path / "a.pdf"]
    with pytest.raises(InputError, match=r"PDF not found: .*b\.pdf, .*c\.pdf"):
        require_paths([tmp_path / "a.pdf", tmp_path / "b.pdf", tmp_path / "c.pdf"], what="PDF")


@pytest.mark.parametrize("value, kind", [
    ("pathasst/PathCap", "hub"),
    ("pathasst/PathCap@v1.0", "hub"),
    ("./runs/pathcap", None),
    ("/no/such/folder", None),
    ("pathcap", None),
    ("runs/pathcap.parquet", None),
])
def test_data_ref_classifies_or_fails(value, kind):
    if kind is None:
        with pytest.raises(InputError, match=f"data={value}: no such file or folder"):
            data_ref(value)
    else:
        assert data_ref(value).kind == kind


def test_existing_local_folder_wins_over_hub_lookalike(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert data_ref("org/name").kind == "local"


def test_train_args_reject_a_missing_data_path_before_work(tmp_path):
    from pathasst.config import load_config
    from pathasst.trainers.loop import TrainArgs

    with pytest.raises(ConfigError, match="data=.*missing-folder: no such file or folder"):
        load_config(TrainArgs, None, [f"data={tmp_path / 'missing-folder'}"])


def test_load_dataset_fresh_sees_a_folder_rebuilt_with_records_of_the_same_size(tmp_path):
    # load_dataset(folder) keys its cache on the card only; a rebuilt folder must not read stale
    from pathasst.inputs import load_dataset_fresh
    from pathasst.records import get_spec
    from pathasst.testing.images import tissue_tile
    from pathasst.writer import DatasetWriter

    def build(tag: str) -> None:
        with DatasetWriter(tmp_path / "cap", get_spec("pathcap"), overwrite=True) as writer:
            writer.add({"id": f"rec-{tag}", "image": tissue_tile(32, seed=1), "caption": f"caption {tag}",
                        "caption_raw": f"caption {tag}", "source": "private", "source_id": "lab/1",
                        "figure_id": f"rec-{tag}", "license": "CC0", "width": 32, "height": 32})
            writer.finalize()

    build("a")
    assert load_dataset_fresh(str(tmp_path / "cap"))["train"]["id"] == ["rec-a"]
    build("b")
    assert load_dataset_fresh(str(tmp_path / "cap"))["train"]["id"] == ["rec-b"]
