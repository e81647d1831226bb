"""The selector family: config checks, data, augmentation, metrics, timm export, training and resume.

Real images only: pathology is scikit-image's IHC micrograph of colonic glands (as photographed and
re-stained as H&E by ``pathasst.testing.images.tissue_tile``); non-pathology is scikit-image's other
shipped pictures (astronaut, coffee, cat, camera, page of text, rocket, ...). The tiny recipe's
model is timm's ``test_convnext``, random-initialised: nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("torchvision")
pytest.importorskip("accelerate")
skdata = pytest.importorskip("skimage.data")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from pathasst.trainers import loop, registry  # noqa: E402
from pathasst.trainers import selector as sel  # noqa: E402
from PIL import Image  # noqa: E402

from pathasst.cli import main  # noqa: E402
from pathasst.config import load_config  # noqa: E402
from pathasst.errors import ConfigError, InputError  # noqa: E402
from pathasst.testing.images import make_huge_image_header, make_image, tissue_tile  # noqa: E402

NATURAL = ("astronaut", "coffee", "chelsea", "camera", "page", "rocket", "text")
HELD_OUT_NATURAL = ("moon", "coins", "clock", "hubble_deep_field", "colorwheel", "cell")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core runner its spin-waits
    cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    loop.reset_accelerate_state()


def natural_crops(names, n: int, size: int, seed: int) -> list[Image.Image]:
    """Random square crops of scikit-image's non-pathology pictures, resized to ``size``."""
    rng = np.random.default_rng(seed)
    pictures = [getattr(skdata, name)() for name in names]
    out = []
    for i in range(n):
        arr = pictures[i % len(pictures)]
        h, w = arr.shape[:2]
        side = min(h, w, int(rng.integers(96, 220)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        img = Image.fromarray(np.ascontiguousarray(arr[y:y + side, x:x + side]))
        out.append(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    return out


def tissue_crops(n: int, size: int, seed: int) -> list[Image.Image]:
    return [tissue_tile(size, seed=seed + i, stain="he" if i % 2 else "ihc") for i in range(n)]


def write_image_folder(root: Path, n: int = 16, size: int = 72, seed: int = 0, odd: bool = True) -> Path:
    """pathology/ and non_pathology/ with ``n`` real images each; with ``odd``, also a grayscale
    and a CMYK tissue tile, a 16-bit picture and a corrupt file (training must cope with them)."""
    (root / "pathology").mkdir(parents=True)
    (root / "non_pathology").mkdir(parents=True)
    for i, img in enumerate(tissue_crops(n, size, seed)):
        img.save(root / "pathology" / f"tile{i:02d}.png")
    for i, img in enumerate(natural_crops(NATURAL, n, size, seed)):
        img.save(root / "non_pathology" / f"pic{i:02d}.jpg", quality=90)
    if odd:
        tissue_tile(size, seed=seed + 99).convert("L").save(root / "pathology" / "grey.png")
        tissue_tile(size, seed=seed + 98).convert("CMYK").save(root / "pathology" / "cmyk.jpg")
        (root / "non_pathology" / "deep.png").write_bytes(make_image("I;16", (size, size), seed=3))
        (root / "non_pathology" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        (root / "non_pathology" / "notes.txt").write_text("not an image: ignored by suffix")
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("selector-data") / "folder")


def tiny_config(data: Path, output_dir: Path, **overrides) -> sel.SelectorConfig:
    recipe = registry.recipe_dir("selector") / "tiny.yaml"
    values = {"data": str(data), "output_dir": str(output_dir), **overrides}
    return load_config(sel.SelectorConfig, recipe, [f"{k}={v}" for k, v in values.items()])


# --- configuration ----------------------------------------------------------------------------


def test_registry_runs_the_selector_family_and_recipes_load(image_folder, tmp_path):
    spec = registry.get("selector")
    assert spec.landed and spec.entry == "pathasst.trainers.selector:main"
    for name in ("tiny", "convnext_tiny"):
        cfg = load_config(sel.SelectorConfig, registry.recipe_dir("selector") / f"{name}.yaml",
                          [f"data={image_folder}", f"output_dir={tmp_path}"])
        assert cfg.positive_labels == ["pathology"]
    full = load_config(sel.SelectorConfig, registry.recipe_dir("selector") / "convnext_tiny.yaml",
                       [f"data={image_folder}"])
    assert (full.model, full.image_size) == ("convnext_tiny", 224)
    assert full.pretrained == "timm/convnext_tiny.fb_in22k_ft_in1k"
    assert full.early_stopping_patience > 0 and full.eval_every > 0 and full.balance == "sampler"


@pytest.mark.parametrize("override, message", [
    ("balance=oversample", "balance must be one of sampler, loss, none"),
    ("val_fraction=1.5", "val_fraction must be in"),
    ("early_stopping_metric=f1", "early_stopping_metric must be one of"),
    ("early_stopping_patience=2", "needs evaluations: set eval_every"),
    ("labels=[pathology]", "at least two distinct"),
    ("positive_labels=[tumour]", "not among labels"),
    ("pretrained=./no/such/folder", "pretrained=./no/such/folder: no such file"),
    ("hed_jitter=2", "hed_jitter must be in"),
    ("image_size=8", "image_size must be >= 16"),
])
def test_bad_values_are_named_with_their_origin(image_folder, override, message):
    extra = ["labels=[non_pathology, pathology]"] if override.startswith("positive_labels") else []
    with pytest.raises(ConfigError, match=message) as info:
        load_config(sel.SelectorConfig, None, [f"data={image_folder}", "eval_every=0", "early_stopping_patience=0",
                                               *extra, override])
    assert "override" in str(info.value)


def test_data_is_required_and_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="data= is required"):
        sel.SelectorConfig()
    with pytest.raises(ConfigError, match="no such file or folder"):
        sel.SelectorConfig(data=str(tmp_path / "missing"))


def test_data_classes_are_checked_against_the_config(image_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"positive_labels \['tumour'\] are not classes"):
        sel.SelectorTask(tiny_config(image_folder, tmp_path, positive_labels="[tumour]"))
    with pytest.raises(ConfigError, match="num_classes=3 but"):
        sel.SelectorTask(tiny_config(image_folder, tmp_path, num_classes=3))
    with pytest.raises(InputError, match="missing folders: \\['diagram'\\]"):
        sel.SelectorTask(tiny_config(image_folder, tmp_path, labels="[diagram, non_pathology, pathology]"))


# --- data, images, augmentation ---------------------------------------------------------------


def test_image_folder_scan_and_stratified_split(image_folder):
    data = sel.load_labelled(str(image_folder))
    assert data.names == ["non_pathology", "pathology"]
    assert data.counts() == {"non_pathology": 18, "pathology": 18}  # notes.txt ignored
    train, held = sel.stratified_split(data.labels, 0.25, seed=1)
    assert sorted(train + held) == list(range(len(data)))
    assert data.counts(held) == {"non_pathology": 4, "pathology": 4}
    assert sel.stratified_split(data.labels, 0.25, seed=1) == (train, held)
    assert sel.stratified_split(data.labels, 0.25, seed=2) != (train, held)
    reordered = sel.load_labelled(str(image_folder), labels=["pathology", "non_pathology"])
    assert reordered.names == ["pathology", "non_pathology"] and reordered.counts()["pathology"] == 18


def test_decode_rgb_normalises_modes_bounds_size_and_rejects_with_reasons():
    for mode in ("L", "CMYK", "I;16", "RGBA", "P"):
        img = sel.decode_rgb(make_image(mode, (80, 60)), max_side=40)
        assert img.mode == "RGB" and img.size == (40, 30)
    big = tissue_tile(512).resize((3000, 2000))
    buf = __import__("io").BytesIO()
    big.save(buf, format="JPEG")
    assert sel.decode_rgb({"bytes": buf.getvalue(), "path": None}, max_side=128).size == (128, 85)
    with pytest.raises(sel.ImageRejected, match="image too small: 1x1"):
        sel.decode_rgb(make_image("RGB", (1, 1)), min_side=2)
    with pytest.raises(sel.ImageRejected, match="not an image"):
        sel.decode_rgb(b"garbage")
    with pytest.raises(sel.ImageRejected, match="no image"):
        sel.decode_rgb({"bytes": None, "path": None})
    # a gigantic image (a header declaring 30,000 x 30,000 pixels) is refused before any decoding
    with pytest.raises(sel.ImageRejected, match="image too large"):
        sel.decode_rgb(make_huge_image_header(30_000, 30_000), max_pixels=50_000_000)


def test_hed_jitter_changes_stain_not_structure_and_is_identity_at_zero():
    x = torch.from_numpy(np.array(tissue_tile(64, stain="ihc"))).permute(2, 0, 1).contiguous()
    same = sel.HEDJitter(0.0)(x)
    assert same.dtype == torch.uint8 and same.shape == x.shape
    assert (same.int() - x.int()).abs().max() <= 1  # 1/255 floor of the optical density
    torch.manual_seed(0)
    jittered = sel.HEDJitter(0.2)(x)
    assert (jittered.int() - x.int()).abs().float().mean() > 2
    # structure kept: the jittered tile correlates strongly with the original
    a, b = x.float().mean(0).flatten(), jittered.float().mean(0).flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


def test_train_transform_output_and_per_sample_determinism(image_folder, tmp_path):
    task = sel.SelectorTask(tiny_config(image_folder, tmp_path, jpeg_prob=1.0, hed_jitter=0.1, color_jitter=0.3))
    task.build_model(task.cfg)
    ds = task.train_dataset(task.cfg)
    x, y = ds[(0, 123)]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y in (0, 1)
    assert torch.equal(ds[(0, 123)][0], x)  # same sample seed, same augmentation
    assert not torch.equal(ds[(0, 124)][0], x)
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    ds[(1, 7)]
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched


def test_epoch_sampler_is_a_function_of_seed_and_epoch_and_balances():
    s = sel.EpochSampler(10, seed=3)
    first = list(s)
    assert sorted(i for i, _ in first) == list(range(10)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    weights = [1.0] * 9 + [9.0]  # one rare sample weighted like the other nine together
    drawn = [i for i, _ in sel.EpochSampler(2000, seed=0, weights=weights + [0.0] * 1990)]
    assert 0.4 < drawn.count(9) / len(drawn) < 0.6
    seeds = [seed for _, seed in sel.EpochSampler(50, seed=0)]
    assert len(set(seeds)) == 50


def test_corrupt_training_image_is_replaced_by_another_of_its_class(image_folder, tmp_path, caplog):
    task = sel.SelectorTask(tiny_config(image_folder, tmp_path, val_fraction=0, eval_every=0))
    task.build_model(task.cfg)
    ds = task.train_dataset(task.cfg)
    broken = next(i for i in range(len(ds)) if str(ds.data.images[int(ds.indices[i])]).endswith("broken.png"))
    with caplog.at_level("WARNING"):
        x, y = ds[(broken, 1)]
    assert y == ds.data.names.index("non_pathology") and x.shape == (3, 64, 64)
    assert "broken.png" in caplog.text and "not an image" in caplog.text


# --- metrics and early stopping ---------------------------------------------------------------


@pytest.mark.parametrize("scores, targets, expected", [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # sklearn's documented example
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # ties count one half
    ([0.9, 0.8, 0.1], [1, 1, 0], 1.0),
    ([0.9, 0.8, 0.1], [0, 0, 1], 0.0),
    ([0.3, 0.3], [1, 1], float("nan")),  # one class only
])
def test_auroc_golden_cases(scores, targets, expected):
    got = sel.auroc(scores, targets)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_auroc_matches_pairwise_definition_and_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 2)  # many ties
    targets = rng.integers(0, 2, 300)
    pos, neg = scores[targets == 1], scores[targets == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    pairwise = wins / (len(pos) * len(neg))
    assert sel.auroc(scores, targets) == pytest.approx(pairwise, abs=1e-12)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert sel.auroc(scores, targets) == pytest.approx(sklearn_metrics.roc_auc_score(targets, scores), abs=1e-12)


def test_classification_metrics_multiclass_positive_sum_and_threshold():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    targets = np.array([0, 2, 1, 0])
    m = sel.classification_metrics(probs, targets, positive=[1, 2], threshold=0.5, names=["chart", "he", "ihc"])
    assert m["accuracy"] == 1.0 and m["auroc"] == 1.0 and m["positives"] == 2
    assert m["confusion"] == {"tp": 2, "fp": 0, "fn": 0, "tn": 2} and m["per_class"] == {"chart": 2, "he": 1, "ihc": 1}


def test_early_stopping_patience_min_delta_and_replay():
    stop = sel.EarlyStopping("auroc", patience=2, min_delta=0.01)
    history = [{"step": 10, "auroc": 0.80}, {"step": 20, "auroc": 0.805}, {"step": 30, "auroc": 0.9},
               {"step": 40, "auroc": float("nan")}, {"step": 50, "auroc": 0.85}]
    for record in history:
        stop.update(record["step"], record)
    assert (stop.best, stop.best_step, stop.stopped_at) == (0.9, 30, 50)
    replayed = sel.EarlyStopping("auroc", patience=2, min_delta=0.01)
    replayed.replay(history)
    assert replayed.as_dict() == stop.as_dict()
    loss = sel.EarlyStopping("loss", patience=1)
    loss.update(1, {"loss": 0.5})
    assert loss.update(2, {"loss": 0.4}) and not loss.update(3, {"loss": 0.45}) and loss.stopped_at == 3


# --- models: creation, pretrained weights, export -----------------------------------------------


def _batch(size: int = 64) -> torch.Tensor:
    imgs = tissue_crops(2, 96, 7) + natural_crops(("astronaut", "page"), 2, 96, 7)
    return imgs


def test_export_reloads_with_timm_local_dir_with_identical_logits(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path)
    model = sel.create_selector_model(cfg, ["non_pathology", "pathology"]).eval()
    with torch.no_grad():  # perturb the head so a re-initialised head could not pass by chance
        model.get_classifier().weight.add_(torch.randn_like(model.get_classifier().weight))
    folder = sel.save_selector(model.state_dict(), model, tmp_path / "export", ["pathology"], {"note": "test"})
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_convnext" and config["num_classes"] == 2
    assert config["label_names"] == ["non_pathology", "pathology"]
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 64, 64] and pcfg["crop_mode"] == "squash" and pcfg["mean"] and pcfg["std"]
    assert "hf_hub_id" not in pcfg and "tag" not in pcfg
    assert config["pathasst"]["positive_labels"] == ["pathology"] and config["pathasst"]["note"] == "test"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]

    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the selector API gives the same probabilities as softmax over those logits
    selector = sel.Selector.load(str(folder), device="cpu")
    imgs = _batch()
    batch = torch.stack([selector.transform(i) for i in imgs])
    with torch.no_grad():
        expected = model(batch).softmax(1)[:, 1].numpy()
    np.testing.assert_allclose(selector.score(imgs), expected, rtol=0, atol=1e-6)


def fake_hub_cache(root: Path, repo_id: str, folder: Path) -> Path:
    """A Hugging Face Hub cache holding ``folder`` as ``repo_id`` at ``main`` (what a download leaves)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


def test_hub_id_forms_load_from_the_hub_cache_offline(image_folder, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cfg = tiny_config(image_folder, tmp_path)
    model = sel.create_selector_model(cfg, ["non_pathology", "pathology"]).eval()
    folder = sel.save_selector(model.state_dict(), model, tmp_path / "export", ["pathology"])
    cache = fake_hub_cache(tmp_path / "hub", "pathasst-test/selector", folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    x = torch.randn(2, 3, 64, 64)
    loaded = timm.create_model("hf-hub:pathasst-test/selector", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert sel.Selector.load("pathasst-test/selector", device="cpu").labels == ["non_pathology", "pathology"]
    # ... and as initial weights of a new training run
    cfg_hub = tiny_config(image_folder, tmp_path, pretrained="pathasst-test/selector")
    init = sel.create_selector_model(cfg_hub, ["non_pathology", "pathology"]).eval()
    with torch.no_grad():
        assert torch.equal(init(x), model(x))


def test_pretrained_local_folder_and_file_keep_the_body_and_refit_the_head(image_folder, tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_config(image_folder, tmp_path)
    source = sel.create_selector_model(cfg, ["non_pathology", "pathology"])
    folder = sel.save_selector(source.state_dict(), source, tmp_path / "export", ["pathology"])
    same = sel.create_selector_model(tiny_config(image_folder, tmp_path, pretrained=str(folder)),
                                     ["non_pathology", "pathology"])
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in same.state_dict().items())
    three = ["chart", "non_pathology", "pathology"]
    for ref in (folder, folder / "model.safetensors"):
        refit = sel.create_selector_model(tiny_config(image_folder, tmp_path, pretrained=str(ref)), three)
        assert refit.num_classes == 3 and refit.pretrained_cfg["label_names"] == three
        body = {k: v for k, v in source.state_dict().items() if not k.startswith("head.fc")}
        assert all(torch.equal(refit.state_dict()[k], v) for k, v in body.items())
    assert set(load_file(str(folder / "model.safetensors"))) == set(source.state_dict())
    with pytest.raises(ConfigError, match="holds a 'test_convnext' model but model=resnet18"):
        sel.create_selector_model(tiny_config(image_folder, tmp_path, pretrained=str(folder), model="resnet18"),
                                  ["non_pathology", "pathology"])
    with pytest.raises(ConfigError, match="not a timm model"):
        sel.create_selector_model(tiny_config(image_folder, tmp_path, model="convnext_nonesuch"), ["a", "b"])


@pytest.mark.parametrize("files, message", [
    ({"open_clip_config.json": "{}", "open_clip_model.safetensors": ""}, "open_clip"),
    ({"config.json": json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})},
     "transformers config"),
    ({"best.pt": ""}, "ultralytics"),
    ({"config.json": json.dumps({"architecture": "test_convnext", "pretrained_cfg": {}})}, "no weights file"),
    ({"config.json": json.dumps({"architecture": "no_such_net", "pretrained_cfg": {}}), "model.safetensors": ""},
     "not a timm model"),
])
def test_model_folders_of_other_families_are_named(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message):
        sel.Selector.load(str(tmp_path))


# --- training: real optimisation on CPU, seconds with the tiny recipe ---------------------------


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("selector-run")
    argv = ["train", "selector", "--recipe", "tiny", f"data={image_folder}", f"output_dir={out}",
            "max_steps=16", "eval_every=8", "save_every=8"]
    assert main(argv) == 0
    loop.reset_accelerate_state()
    return out


def test_tiny_recipe_trains_loss_falls_and_exports_best(trained, image_folder):
    summary = json.loads((trained / "train_summary.json").read_text())
    losses = summary["losses"]
    assert summary["final_step"] == 16 and len(losses) == 16
    assert np.mean(losses[:3]) - np.mean(losses[-5:]) > 0.1, losses
    assert [e["step"] for e in summary["eval_history"]] == [8, 16]
    assert all(0 <= e["auroc"] <= 1 and e["n"] >= 8 for e in summary["eval_history"])
    config = json.loads((trained / "model" / "config.json").read_text())
    meta = config["pathasst"]
    assert meta["exported_weights"] == "best" and meta["best_step"] in (8, 16)
    best = max(summary["eval_history"], key=lambda e: e["auroc"])
    assert meta["validation"]["auroc"] == pytest.approx(best["auroc"])
    assert (trained / "config.yaml").is_file() and (trained / "checkpoints" / "step-16").is_dir()
    # the export's validation result is reproduced by evaluating the loaded model on the same images
    task = sel.SelectorTask(tiny_config(image_folder, trained / "unused"))
    held = sel.LabelledImages(sel._FileImages(task.train_data.images[i] for i in task.val_indices),
                              task.train_data.labels[task.val_indices], task.train_data.names, "validation")
    metrics = sel.evaluate_selector(sel.Selector.load(str(trained / "model"), device="cpu"), held, threshold=0.5)
    assert metrics["auroc"] == pytest.approx(meta["validation"]["auroc"], abs=1e-9)
    assert metrics["n"] + metrics["skipped"] == len(task.val_indices)


def test_trained_selector_separates_held_out_real_images(trained):
    """Unseen crops: new regions of the micrograph vs pictures the model never saw (moon, coins,
    clock, Hubble deep field, a colour wheel, a cell photograph). A weak bar for 16 CPU steps."""
    selector = sel.Selector.load(str(trained / "model"), device="cpu")
    pos, neg = tissue_crops(12, 96, seed=500), natural_crops(HELD_OUT_NATURAL, 12, 96, seed=500)
    scores = selector.score(pos + neg)
    assert sel.auroc(scores, [1] * 12 + [0] * 12) > 0.7, scores


class _Capturing(sel.SelectorTask):
    """Keeps the in-memory model at export (the trained model the export must reproduce)."""

    def export(self, model, output_dir, accelerator):
        super().export(model, output_dir, accelerator)
        self.final_model = copy.deepcopy(accelerator.unwrap_model(model)).eval()


class _Interrupted(sel.SelectorTask):
    def __init__(self, cfg, after: int):
        super().__init__(cfg)
        self.after, self.calls = after, 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt("simulated kill")
        return super().loss(model, batch)


def test_resume_is_exact_and_export_matches_the_trained_model(image_folder, tmp_path):
    from safetensors.torch import load_file

    keys = dict(max_steps=4, batch_size=4, save_every=2, eval_every=0, export_best="false", warmup_steps=1)
    whole_cfg = tiny_config(image_folder, tmp_path / "whole", **keys)
    whole = _Capturing(whole_cfg)
    loop.train(whole, whole_cfg)
    loop.reset_accelerate_state()

    # the export reloads through timm with the trained model's exact logits
    loaded = timm.create_model(f"local-dir:{tmp_path / 'whole' / 'model'}", pretrained=True).eval()
    selector = sel.Selector.load(str(tmp_path / "whole" / "model"), device="cpu")
    batch = torch.stack([selector.transform(i) for i in _batch()])
    with torch.no_grad():
        assert torch.equal(loaded(batch), whole.final_model(batch))

    cut_cfg = tiny_config(image_folder, tmp_path / "cut", **keys)
    with pytest.raises(KeyboardInterrupt):
        loop.train(_Interrupted(cut_cfg, after=3), cut_cfg)  # killed during step 4, checkpoint at 2
    loop.reset_accelerate_state()
    assert [p.name for p in loop.list_checkpoints(tmp_path / "cut")] == ["step-2"]
    resumed_cfg = tiny_config(image_folder, tmp_path / "cut", **keys)
    result, _ = sel.train_selector(resumed_cfg)
    assert (result.start_step, result.final_step) == (2, 4)
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_ends_the_run_and_a_rerun_does_not_train_further(image_folder, tmp_path):
    keys = dict(max_steps=40, batch_size=4, eval_every=2, save_every=100, early_stopping_patience=1,
                early_stopping_min_delta=1.0, warmup_steps=10)  # min_delta 1.0: nothing after the first counts
    result, task = sel.train_selector(tiny_config(image_folder, tmp_path, **keys))
    assert result.final_step == 4 and task.stopper.stopped_at == 4 and task.stopper.best_step == 2
    assert [p.name for p in loop.list_checkpoints(tmp_path)] == ["step-4"]
    meta = json.loads((tmp_path / "model" / "config.json").read_text())["pathasst"]
    assert meta["early_stopping"]["stopped_at"] == 4 and meta["best_step"] == 2 and meta["configured_max_steps"] == 40
    # the stop goes through the loop's should_stop hook: max_steps stays as configured, and the
    # summary and the checkpoint say where the run stopped
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert (summary["max_steps"], summary["final_step"], summary["stopped_at"]) == (40, 4, 4)
    state = json.loads((tmp_path / "checkpoints" / "step-4" / loop.STATE_FILE).read_text())
    assert state["stopped_at"] == 4
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["max_steps"] == 40
    loop.reset_accelerate_state()
    again, _ = sel.train_selector(tiny_config(image_folder, tmp_path, **keys))
    assert (again.start_step, again.final_step) == (4, 4)
    assert [p.name for p in loop.list_checkpoints(tmp_path)] == ["step-4"]
    assert (tmp_path / "model" / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert (summary["max_steps"], summary["final_step"], summary["stopped_at"]) == (40, 4, 4)


def test_a_run_resumed_before_its_early_stop_stops_at_the_same_step_with_the_same_weights(image_folder, tmp_path):
    from safetensors.torch import load_file

    keys = dict(max_steps=40, batch_size=4, eval_every=2, save_every=2, early_stopping_patience=1,
                early_stopping_min_delta=1.0, warmup_steps=10, export_best="false")
    whole, _ = sel.train_selector(tiny_config(image_folder, tmp_path / "whole", **keys))
    loop.reset_accelerate_state()
    cut_cfg = tiny_config(image_folder, tmp_path / "cut", **keys)
    with pytest.raises(KeyboardInterrupt):
        loop.train(_Interrupted(cut_cfg, after=3), cut_cfg)  # killed during step 4, checkpoint at 2
    loop.reset_accelerate_state()
    resumed, task = sel.train_selector(tiny_config(image_folder, tmp_path / "cut", **keys))
    assert (whole.final_step, resumed.start_step, resumed.final_step, task.stopper.stopped_at) == (4, 2, 4, 4)
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "cut" / "train_summary.json").read_text())
    assert (summary["max_steps"], summary["final_step"], summary["stopped_at"]) == (40, 4, 4)


def test_dataset_with_label_column_and_validation_split(tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    names = ["diagram", "pathology", "photo"]
    features = Features({"image": ImageFeature(), "kind": ClassLabel(names=names)})

    def split(n: int, seed: int) -> Dataset:
        images, kinds = [], []
        for i in range(n):
            images += [tissue_tile(64, seed=seed + i), natural_crops(("page", "text"), 1, 64, seed + i)[0],
                       natural_crops(("astronaut", "coffee"), 1, 64, seed + i)[0]]
            kinds += [1, 0, 2]
        return Dataset.from_dict({"image": images, "kind": kinds}, features=features)

    folder = tmp_path / "labelled"
    split(4, 0).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    split(2, 50).to_parquet(str(folder / "data" / "validation-00000-of-00001.parquet"))
    out = tmp_path / "run"
    assert main(["train", "selector", "--recipe", "tiny", f"data={folder}", f"output_dir={out}", "label_column=kind",
                 "max_steps=2", "eval_every=2", "batch_size=4", "balance=loss", "warmup_steps=0"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["eval_history"][0]["n"] == 6  # the validation split, not a fraction of train
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["label_names"] == names and config["num_classes"] == 3
    assert config["pathasst"]["class_counts_train"] == {"diagram": 4, "pathology": 4, "photo": 4}
