"""Prompt templates as versioned data files (``templates/*.yaml``).

A template file holds ``name``, ``version``, ``task_type``, a ``system`` prompt, a ``user`` prompt
with ``$placeholders`` (``string.Template``: captions with braces need no escaping), ``few_shot``
examples (each the placeholder values of an example plus its ``output``) and the JSON schema the
model's answer must satisfy (``output_schema``). ``name@version`` goes into every sample's
``generator`` field and into the response-cache key, so changing a prompt without bumping its
version would serve stale answers: :func:`load_template` hashes the file and the hash is part of the
tag too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import string
from pathlib import Path
from typing import Any, Mapping

from pathasst.errors import ConfigError

TEMPLATE_DIR = Path(__file__).with_name("templates")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """One prompt template (see the module docstring)."""

    name: str
    version: str
    task_type: str
    system: str
    user: str
    few_shot: tuple[Mapping[str, Any], ...]
    output_schema: Mapping[str, Any]
    digest: str

    @property
    def tag(self) -> str:
        """``name@version+digest``: what samples record and what the cache is keyed by."""
        return f"{self.name}@{self.version}+{self.digest}"

    def _fill(self, text: str, values: Mapping[str, Any]) -> str:
        try:
            return string.Template(text).substitute({k: _text(v) for k, v in values.items()})
        except KeyError as exc:
            raise ConfigError(f"template {self.name}@{self.version}: placeholder ${exc.args[0]} has no value") from None

    def messages(self, values: Mapping[str, Any], example_values: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
        """The chat messages for ``values``: system, the few-shot pairs, then the request.

        Args:
            values: placeholder values (``caption``, ``task``, tool fields ...).
            example_values: extra values few-shot examples inherit when they do not set them.
        """
        system = self._fill(self.system, values)
        out = [{"role": "system", "content": system}]
        for example in self.few_shot:
            if "tool_name" in example and example["tool_name"] != values.get("tool_name"):
                continue  # a tool example teaches that tool only
            ex_values = {**values, **(example_values or {}), **{k: v for k, v in example.items() if k != "output"}}
            out.append({"role": "user", "content": self._fill(self.user, ex_values)})
            out.append({"role": "assistant", "content": json.dumps(example["output"], ensure_ascii=False)})
        out.append({"role": "user", "content": self._fill(self.user, values)})
        return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


@functools.lru_cache(maxsize=None)
def load_template(name: str, folder: str | None = None) -> PromptTemplate:
    """Load ``templates/NAME.yaml`` (or ``folder/NAME.yaml``) and check its schema.

    Raises:
        ConfigError: a missing file, a missing key or an invalid ``output_schema``.
    """
    from pathasst.config import yaml_load
    from pathasst.tools import check_schema

    path = Path(folder or TEMPLATE_DIR) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(folder or TEMPLATE_DIR).glob("*.yaml"))
        raise ConfigError(f"prompt template {name!r} not found in {path.parent}; available: {', '.join(known)}")
    raw = path.read_bytes()
    data = yaml_load(raw.decode()) or {}
    missing = [k for k in ("name", "version", "task_type", "system", "user", "output_schema") if k not in data]
    if missing:
        raise ConfigError(f"prompt template {path}: missing key(s) {', '.join(missing)}")
    try:
        check_schema(data["output_schema"])
    except Exception as exc:  # noqa: BLE001 - jsonschema.SchemaError, reported with the file
        raise ConfigError(f"prompt template {path}: output_schema is not valid JSON Schema: {str(exc)[:200]}") from None
    return PromptTemplate(
        name=str(data["name"]),
        version=str(data["version"]),
        task_type=str(data["task_type"]),
        system=str(data["system"]),
        user=str(data["user"]),
        few_shot=tuple(data.get("few_shot") or ()),
        output_schema=data["output_schema"],
        digest=hashlib.sha256(raw).hexdigest()[:8],
    )
