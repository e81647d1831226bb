"""One distribution, every folder under the `pathasst` namespace, no generic top-level modules."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ["dataset_builders", "trainers", "benchmarks", "model_cards", "hub_release", "spaces"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_folders_import_under_the_namespace(folder):
    import importlib

    module = importlib.import_module(f"pathasst.{folder}")
    assert Path(module.__file__).resolve().parent == ROOT / folder


def test_no_generic_top_level_names_importable(tmp_path):
    # run outside the checkout: `python -m pytest` puts the current folder on sys.path itself
    code = f"import importlib.util; print([n for n in {FOLDERS!r} if importlib.util.find_spec(n)])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_wheel_holds_only_the_pathasst_namespace(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob("pathasst-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"pathasst", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    # every package in the checkout is in the wheel (a subpackage missing from pyproject would not be)
    for folder in ["pathasst", *FOLDERS]:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT).as_posix()
            assert (rel if folder == "pathasst" else f"pathasst/{rel}") in names, rel
    assert "pathasst/dataset_builders/samples/demo_figures.yaml" in names
    # recipes and data files travel with the code: `pathasst train FAMILY --recipe tiny` works from a wheel
    for data_file in [*(ROOT / "trainers" / "recipes").rglob("*.yaml"), *(ROOT / "dataset_builders").rglob("data/*.yaml")]:
        assert f"pathasst/{data_file.relative_to(ROOT).as_posix()}" in names, data_file
    assert not any(n.startswith("pathasst/tests") for n in names)
