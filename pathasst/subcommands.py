"""Verbs made of subcommands that live in separate modules (`curate select`, `build subfig`, ...).

Each subcommand module defines ``add_arguments(parser)`` (which sets ``func`` in the parser
defaults). A subcommand whose module has not landed is still listed, and running it says which
issue brings it.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass

from pathasst.errors import NotLandedError


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str
    help: str
    issue: int


def invoked_command(default: str) -> str:
    """The command line as the user typed it (for locks, configs and summaries), else ``default``."""
    import sys

    return "pathasst " + " ".join(sys.argv[1:]) if sys.argv[1:] else default


def add_subcommands(parser: argparse.ArgumentParser, verb: str, subcommands: tuple[Subcommand, ...]) -> None:
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for item in subcommands:
        try:
            module = importlib.import_module(item.module)
        except ModuleNotFoundError as exc:
            if exc.name != item.module:
                raise
            module = None
        if module is not None:
            p = sub.add_parser(item.name, help=item.help, description=item.help[:1].upper() + item.help[1:] + ".")
            module.add_arguments(p)
            continue
        p = sub.add_parser(item.name, help=f"{item.help} (arrives with issue #{item.issue})",
                           description=f"{item.help}. Not available yet: it arrives with issue #{item.issue}.")
        p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=_not_landed(verb, item), accepts_anything=True)


def _not_landed(verb: str, item: Subcommand):
    def run(args: argparse.Namespace) -> int:
        raise NotLandedError(
            f"`pathasst {verb} {item.name}` is not available yet: it arrives with issue #{item.issue}. "
            "Nothing was done."
        )

    return run
