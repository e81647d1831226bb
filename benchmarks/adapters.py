"""Model adapters: one small interface per model family, so every task runs every model the same way.

- :class:`EmbeddingAdapter` (zero-shot and retrieval): ``encode_images`` / ``encode_texts`` return
  L2-normalised float32 arrays. Implementations: open_clip (a ``local-dir:`` folder with
  ``open_clip_config.json`` + weights, or ``hf-hub:owner/name``) and transformers ``CLIPModel``.
- :class:`GenerativeAdapter` (VQA, multiple choice): ``generate(image, prompt)`` returns the text.
  Implementations: any ``AutoModelForImageTextToText`` folder with its processor (LLaVA, PathAsst,
  LLaVA-Med or Quilt-LLaVA in HF format), and OpenAI-compatible endpoints
  (:mod:`pathasst.endpoint`), which receive the same prompt text and the image as a PNG data URL.

The family is read from the folder's files (``open_clip_config.json``, ``config.json``'s
``model_type``), never from the model's name.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pathasst.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def _finite_normalized(x: np.ndarray, what: str, model_id: str) -> np.ndarray:
    """L2-normalise rows; refuse NaN/inf or all-zero rows with a message naming the model."""
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        idx = np.nonzero(bad)[0]
        raise InputError(f"model {model_id} returned NaN or infinite {what} embeddings for {len(idx)} of "
                         f"{len(x)} inputs (first: {idx[:5].tolist()}); the weights or the input "
                         "preprocessing are broken, no score was computed")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError(f"model {model_id} returned all-zero {what} embeddings for {(norms == 0).sum()} inputs")
    return x / norms


def folder_fingerprint(path: Path) -> str:
    """``sha256:`` of the model folder's config files and the size and first MiB of each weight
    file: identifies a checkpoint without reading gigabytes."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if not p.is_file():
            continue
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + str(p.stat().st_size).encode())
        with open(p, "rb") as fh:
            h.update(fh.read(1 << 20))
    return "sha256:" + h.hexdigest()[:12]


class EmbeddingAdapter:
    """Image and text encoders of a contrastive model."""

    model_id: str
    revision: Optional[str]
    kind = "embedding"

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


def _pathclip_loader():
    """PathCLIP's folder loader (issue #7) when that module is installed, else None."""
    try:
        from pathasst.trainers.clip_export import load_open_clip
    except ImportError:
        return None
    return load_open_clip


class OpenClipAdapter(EmbeddingAdapter):
    """open_clip model from ``local-dir:PATH`` (or a folder holding ``open_clip_config.json``) or
    ``hf-hub:owner/name`` (from the Hub cache when offline)."""

    def __init__(self, spec: str, device: str = "cpu"):
        import open_clip
        import torch

        if not spec.startswith(("local-dir:", "hf-hub:")):
            spec = "local-dir:" + spec
        self.model_id = spec
        if spec.startswith("local-dir:"):
            path = Path(spec[len("local-dir:"):]).expanduser()
            self.model_id = f"local-dir:{path.resolve().name}"
            self.revision = folder_fingerprint(path)
            spec = "local-dir:" + str(path)
        else:
            self.revision = None
        try:
            if spec.startswith("local-dir:") and _pathclip_loader() is not None:
                # a PathCLIP export whose text tower is a transformers model names that tower by the
                # folder's Hub id; its loader points it at the local folder instead (offline)
                model, preprocess, self.tokenizer = _pathclip_loader()(spec[len("local-dir:"):], device)
            else:
                model, preprocess = open_clip.create_model_from_pretrained(spec, device=device)
                self.tokenizer = open_clip.get_tokenizer(spec)
        except Exception as exc:  # noqa: BLE001 - open_clip raises many kinds for a bad folder
            raise InputError(f"--model {self.model_id}: open_clip cannot load it ({type(exc).__name__}: {exc})") from None
        self.model = model.eval()
        self.preprocess = preprocess
        self.device = device
        self._torch = torch

    def encode_images(self, images):
        torch = self._torch
        batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        with torch.no_grad():
            out = self.model.encode_image(batch)
        return _finite_normalized(out.float().cpu().numpy(), "image", self.model_id)

    def encode_texts(self, texts):
        torch = self._torch
        with torch.no_grad():
            out = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return _finite_normalized(out.float().cpu().numpy(), "text", self.model_id)


class HFClipAdapter(EmbeddingAdapter):
    """transformers ``CLIPModel`` folder (``config.json`` with ``model_type: clip``) with its
    tokenizer and image processor."""

    def __init__(self, path: str, device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        p = Path(path).expanduser()
        self.model_id = p.resolve().name if p.exists() else path
        self.revision = folder_fingerprint(p) if p.exists() else None
        try:
            self.model = CLIPModel.from_pretrained(str(p) if p.exists() else path).eval().to(device)
            self.tokenizer = AutoTokenizer.from_pretrained(str(p) if p.exists() else path)
            self.processor = AutoImageProcessor.from_pretrained(str(p) if p.exists() else path)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"--model {path}: transformers cannot load it as a CLIPModel with its tokenizer "
                             f"and image processor ({type(exc).__name__}: {str(exc)[:300]})") from None
        self.device = device
        self._torch = torch
        self.max_length = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))

    def encode_images(self, images):
        torch = self._torch
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.get_image_features(**inputs)
        out = getattr(out, "pooler_output", out)  # transformers 5 may return an output object
        return _finite_normalized(out.float().cpu().numpy(), "image", self.model_id)

    def encode_texts(self, texts):
        torch = self._torch
        inputs = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        inputs.pop("token_type_ids", None)
        with torch.no_grad():
            out = self.model.get_text_features(**inputs)
        out = getattr(out, "pooler_output", out)
        return _finite_normalized(out.float().cpu().numpy(), "text", self.model_id)


class GenerativeAdapter:
    """Answers a text prompt about one image."""

    model_id: str
    revision: Optional[str]
    kind = "generative"

    def generate(self, image: Any, prompt: str, *, max_new_tokens: int) -> str:  # pragma: no cover
        raise NotImplementedError


class ImageTextToTextAdapter(GenerativeAdapter):
    """Any ``AutoModelForImageTextToText`` folder with an ``AutoProcessor`` that has a chat template.

    The user turn is ``[image, text]``; decoding is greedy (``do_sample=False``) with the task's
    ``max_new_tokens``; only the new tokens are decoded, special tokens skipped.
    """

    def __init__(self, path: str, device: str = "cpu"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        p = Path(path).expanduser()
        src = str(p) if p.exists() else path
        self.model_id = p.resolve().name if p.exists() else path
        self.revision = folder_fingerprint(p) if p.exists() else None
        try:
            self.processor = AutoProcessor.from_pretrained(src)
            self.model = AutoModelForImageTextToText.from_pretrained(src).eval().to(device)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"--model {path}: transformers cannot load it as an image-text-to-text model with "
                             f"its processor ({type(exc).__name__}: {str(exc)[:300]})") from None
        if not getattr(self.processor, "chat_template", None):
            raise InputError(f"--model {path}: its processor has no chat template; the prompt format would be a guess")
        self.device = device
        self._torch = torch

    def generate(self, image, prompt, *, max_new_tokens):
        torch = self._torch
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=[image.convert("RGB")], text=[text], return_tensors="pt").to(self.device)
        tok = self.processor.tokenizer
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        return tok.decode(new, skip_special_tokens=True).strip()


class EndpointAdapter(GenerativeAdapter):
    """An OpenAI-compatible chat endpoint (:class:`pathasst.endpoint.ChatEndpoint`): same prompt
    text, the image as a PNG data URL, temperature 0, the task's token limit."""

    def __init__(self, model: str, base_url: str, *, cache_dir: Optional[Path] = None):
        from pathasst.endpoint import ChatEndpoint, EndpointConfig, ResponseCache

        cfg = EndpointConfig(base_url=base_url, model=model, temperature=0.0)
        cfg.check()
        cache = ResponseCache(cache_dir / "endpoint_cache.sqlite") if cache_dir else None
        self.endpoint = ChatEndpoint(cfg, cache=cache)
        self.model_id = f"endpoint:{model}"
        self.revision = None  # a hosted model's weights are not identifiable from here
        self.template_version = ""

    def generate(self, image, prompt, *, max_new_tokens):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": prompt},
        ]}]
        completion = self.endpoint.complete(messages, template_version=self.template_version,
                                            temperature=0.0, max_tokens=max_new_tokens)
        return (completion.text or "").strip()


def load_model(spec: str, *, kind: str, base_url: Optional[str] = None, device: str = "cpu",
               cache_dir: Optional[Path] = None):
    """The adapter for ``spec``, checked against what the task needs (``embedding``/``generative``).

    ``spec`` forms: ``local-dir:PATH`` or ``hf-hub:ID`` (open_clip); ``hf-clip:PATH`` (a folder read
    as a transformers ``CLIPModel`` even when it also holds the open_clip layout); ``endpoint:MODEL`` with
    ``base_url``; a folder (family read from its files) or a Hub id in the local Hub cache
    (transformers).

    Raises:
        InputError / ConfigError: unknown form, wrong family for the task, unloadable model.
    """
    if kind == "selector":
        from pathasst.trainers.selector import Selector

        selector = Selector.load(spec, device="cpu" if device == "cpu" else device)
        selector.model_id = Path(spec).resolve().name if Path(spec).exists() else spec
        selector.revision = folder_fingerprint(Path(spec)) if Path(spec).is_dir() else None
        selector.kind = "selector"
        return selector
    if kind not in ("embedding", "generative"):
        from pathasst.errors import NotLandedError

        raise NotLandedError(f"component tasks on {kind} models have no runner yet; the task is registered so that "
                             "results computed elsewhere can be submitted and validated")
    if spec.startswith("endpoint:"):
        if not base_url:
            raise ConfigError(f"--model {spec}: an endpoint model needs --base-url (the API root, e.g. http://127.0.0.1:8000/v1)")
        adapter = EndpointAdapter(spec[len("endpoint:"):], base_url, cache_dir=cache_dir)
    elif spec.startswith(("local-dir:", "hf-hub:")):
        adapter = OpenClipAdapter(spec, device)
    elif spec.startswith("hf-clip:"):  # a folder holding both layouts (PathCLIP), read as transformers CLIPModel
        adapter = HFClipAdapter(spec[len("hf-clip:"):], device)
    else:
        path = Path(spec).expanduser()
        if path.is_dir() and (path / "open_clip_config.json").exists():
            adapter = OpenClipAdapter(str(path), device)
        else:
            if path.is_dir():
                cfg_path = path / "config.json"
                if not cfg_path.exists():
                    raise InputError(f"--model {spec}: the folder has neither open_clip_config.json nor config.json")
                model_type = json.loads(cfg_path.read_text()).get("model_type")
            else:
                if spec.count("/") != 1:
                    raise InputError(f"--model {spec}: no such folder, and not a Hub id (owner/name), "
                                     "local-dir:PATH, hf-hub:ID or endpoint:MODEL")
                from transformers import AutoConfig

                try:
                    model_type = AutoConfig.from_pretrained(spec).model_type
                except Exception as exc:  # noqa: BLE001
                    raise InputError(f"--model {spec}: cannot read its config ({type(exc).__name__}); offline, "
                                     "download it first or pass a local folder") from None
            adapter = HFClipAdapter(spec, device) if model_type == "clip" else ImageTextToTextAdapter(spec, device)
    if adapter.kind != kind:
        need = "a contrastive image-text model (open_clip or CLIPModel)" if kind == "embedding" else \
            "a generative model (image-text-to-text or an endpoint)"
        raise ConfigError(f"--model {spec} is a {adapter.kind} model but this task needs {need}")
    return adapter
