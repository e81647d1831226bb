"""The pathclip_zero_shot tool over a real PathCLIP export: a tiny model trained on textured tiles
whose captions name their colour, asked which colour a new tile has."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
pytest.importorskip("accelerate")

from PIL import Image  # noqa: E402

from pathasst.benchmarks.perf.train_pathclip import textured_pathcap, textured_tile  # noqa: E402
from pathasst.cli import main  # noqa: E402
from pathasst.tools import get  # noqa: E402
from pathasst.trainers import loop  # noqa: E402


@pytest.fixture(scope="module")
def pathclip_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("pathclip_tool")
    caps = textured_pathcap(root / "caps", n=96, size=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "pathclip", "--recipe", "tiny", f"data={caps}", f"output_dir={root / 'run'}",
                     "max_steps=40", "eval_every=0", "save_every=40", "export_hf=false"]) == 0
    finally:
        torch.set_num_threads(threads)
        loop.reset_accelerate_state()
    return root / "run" / "model"


def test_zero_shot_tool_probabilities_match_open_clip_and_name_the_colour(pathclip_model):
    tool = get("pathclip_zero_shot")
    labels = ["red", "green", "blue", "yellow"]
    hits = 0
    for i, colour in enumerate(labels * 2):
        image = Image.open(io.BytesIO(textured_tile(colour, ["dots", "stripes"][i % 2], 9000 + i, 32)))
        result = tool.run(image, labels=labels, model=str(pathclip_model), template="{} dots")
        assert set(result["probabilities"]) == set(labels)
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        hits += result["label"] == colour
    assert hits >= 6  # of 8: the trained pairing, not chance (2 of 8)

    # the same numbers as open_clip computes them by hand
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{pathclip_model}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{pathclip_model}")
    image = Image.open(io.BytesIO(textured_tile("blue", "checks", 77, 32)))
    with torch.no_grad():
        img = model.eval().encode_image(preprocess(image).unsqueeze(0), normalize=True)
        txt = model.encode_text(tokenizer([f"a histopathology image of {c}." for c in labels]), normalize=True)
        expected = (model.logit_scale.exp() * img @ txt.T).softmax(-1)[0].tolist()
    got = tool.run(image, labels=labels, model=str(pathclip_model))["probabilities"]
    assert [got[c] for c in labels] == pytest.approx(expected, abs=1e-6)


def test_zero_shot_tool_from_the_command_line(pathclip_model, tmp_path, capsys):
    png = tmp_path / "tile.png"
    png.write_bytes(textured_tile("red", "stripes", 4242, 32))
    assert main(["tool", "run", "pathclip_zero_shot", str(png), "labels=[red, blue]",
                 f"model={pathclip_model}"]) == 0
    out = capsys.readouterr().out
    assert '"probabilities"' in out and '"label"' in out
