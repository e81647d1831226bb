"""PathCLIP export: the open_clip Hub layout, and for ViT models a transformers ``CLIPModel`` too.

One folder serves every loader (DESIGN.md §4, "model folders are the formats the ecosystem already
loads")::

    model/
      open_clip_config.json         {"model_cfg", "preprocess_cfg", "pathasst"}   open_clip
      open_clip_model.safetensors   open_clip's parameter names                     open_clip
      config.json, model.safetensors, preprocessor_config.json,                    transformers
      vocab.json, merges.txt, tokenizer*.json                                      (ViT towers)
      vision_tower/                 CLIPVisionModel + CLIPImageProcessor            PathAsst (#9)

so ``open_clip.create_model_and_transforms("local-dir:model")`` (or ``hf-hub:owner/name`` once
pushed) and ``transformers.CLIPModel.from_pretrained("model")`` both work. open_clip prefers
``open_clip_model.safetensors`` over ``model.safetensors`` when it looks for weights, so the two
weight files never get confused.

Why by hand: ``open_clip.push_to_hf_hub.save_for_hf`` fails with the default tokenizer
(DESIGN.md §8), and transformers has no open_clip converter. The key mapping below is the one the
two architectures imply: ``attn.in_proj_*`` is split into ``q/k/v_proj``, ``proj`` matrices are
transposed into ``nn.Linear`` weights, and the text tower pools at the end-of-text token (the
largest id, which open_clip's ``argmax`` pooling finds and HF finds as ``eos_token_id``).

Towers from transformers (the mini model's MiniLM) travel in the folder: the tower's
``config.json`` and tokenizer files are copied to the root, and ``hf_model_name`` /
``hf_tokenizer_name`` point at the folder's own Hub id (what ``open_clip.push_to_hf_hub`` does for
the tokenizer), never at a path of the machine that trained it. See :func:`load_open_clip` for
loading such a folder from a local path.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from pathasst.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
VISION_TOWER_DIR = "vision_tower"
# files of a transformers text tower that make it loadable without its origin (no weights: the
# weights are part of open_clip_model.safetensors)
HF_TEXT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


# --------------------------------------------------------------------------------------------
# open_clip layout


def open_clip_state_dict(model: "torch.nn.Module") -> dict[str, "torch.Tensor"]:
    """A CPU copy of ``model``'s state dict with contiguous, unshared tensors (safetensors needs both)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def is_hf_text(model_cfg: Mapping[str, Any]) -> bool:
    return bool(model_cfg.get("text_cfg", {}).get("hf_model_name"))


def is_vit_clip(model_cfg: Mapping[str, Any]) -> bool:
    """True for the standard CLIP architecture (ViT image tower, open_clip text transformer) that
    transformers' ``CLIPModel`` can hold."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)) or vision.get("timm_model_name"):
        return False
    if text.get("hf_model_name") or model_cfg.get("multimodal_cfg"):
        return False
    return True


def write_open_clip_folder(
    state: Mapping[str, "torch.Tensor"],
    model_cfg: Mapping[str, Any],
    preprocess_cfg: Mapping[str, Any],
    folder: Path,
    *,
    hf_text_dir: Optional[Path] = None,
    hub_id: Optional[str] = None,
    meta: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (+ a HF text tower's files).

    Args:
        state: open_clip parameter names to tensors (see :func:`open_clip_state_dict`).
        model_cfg: the architecture, as open_clip's JSON configs spell it.
        preprocess_cfg: ``image_size``, ``mean``, ``std``, ``interpolation``, ``resize_mode``.
        folder: written (created if needed).
        hf_text_dir: the transformers text tower's folder: its config and tokenizer are copied.
        hub_id: the Hub id this folder will be published as; a HF text tower's
            ``hf_model_name``/``hf_tokenizer_name`` point at it (open_clip resolves them there).
        meta: our own section (``pathasst``): recipe, training data, evaluation.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(dict(model_cfg))
    if is_hf_text(cfg):
        if hf_text_dir is None:
            raise ConfigError("exporting a model with a transformers text tower needs its folder (hf_text_dir)")
        for name in HF_TEXT_FILES:
            if (Path(hf_text_dir) / name).is_file():
                shutil.copyfile(Path(hf_text_dir) / name, folder / name)
        text = cfg["text_cfg"]
        text["hf_model_name"] = hub_id or text["hf_model_name"]
        text["hf_tokenizer_name"] = hub_id or text.get("hf_tokenizer_name") or text["hf_model_name"]
        text.pop("hf_model_pretrained", None)
    cfg.pop("custom_text", None) if is_hf_text(cfg) else None  # implied by hf_model_name
    if cfg.get("vision_cfg", {}).get("timm_model_name"):
        cfg["vision_cfg"]["timm_model_pretrained"] = False  # the weights are in this folder
    config = {"model_cfg": cfg, "preprocess_cfg": dict(preprocess_cfg)}
    if meta:
        config["pathasst"] = dict(meta)
    save_file(dict(state), str(folder / OPEN_CLIP_WEIGHTS), metadata={"format": "pt"})
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2))
    return folder


def read_open_clip_config(folder: Path) -> dict[str, Any]:
    """The ``open_clip_config.json`` of an exported folder.

    Raises:
        ConfigError: no such file (naming what the folder holds instead).
    """
    path = Path(folder) / OPEN_CLIP_CONFIG
    if not path.is_file():
        held = ", ".join(sorted(p.name for p in Path(folder).iterdir())[:8]) if Path(folder).is_dir() else "nothing"
        raise ConfigError(f"{folder} is not an exported PathCLIP/open_clip folder: no {OPEN_CLIP_CONFIG} (holds {held})")
    return json.loads(path.read_text())


def load_open_clip(folder: str | Path, device: str = "cpu"):
    """``(model, preprocess, tokenizer)`` of an exported folder, offline, whatever its text tower.

    ViT models load with plain ``open_clip.create_model_and_transforms("local-dir:...")``. A folder
    with a transformers text tower names its tower by the folder's Hub id, which a local copy cannot
    resolve offline; here the tower is pointed at the folder itself (an override passed to
    ``create_model_and_transforms``, which is open_clip's own mechanism).
    """
    import open_clip

    folder = Path(folder)
    cfg = read_open_clip_config(folder)["model_cfg"]
    kwargs: dict[str, Any] = {}
    if is_hf_text(cfg):
        text_cfg = dict(cfg["text_cfg"])
        text_cfg["hf_model_name"] = str(folder.resolve())
        text_cfg["hf_tokenizer_name"] = str(folder.resolve())
        text_cfg["hf_model_pretrained"] = False  # the weights are open_clip_model.safetensors
        kwargs["text_cfg"] = text_cfg
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device, **kwargs)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model.eval(), preprocess, tokenizer


# --------------------------------------------------------------------------------------------
# transformers CLIPModel


def _check_convertible(model_cfg: Mapping[str, Any]) -> None:
    if not is_vit_clip(model_cfg):
        raise ConfigError("transformers CLIPModel export needs a ViT image tower and open_clip's text transformer")
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    unsupported = {
        "vision_cfg.pool_type": vision.get("pool_type", "tok") != "tok",
        "vision_cfg.final_ln_after_pool": bool(vision.get("final_ln_after_pool")),
        "vision_cfg.no_ln_pre": bool(vision.get("no_ln_pre")),
        "vision_cfg.attentional_pool": bool(vision.get("attentional_pool")),
        "vision_cfg.ls_init_value": vision.get("ls_init_value") is not None,
        "vision_cfg.patch_dropout": bool(vision.get("patch_dropout")),
        "text_cfg.pool_type": text.get("pool_type", "argmax") != "argmax",
        "text_cfg.embed_cls": bool(text.get("embed_cls")),
        "text_cfg.proj_bias": bool(text.get("proj_bias")),
        "text_cfg.ls_init_value": text.get("ls_init_value") is not None,
        "text_cfg.no_causal_mask": bool(text.get("no_causal_mask")),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ConfigError(f"transformers CLIPModel has no equivalent of {', '.join(bad)}; export with export_hf=false")


def hf_clip_config(model_cfg: Mapping[str, Any], logit_scale: float):
    """The transformers ``CLIPConfig`` equivalent to an open_clip ViT CLIP config."""
    from transformers import CLIPConfig

    _check_convertible(model_cfg)
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    v_width = vision.get("width", 768)
    t_width = text.get("width", 512)
    context = text.get("context_length", 77)
    return CLIPConfig(
        text_config=dict(
            vocab_size=text.get("vocab_size", 49408),
            hidden_size=t_width,
            intermediate_size=int(t_width * text.get("mlp_ratio", 4.0)),
            num_hidden_layers=text.get("layers", 12),
            num_attention_heads=text.get("heads", 8),
            max_position_embeddings=context,
            hidden_act=act,
            layer_norm_eps=1e-5,
            projection_dim=model_cfg["embed_dim"],
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=v_width,
            intermediate_size=int(v_width * vision.get("mlp_ratio", 4.0)),
            num_hidden_layers=vision.get("layers", 12),
            num_attention_heads=v_width // vision.get("head_width", 64),
            image_size=vision.get("image_size", 224),
            patch_size=vision.get("patch_size", 16),
            hidden_act=act,
            layer_norm_eps=1e-5,
            projection_dim=model_cfg["embed_dim"],
        ),
        projection_dim=model_cfg["embed_dim"],
        logit_scale_init_value=float(logit_scale),
    )


def _split_qkv(out: dict, prefix: str, weight: "torch.Tensor", bias: "torch.Tensor") -> None:
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3, 0), bias.chunk(3, 0)):
        out[f"{prefix}.self_attn.{name}.weight"] = w.contiguous()
        out[f"{prefix}.self_attn.{name}.bias"] = b.contiguous()


def _blocks(state: Mapping[str, "torch.Tensor"], src: str, dst: str, layers: int, out: dict) -> None:
    for i in range(layers):
        s, d = f"{src}.{i}", f"{dst}.{i}"
        _split_qkv(out, d, state[f"{s}.attn.in_proj_weight"], state[f"{s}.attn.in_proj_bias"])
        for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[f"{d}.{b}.weight"] = state[f"{s}.{a}.weight"]
            out[f"{d}.{b}.bias"] = state[f"{s}.{a}.bias"]


def open_clip_to_hf(state: Mapping[str, "torch.Tensor"], model_cfg: Mapping[str, Any]) -> dict[str, "torch.Tensor"]:
    """Rename (and split/transpose) an open_clip ViT CLIP state dict into ``CLIPModel``'s names.

    Raises:
        ConfigError: a parameter the mapping does not account for (nothing is dropped silently).
    """
    _check_convertible(model_cfg)
    out: dict[str, Any] = {}
    v_layers = model_cfg["vision_cfg"].get("layers", 12)
    t_layers = model_cfg["text_cfg"].get("layers", 12)
    out["vision_model.embeddings.class_embedding"] = state["visual.class_embedding"]
    out["vision_model.embeddings.patch_embedding.weight"] = state["visual.conv1.weight"]
    out["vision_model.embeddings.position_embedding.weight"] = state["visual.positional_embedding"]
    for a, b in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                 ("ln_final", "text_model.final_layer_norm")):
        out[f"{b}.weight"], out[f"{b}.bias"] = state[f"{a}.weight"], state[f"{a}.bias"]
    _blocks(state, "visual.transformer.resblocks", "vision_model.encoder.layers", v_layers, out)
    _blocks(state, "transformer.resblocks", "text_model.encoder.layers", t_layers, out)
    out["visual_projection.weight"] = state["visual.proj"].t()
    out["text_model.embeddings.token_embedding.weight"] = state["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = state["positional_embedding"]
    out["text_projection.weight"] = state["text_projection"].t()
    out["logit_scale"] = state["logit_scale"]
    used = {"visual.class_embedding", "visual.conv1.weight", "visual.positional_embedding", "visual.proj",
            "token_embedding.weight", "positional_embedding", "text_projection", "logit_scale", "attn_mask"}
    used |= {f"{a}.{p}" for a in ("visual.ln_pre", "visual.ln_post", "ln_final") for p in ("weight", "bias")}
    leftover = [k for k in state if k not in used and not k.startswith(("visual.transformer.resblocks.", "transformer.resblocks."))]
    if leftover:
        raise ConfigError(f"transformers CLIPModel export: no mapping for {', '.join(leftover[:5])}")
    return {k: v.contiguous().clone() for k, v in out.items()}


def clip_bpe_tokenizer(context_length: int):
    """open_clip's BPE vocabulary (``SimpleTokenizer``) as a transformers ``CLIPTokenizer``.

    Same vocabulary, merges and ids (the start/end tokens are spelled ``<|startoftext|>`` /
    ``<|endoftext|>`` as in OpenAI's files); ``model_max_length`` is the text tower's context.
    """
    import gzip

    from open_clip.tokenizer import SimpleTokenizer, default_bpe
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    rename = {"<start_of_text>": SOT, "<end_of_text>": EOT}
    vocab = {rename.get(tok, tok): idx for tok, idx in simple.encoder.items()}
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    tok = CLIPTokenizer(vocab=vocab, merges=merges, unk_token=EOT, bos_token=SOT, eos_token=EOT, pad_token=EOT,
                        model_max_length=context_length)
    return tok


def _load_exact(model, state: Mapping[str, "torch.Tensor"], what: str) -> None:
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # buffers transformers recreates
    if missing or unexpected:
        raise ConfigError(f"transformers {what} export: missing {missing[:5]}, unexpected {unexpected[:5]}")


def write_hf_clip(state: Mapping[str, "torch.Tensor"], model_cfg: Mapping[str, Any],
                  preprocess_cfg: Mapping[str, Any], folder: Path, *, vision_tower: bool = True) -> None:
    """Write a transformers ``CLIPModel`` + ``CLIPProcessor`` into ``folder`` (beside the open_clip
    files) and, with ``vision_tower``, a ``CLIPVisionModel`` + ``CLIPImageProcessor`` in
    ``folder/vision_tower``."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig, CLIPVisionModel

    logit_scale = float(state["logit_scale"])
    config = hf_clip_config(model_cfg, logit_scale)
    model = CLIPModel(config)
    hf_state = open_clip_to_hf(state, model_cfg)
    _load_exact(model, hf_state, "CLIPModel")
    model.save_pretrained(folder)
    size = int(preprocess_cfg.get("image_size", model_cfg["vision_cfg"].get("image_size", 224)) if not isinstance(
        preprocess_cfg.get("image_size"), (list, tuple)) else preprocess_cfg["image_size"][0])
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(preprocess_cfg["mean"]), image_std=list(preprocess_cfg["std"]), do_convert_rgb=True,
    )
    tokenizer = clip_bpe_tokenizer(model_cfg["text_cfg"].get("context_length", 77))
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    if vision_tower:
        vmodel = CLIPVisionModel(CLIPVisionConfig(**config.vision_config.to_dict()))
        vstate = {k: v for k, v in hf_state.items() if k.startswith("vision_model.")}
        if not any(k.startswith("vision_model.") for k in vmodel.state_dict()):  # transformers 5 names
            vstate = {k.removeprefix("vision_model."): v for k, v in vstate.items()}
        _load_exact(vmodel, vstate, "CLIPVisionModel")
        vdir = folder / VISION_TOWER_DIR
        vmodel.save_pretrained(vdir)
        image_processor.save_pretrained(vdir)


__all__ = [
    "OPEN_CLIP_CONFIG",
    "OPEN_CLIP_WEIGHTS",
    "VISION_TOWER_DIR",
    "clip_bpe_tokenizer",
    "hf_clip_config",
    "is_hf_text",
    "is_vit_clip",
    "load_open_clip",
    "open_clip_state_dict",
    "open_clip_to_hf",
    "read_open_clip_config",
    "write_hf_clip",
    "write_open_clip_folder",
]
