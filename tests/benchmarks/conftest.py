"""Fixtures of the benchmark tests: tiny models of every adapter family and small data folders, made in code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# class colours of the synthetic "tissue" tiles: a model can only tell them apart by colour
_COLOURS = {"ADI": (240, 235, 235), "LYM": (60, 40, 140), "TUM": (170, 60, 120)}


def tile(label: str, seed: int, size: int = 40):
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.array(_COLOURS.get(label, (128, 128, 128)), dtype=float)
    arr = np.clip(base + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """ImageFolder with three CRC-100K classes, 4 tiles each."""
    root = tmp_path / "crc_local"
    for c, label in enumerate(_COLOURS):
        (root / label).mkdir(parents=True)
        for i in range(4):
            tile(label, seed=10 * c + i).save(root / label / f"{label}_{i}.png")
    return root


@pytest.fixture
def caption_folder(tmp_path) -> Path:
    """Image-text folder: 6 images with metadata.jsonl captions."""
    root = tmp_path / "captions"
    root.mkdir()
    words = ["adipose tissue", "lymphocytes", "tumor epithelium", "fat cells", "lymphoid aggregate", "carcinoma"]
    with open(root / "metadata.jsonl", "w") as fh:
        for i, w in enumerate(words):
            tile(list(_COLOURS)[i % 3], seed=100 + i).save(root / f"img{i}.png")
            fh.write(json.dumps({"file_name": f"img{i}.png", "caption": f"An H&E image of {w}, sample {i}."}) + "\n")
    return root


def write_dataset(folder: Path, rows: dict, split: str = "test") -> Path:
    """A dataset folder (``data/<split>-00000-of-00001.parquet``) that ``load_dataset(folder)`` reads."""
    from datasets import Dataset, Features, Image, List, Value

    feats = {}
    for k, v in rows.items():
        if k == "image":
            feats[k] = Image()
        elif isinstance(v[0], list):
            feats[k] = List(Value("string"))
        else:
            feats[k] = Value("string")
    ds = Dataset.from_dict(rows, features=Features(feats))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


@pytest.fixture
def vqa_folder(tmp_path) -> Path:
    """PathVQA-shaped folder: 4 closed (yes/no) and 3 open questions."""
    qa = [("is this adipose tissue?", "yes"), ("are there lymphocytes?", "no"), ("is this malignant?", "yes"),
          ("is necrosis present?", "no"), ("what tissue is shown?", "adipose tissue"),
          ("what cells are these?", "lymphocytes"), ("what is the diagnosis?", "colorectal adenocarcinoma")]
    rows = {"image": [tile(list(_COLOURS)[i % 3], 200 + i) for i in range(len(qa))],
            "question": [q for q, _ in qa], "answer": [a for _, a in qa]}
    return write_dataset(tmp_path / "pathvqa_local", rows)


@pytest.fixture
def mc_folder(tmp_path) -> Path:
    opts = [["carcinoma", "lymphoma", "sarcoma", "melanoma"]] * 4
    rows = {"image": [tile("TUM", 300 + i) for i in range(4)],
            "question": [f"What is shown in case {i}?" for i in range(4)],
            "options": opts, "answer": ["A", "B", "lymphoma", "D"]}
    return write_dataset(tmp_path / "mc_local", rows)


@pytest.fixture(scope="session")
def open_clip_dir(tmp_path_factory) -> Path:
    """A two-layer open_clip model saved as open_clip's Hub layout (config JSON + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    d = tmp_path_factory.mktemp("tiny_open_clip")
    (d / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    save_file(model.state_dict(), str(d / "open_clip_model.safetensors"))
    return d


def _word_tokenizer(words: list[str], extra_special: list[str] = ()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", *extra_special]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    if extra_special:
        fast.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return fast


_WORDS = ("a an the of image h e is this what are there yes no adipose tissue lymphocytes tumor cells "
          "answer with or briefly user assistant : ? . , carcinoma lymphoma sarcoma melanoma").split()


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory) -> Path:
    """A tiny transformers CLIPModel folder with a word-level tokenizer and a CLIP image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    tok = _word_tokenizer(_WORDS)
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=32, eos_token_id=tok.eos_token_id,
                          bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    d = tmp_path_factory.mktemp("tiny_hf_clip")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} "
                 "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    """A tiny LlavaForConditionalGeneration (CLIP vision 32px/16px patches -> 4 image tokens with the
    "default" strategy: 4 patches + CLS, CLS dropped) with a word-level tokenizer and a chat template."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = _word_tokenizer(_WORDS, extra_special=["<image>"])
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                      image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=16, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE, image_token="<image>")
    d = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d
