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
