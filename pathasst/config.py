"""Typed configuration: dataclass defaults <- YAML recipe <- ``key=value`` overrides.

OmegaConf's structured configs do the merging and the type checking (the same engine Hydra
uses); this module only turns its exceptions into one message that names the offending key and
where it came from (the recipe file or the command line), before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from pathasst.errors import ConfigError

T = TypeVar("T")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are booleans.

    PyYAML follows YAML 1.1, where `no`, `off`, `yes`, `on` are booleans, so `mixed_precision: no`
    would arrive as False. Typed fields that want booleans still get them: OmegaConf converts the
    strings "yes"/"no"/"on"/"off" for bool-typed keys.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def yaml_load(text: str):
    """Parse YAML with YAML 1.2 booleans (see :class:`_Yaml12Loader`)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass

# Keys whose values never reach disk or logs (DESIGN.md §6): matched case-insensitively on the
# last component of a dotted key.
_SECRET_KEY = re.compile(r"(^|_)(token|key|secret|password)$", re.IGNORECASE)
REDACTED = "<redacted>"


def resolve_recipe(recipe: str | Path, recipe_dir: Path | None = None) -> Path:
    """Find a recipe file: an existing path, or a bare NAME looked up as ``recipe_dir/NAME.yaml``.

    Raises:
        ConfigError: when neither exists; the message lists the recipes that do.
    """
    path = Path(recipe)
    if path.is_file():
        return path
    if recipe_dir is not None and path.suffix == "" and path.name == str(recipe):
        candidate = recipe_dir / f"{recipe}.yaml"
        if candidate.is_file():
            return candidate
        known = sorted(p.stem for p in recipe_dir.glob("*.yaml")) if recipe_dir.is_dir() else []
        raise ConfigError(
            f"recipe '{recipe}' not found in {recipe_dir}; available: {', '.join(known) or 'none'}"
        )
    raise ConfigError(f"recipe file not found: {recipe}")


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (dotted keys allowed) into a nested dict, values as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)) and not raw.lstrip().startswith(("{", "[")):
            value = raw  # "license=CC BY: see site" is text, not a YAML mapping

        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return nested


def _merge(base, layer: dict[str, Any], origin: str):
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(base, OmegaConf.create(layer))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"{origin}: invalid key '{key}': {first_line}") from None


def load_config(
    schema: type[T],
    recipe: str | Path | None = None,
    overrides: Iterable[str] = (),
    recipe_dir: Path | None = None,
) -> T:
    """Build a typed config from its dataclass, an optional recipe and command-line overrides.

    Args:
        schema: dataclass type holding every key with its type and default.
        recipe: a YAML file, or a bare recipe name resolved in ``recipe_dir``.
        overrides: ``key=value`` strings; dotted keys reach nested dataclasses.
        recipe_dir: folder of named recipes.

    Returns:
        An instance of ``schema``; its ``__post_init__`` checks have run.

    Raises:
        ConfigError: naming the key and the recipe file or override that is wrong.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.structured(schema)
    origin_file = "defaults"
    if recipe is not None:
        path = resolve_recipe(recipe, recipe_dir)
        origin_file = str(path)
        try:
            data = yaml_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of keys to values")
        cfg = _merge(cfg, data, f"recipe {path}")
    overrides = list(overrides)
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), f"command-line override ({' '.join(overrides)})")
        # a check that spans keys cannot tell which layer broke it: name both
        origin_file = f"{origin_file} with overrides ({' '.join(overrides)})"
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{origin_file}: key '{key}': {str(exc).splitlines()[0]}") from None
    except (ValueError, TypeError) as exc:  # raised by the dataclass's own __post_init__ checks
        raise ConfigError(f"{origin_file}: {exc}") from None
    return obj  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON-compatible dict of a dataclass config (paths as strings)."""
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    return json.loads(json.dumps(cfg, default=str))


def redact(data: Any) -> Any:
    """Copy of ``data`` with every secret-looking key's value replaced by ``<redacted>``."""
    if isinstance(data, dict):
        return {
            k: (REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def config_hash(cfg: Any, ignore: Iterable[str] = ()) -> str:
    """Stable hash of what a config means for the output; keys in ``ignore`` (top level) don't count."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in set(ignore)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def write_resolved_config(cfg: Any, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the resolved config as YAML beside an output, secrets redacted."""
    data = redact(to_dict(cfg))
    if extra:
        data = {**data, **redact(to_dict(extra))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)
    return path
