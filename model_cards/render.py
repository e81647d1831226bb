"""Cards rendered from structured data (DESIGN.md §9.10): a card is never edited by hand.

Templates are Jinja2 files in ``model_cards/templates/`` (package data). Jinja2 is what
huggingface_hub's own ``DatasetCard.from_template`` / ``ModelCard.from_template`` use, so a template
here can also be fed to those; we render the body only, because the YAML header (``configs:``,
``dataset_info:``) is written from the data itself by the writer.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Mapping


def template_names() -> list[str]:
    """The card templates shipped with the package."""
    folder = resources.files("pathasst.model_cards") / "templates"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".j2"))


def render(template: str, data: Mapping[str, Any]) -> str:
    """Render the card template ``template`` (a file name in ``templates/``) with ``data``.

    Undefined names fail loudly (``StrictUndefined``): a card silently missing a number is worse than
    no card.

    Raises:
        FileNotFoundError: no such template (the message lists the shipped ones).
        jinja2.UndefinedError: the template uses a name ``data`` does not hold.
    """
    import jinja2

    folder = resources.files("pathasst.model_cards") / "templates"
    path = folder / template
    if not path.is_file():
        raise FileNotFoundError(f"no card template '{template}'; shipped: {', '.join(template_names())}")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int) else str(n)
    return env.from_string(path.read_text(encoding="utf-8")).render(**data)
