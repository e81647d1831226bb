"""The model families ``pathasst train FAMILY`` knows, and the command-line convention they share.

Every family is one entry point ``main(argv) -> int`` (DESIGN.md §9.7), called in-process by the
CLI and by tests, and reads its arguments the same way::

    pathasst train FAMILY [--recipe NAME_OR_FILE] [key=value ...]

A bare recipe NAME is ``trainers/recipes/FAMILY/NAME.yaml`` (shipped as package data); anything
else is a file path. Overrides are ``key=value`` with the config's keys: the shared training keys
(``max_steps=100 output_dir=runs/x``, see :class:`pathasst.trainers.loop.TrainArgs`) and the
family's own, dotted for nested sections.

Families whose code has not landed are listed with ``entry=None``: the CLI can show them in its
help and answer with the issue that brings them instead of an import error.

Importing this module is cheap: entries are import paths, resolved only when a family runs.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence, TypeVar

from pathasst.config import load_config, resolve_recipe
from pathasst.errors import ConfigError, NotLandedError

T = TypeVar("T")


@dataclass(frozen=True)
class FamilySpec:
    """One trainable model family.

    Attributes:
        name: the CLI word (``pathasst train NAME``) and the recipe folder name.
        description: one line for ``--help``.
        issue: the issue that brings (or brought) the family.
        entry: ``"module:function"`` of its ``main(argv) -> int``; None while not landed.
        main: the function itself, for families registered at run time (tests, plugins);
            takes precedence over ``entry``.
    """

    name: str
    description: str
    issue: Optional[int] = None
    entry: Optional[str] = None
    main: Optional[Callable[[list[str]], Optional[int]]] = None

    @property
    def landed(self) -> bool:
        return self.main is not None or self.entry is not None


_FAMILIES: dict[str, FamilySpec] = {}


def register(spec: FamilySpec, replace: bool = False) -> FamilySpec:
    """Add a family (or, with ``replace``, swap an existing one, e.g. when its code lands).

    Raises:
        ValueError: the name is taken and ``replace`` is false.
    """
    if spec.name in _FAMILIES and not replace:
        raise ValueError(f"model family '{spec.name}' is already registered")
    _FAMILIES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a family (tests that registered one clean up with this)."""
    _FAMILIES.pop(name, None)


for _spec in (
    FamilySpec("selector", "ConvNeXt-Tiny pathology-image selector (timm)", issue=4,
               entry="pathasst.trainers.selector:main"),
    # ultralytics brings its own training loop (data YAML, augmentation, mosaic, EMA, its own
    # checkpoints and resume): re-implementing it over loop.train would be a fork of a maintained
    # engine (DESIGN.md §6, "nothing home-made where an existing engine does the job"). The subfig
    # family therefore keeps ultralytics' loop and only follows the same command-line convention
    # (--recipe + key=value, resolved config beside the output, same exit codes).
    FamilySpec("subfig", "YOLO subfigure and panel-label detector (ultralytics, its own loop)", issue=4,
               entry="pathasst.trainers.subfig:main"),
    FamilySpec("splitter", "LLM caption splitter/refiner fine-tuned with PEFT LoRA", issue=5,
               entry="pathasst.trainers.splitter:main"),
    FamilySpec("pathclip", "PathCLIP contrastive image-text models (open_clip)", issue=7,
               entry="pathasst.trainers.pathclip:main"),
    FamilySpec("pathasst", "PathAsst LLaVA-style assistant: projector and instruction stages", issue=9,
               entry="pathasst.trainers.pathasst:main"),
):
    register(_spec)


def families() -> list[FamilySpec]:
    """All registered families, in registration order."""
    return list(_FAMILIES.values())


def get(name: str) -> FamilySpec:
    """The family called ``name``.

    Raises:
        ConfigError: unknown name; the message lists the known ones.
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown model family '{name}'; known: {', '.join(_FAMILIES)}"
        ) from None


def _load_entry(spec: FamilySpec) -> Callable[[list[str]], Optional[int]]:
    if spec.main is not None:
        return spec.main
    assert spec.entry is not None
    module_name, _, attr = spec.entry.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "main")


def run(family: str, argv: Sequence[str] = ()) -> int:
    """Run ``pathasst train FAMILY argv...`` and return its exit code.

    Raises:
        ConfigError: unknown family.
        NotLandedError: the family is known but its code has not landed yet.
    """
    spec = get(family)
    if not spec.landed:
        issue = f"issue #{spec.issue}" if spec.issue is not None else "a later issue"
        raise NotLandedError(
            f"`pathasst train {spec.name}` is not available yet: it arrives with {issue} "
            f"({spec.description})"
        )
    code = _load_entry(spec)(list(argv))
    return 0 if code is None else int(code)


def recipe_dir(family: str) -> Path:
    """Folder of a family's named recipes: ``trainers/recipes/<family>/`` (may not exist yet)."""
    return Path(str(resources.files("pathasst.trainers.recipes"))) / family


def accelerate_config_dir() -> Path:
    """Folder of the accelerate launcher configs (single_gpu, ddp, fsdp, deepspeed_zero2/3)."""
    return recipe_dir("accelerate")


class TrainArgv(NamedTuple):
    """What ``parse_train_argv`` found: the recipe file (None: defaults only) and the overrides."""

    recipe: Optional[Path]
    overrides: list[str]


def _parser(family: Optional[str]) -> argparse.ArgumentParser:
    prog = f"pathasst train {family}" if family else "pathasst train FAMILY"
    names = ""
    if family and recipe_dir(family).is_dir():
        names = ", ".join(sorted(p.stem for p in recipe_dir(family).glob("*.yaml")))
    parser = argparse.ArgumentParser(
        prog=prog,
        exit_on_error=False,
        description=(get(family).description if family in _FAMILIES else None),
        epilog="Overrides are key=value, e.g. max_steps=100 lr=3e-4 output_dir=runs/x. "
        "Launch on several GPUs with: accelerate launch --config_file CONFIG -m pathasst.cli train ...",
    )
    parser.add_argument(
        "--recipe",
        metavar="NAME_OR_FILE",
        help="recipe YAML file, or the name of a shipped recipe" + (f" ({names})" if names else ""),
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def parse_train_argv(argv: Sequence[str], family: Optional[str] = None) -> TrainArgv:
    """Parse ``[--recipe NAME_OR_FILE] [key=value ...]``.

    Args:
        argv: the arguments after ``pathasst train FAMILY``.
        family: resolves a bare recipe NAME in :func:`recipe_dir` (without it only files work).

    Returns:
        The resolved recipe path (or None) and the override strings, in order.

    Raises:
        ConfigError: unknown option, an argument that is not ``key=value``, a recipe not found.
        SystemExit: ``--help`` (argparse prints the usage).
    """
    parser = _parser(family)
    try:
        ns, unknown = parser.parse_known_intermixed_args(list(argv))
    except argparse.ArgumentError as exc:
        raise ConfigError(f"{parser.prog}: {exc}") from None
    if unknown:
        raise ConfigError(f"{parser.prog}: unknown option(s) {' '.join(unknown)}")
    bad = [item for item in ns.overrides if "=" not in item or item.startswith("=")]
    if bad:
        raise ConfigError(f"{parser.prog}: expected key=value overrides, got {' '.join(bad)}")
    recipe = None
    if ns.recipe:
        recipe = resolve_recipe(ns.recipe, recipe_dir(family) if family else None)
    return TrainArgv(recipe, list(ns.overrides))


def load_family_config(schema: type[T], family: str, argv: Sequence[str]) -> T:
    """``parse_train_argv`` + :func:`pathasst.config.load_config`: a family's typed config.

    The one line a family's ``main(argv)`` starts with.
    """
    parsed = parse_train_argv(argv, family)
    return load_config(schema, parsed.recipe, parsed.overrides, recipe_dir=recipe_dir(family))


__all__ = [
    "FamilySpec",
    "TrainArgv",
    "accelerate_config_dir",
    "families",
    "get",
    "load_family_config",
    "parse_train_argv",
    "recipe_dir",
    "register",
    "run",
    "unregister",
]
