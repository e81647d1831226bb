"""The ``pathclip_zero_shot`` tool: classify an image against text labels with an exported PathCLIP.

A model is an exported folder (``pathasst train pathclip`` writes ``output_dir/model``: the open_clip
layout, see :mod:`pathasst.trainers.clip_export`) or a Hub id of one (``owner/name``, read through
open_clip's ``hf-hub:`` loader, so a Hub cache works offline). Probabilities are CLIP's:
``softmax(logit_scale * cos(image, prompt))`` over the labels, each label's prompt being
``template.format(label)``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Sequence

from pathasst.errors import InputError

DEFAULT_TEMPLATE = "a histopathology image of {}."
_HUB_ID = re.compile(r"^(hf-hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


@functools.lru_cache(maxsize=2)
def load_pathclip(model: str):
    """``(model, preprocess, tokenizer)`` of an exported folder or Hub id (cached: a dialogue calls
    the tool many times with the same model).

    Raises:
        InputError: neither an exported folder nor a Hub id.
    """
    from pathasst.trainers.clip_export import OPEN_CLIP_CONFIG, load_open_clip

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / OPEN_CLIP_CONFIG).is_file():
            raise InputError(f"model={model}: not a PathCLIP folder (no {OPEN_CLIP_CONFIG}); "
                             "give output_dir/model of `pathasst train pathclip`")
        return load_open_clip(path)
    if not _HUB_ID.match(model) or path.suffix or model.startswith((".", "/", "~")):
        raise InputError(f"model={model}: no such folder, and not a Hub id like owner/name")
    import open_clip

    ref = model if model.startswith("hf-hub:") else f"hf-hub:{model}"
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(ref)
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing: say which model
        raise InputError(f"model={model}: cannot load it from the Hub or the Hub cache: {exc}") from None
    return clip.eval(), preprocess, open_clip.get_tokenizer(ref)


def zero_shot(image: Any, labels: Sequence[str], model: str, template: str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """Probabilities of ``labels`` for ``image`` (a PIL image) and the most likely label."""
    import torch

    if "{}" not in template:
        raise InputError(f"template={template!r}: needs a {{}} where the label goes")
    clip, preprocess, tokenizer = load_pathclip(str(model))
    device = next(clip.parameters()).device
    with torch.no_grad():
        img = clip.encode_image(preprocess(image.convert("RGB")).unsqueeze(0).to(device), normalize=True)
        txt = clip.encode_text(tokenizer([template.format(label) for label in labels]).to(device), normalize=True)
        probs = (clip.logit_scale.exp() * img @ txt.T).softmax(dim=-1)[0].tolist()
    best = max(range(len(labels)), key=probs.__getitem__)
    return {"probabilities": {label: float(p) for label, p in zip(labels, probs)}, "label": labels[best],
            "model": str(model)}


__all__ = ["DEFAULT_TEMPLATE", "load_pathclip", "zero_shot"]
