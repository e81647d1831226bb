"""The PathAsst family on the tiny recipe: build, chat template and assistant-only labels, both
training stages through `pathasst train`, resume, export and reload with AutoModelForImageTextToText.

Data: a PathCap and a PathInstruct folder written through the public writer (crops of scikit-image's
real IHC micrograph; the PathInstruct tool dialogues carry the IHC tool's real results).
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("skimage")

from pathasst.cli import main as cli_main  # noqa: E402
from pathasst.config import load_config  # noqa: E402
from pathasst.errors import ConfigError  # noqa: E402
from pathasst.testing.assistant_data import write_pathcap, write_pathinstruct  # noqa: E402
from pathasst.testing.images import tissue_tile  # noqa: E402
from pathasst.tools import openai_schema  # noqa: E402
from pathasst.trainers import loop  # noqa: E402
from pathasst.trainers import pathasst as pa  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    loop.reset_accelerate_state()
    yield
    loop.reset_accelerate_state()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pa-data")
    return {"cap": write_pathcap(root / "cap", 6, size=48), "inst": write_pathinstruct(root / "inst", 6, size=48)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """Stage 1 then stage 2 of the tiny recipe, through the CLI as a user runs them."""
    loop.reset_accelerate_state()
    root = tmp_path_factory.mktemp("pa-run")
    s1, s2 = root / "s1", root / "s2"
    assert cli_main(["train", "pathasst", "--recipe", "tiny", "stage=1", f"data={data['cap']}",
                     f"output_dir={s1}", "max_steps=2"]) == 0
    loop.reset_accelerate_state()
    assert cli_main(["train", "pathasst", "--recipe", "tiny", "stage=2", f"data={data['inst']}",
                     f"init_from={s1 / 'model'}", f"output_dir={s2}", "max_steps=2"]) == 0
    loop.reset_accelerate_state()
    return {"s1": s1, "s2": s2}


def cfg(data, **kw):
    values = {"data": str(data["cap"]), "vision_tower": "tiny", "language_model": "tiny", **kw}
    return pa.PathAsstConfig(**values)


def test_config_errors_name_the_key(data, tmp_path):
    with pytest.raises(pa.TrainConfigError, match="stage must be 1"):
        cfg(data, stage=3)
    with pytest.raises(pa.TrainConfigError, match="data= is required: stage 2 trains on a PathInstruct"):
        pa.PathAsstConfig(stage=2)
    with pytest.raises(pa.TrainConfigError, match="init_from=.*no PathAsst model folder"):
        cfg(data, init_from=str(tmp_path))
    with pytest.raises(pa.TrainConfigError, match="image_size must be a multiple of 32"):
        cfg(data, image_size=100)
    with pytest.raises(ConfigError, match="dtype"):
        load_config(pa.PathAsstConfig, None, [f"data={data['cap']}", "dtype=int8"])


def test_recipes_load_and_reference_the_accelerate_configs():
    from pathasst.trainers.registry import accelerate_config_dir, recipe_dir

    names = sorted(p.stem for p in recipe_dir("pathasst").glob("*.yaml"))
    assert names == ["mini", "tiny", "vicuna13b", "vicuna7b"]
    for name in names:
        c = load_config(pa.PathAsstConfig, recipe_dir("pathasst") / f"{name}.yaml", [f"data={recipe_dir('pathasst')}"])
        assert c.stage == 1
        text = (recipe_dir("pathasst") / f"{name}.yaml").read_text()
        for config in ("deepspeed_zero2", "deepspeed_zero3", "fsdp"):
            if name.startswith("vicuna"):
                assert config in text and (accelerate_config_dir() / f"{config}.yaml").is_file()


def test_build_gives_llava_with_the_right_image_token_count(data):
    model, processor, facts = pa.build_assistant(cfg(data), ["a caption"])
    assert isinstance(model, transformers.LlavaForConditionalGeneration)
    # 32 px / 8 px patches = 16 patches; the CLS token is dropped by the "default" strategy
    assert pa.image_token_count(processor) == 16 == facts["image_tokens"]
    image = tissue_tile(300, seed=1, stain="ihc")
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                         add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=text, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)  # resized whole, no crop
    with torch.no_grad():
        out = model(**inputs)  # image features and placeholders agree
    assert out.logits.shape[1] == inputs["input_ids"].shape[1]


def test_chat_template_renders_system_tools_calls_and_results(data):
    _, processor, _ = pa.build_assistant(cfg(data, system_prompt="Be brief."), ["x"])
    schema = openai_schema("ihc_quantify")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Quantify."}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "ihc_quantify", "arguments": {"dab_threshold": 0.05}}}]},
        {"role": "tool", "name": "ihc_quantify", "tool_call_id": "c1", "content": '{"nuclei_count": 3}'},
        {"role": "assistant", "content": "3 nuclei."},
    ]
    text = processor.apply_chat_template(messages, tools=[schema], tokenize=False)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert json.dumps(schema["function"]) in text
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "ihc_quantify", "arguments": {"dab_threshold": 0.05}}\n' \
           '</tool_call><|im_end|>' in text
    assert '<|im_start|>tool\n{"nuclei_count": 3}<|im_end|>\n<|im_start|>assistant\n3 nuclei.<|im_end|>' in text
    own = processor.apply_chat_template([{"role": "system", "content": "Own."}, messages[0]], tokenize=False,
                                        add_generation_prompt=True)
    assert own.startswith("<|im_start|>system\nOwn.<|im_end|>") and own.endswith("<|im_start|>assistant\n")


def test_labels_cover_assistant_turns_only_tool_calls_included(data):
    _, processor, _ = pa.build_assistant(cfg(data), ["x"])
    from pathasst.testing.assistant_data import ihc_tool_dialogue

    d = ihc_tool_dialogue("r1", tissue_tile(48, seed=3, stain="ihc"), "Quantify the stain.")
    messages = pa.normalise_messages(d["messages"])
    enc = pa.encode_dialogue(processor, messages, [json.loads(t) for t in d["tools"]], max_length=100_000)
    tok = processor.tokenizer
    learned = tok.decode([i for i, label in zip(enc["input_ids"], enc["labels"]) if label != -100])
    answer = messages[3]["content"][0]["text"]
    assert learned == ('<tool_call>\n{"name": "ihc_quantify", "arguments": {}}\n</tool_call><|im_end|>'
                       + answer + "<|im_end|>")
    image_id = tok.convert_tokens_to_ids(pa.IMAGE_TOKEN)
    assert enc["input_ids"].count(image_id) == 16
    assert all(label == -100 for i, label in zip(enc["input_ids"], enc["labels"]) if i == image_id)
    # the rendered prompt the model sees at inference is exactly the unlearned prefix
    prompt = tok.apply_chat_template(messages[:1], tools=[json.loads(t) for t in d["tools"]], tokenize=False,
                                     add_generation_prompt=True, chat_template=processor.chat_template)
    n = len(tok(prompt.replace(pa.IMAGE_TOKEN, pa.IMAGE_TOKEN * 16), add_special_tokens=False)["input_ids"])
    assert enc["input_ids"][:n] == tok(prompt.replace(pa.IMAGE_TOKEN, pa.IMAGE_TOKEN * 16),
                                       add_special_tokens=False)["input_ids"]
    assert all(label == -100 for label in enc["labels"][:n]) and enc["labels"][n] != -100
    assert pa.encode_dialogue(processor, messages, None, max_length=20) is None


@pytest.mark.slow
def test_two_stages_train_export_and_reload(trained, data):
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor

    s1 = json.loads((trained["s1"] / "train_summary.json").read_text())
    s2 = json.loads((trained["s2"] / "train_summary.json").read_text())
    assert s1["final_step"] == 2 and s2["final_step"] == 2
    # stage 1: the projector only
    info = s1["task_summary"]["data"]
    assert info["records"] == 6 == info["used"] + sum(info["skipped"].values())
    proj = sum(p.numel() for n, p in AutoModelForImageTextToText.from_pretrained(trained["s1"] / "model")
               .named_parameters() if "multi_modal_projector" in n)
    assert info["trainable_parameters"] == proj
    info2 = s2["task_summary"]["data"]
    assert info2["records"] == 6 == info2["used"] + sum(info2["skipped"].values())
    assert info2["used"] == 6  # tool dialogues included
    # stage 2 exported merged: a plain Llava folder, no LoRA tensors, loads with no custom code
    folder = trained["s2"] / "model"
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert not any("lora" in k for k in keys)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and "auto_map" not in config
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model) is transformers.LlavaForConditionalGeneration
    assert isinstance(processor, transformers.LlavaProcessor)
    # the projector moved in stage 1 and the language model in stage 2 (LoRA merged)
    m1 = AutoModelForImageTextToText.from_pretrained(trained["s1"] / "model")
    base, _, _ = pa.build_assistant(cfg(data), [])  # same seed: the initial projector
    sd0, sd1, sd2 = base.state_dict(), m1.state_dict(), model.state_dict()
    p = "model.multi_modal_projector.linear_1.weight"
    assert not torch.equal(sd0[p], sd1[p])
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(sd1[q], sd2[q])
    v = next(k for k in sd1 if k.startswith("model.vision_tower."))
    assert torch.equal(sd1[v], sd2[v])  # the tower stays frozen
    meta = json.loads((folder / "pathasst.json").read_text())
    assert meta["stage"] == 2 and meta["lora"]["merged"] is True
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=tissue_tile(64, seed=2, stain="ihc"), text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.slow
def test_stage1_resumes_from_its_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    args = ["--recipe", "tiny", "stage=1", f"data={data['cap']}", f"output_dir={out}", "save_every=1"]
    assert pa.main([*args, "max_steps=1"]) == 0
    loop.reset_accelerate_state()
    assert pa.main([*args, "max_steps=2"]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["start_step"] == 1 and summary["final_step"] == 2
    assert summary["resumed_from"].endswith("step-1")
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["task"]["stage"] == 1


@pytest.mark.slow
def test_stage2_refuses_pathcap_and_counts_long_dialogues(data, tmp_path):
    with pytest.raises(pa.InputError, match="no 'messages' column"):
        pa.main(["--recipe", "tiny", "stage=2", f"data={data['cap']}", f"output_dir={tmp_path / 'x'}"])
    loop.reset_accelerate_state()
    assert pa.main(["--recipe", "tiny", "stage=2", f"data={data['inst']}", f"output_dir={tmp_path / 'y'}",
                    "max_length=300", "max_steps=1", "batch_size=1", "lora=false"]) == 0
    info = json.loads((tmp_path / "y" / "train_summary.json").read_text())["task_summary"]["data"]
    assert info["skipped"] == {"longer than max_length=300 tokens": 3} and info["used"] == 3
