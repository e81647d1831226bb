"""The `pathasst` command: one tool whose verbs mirror the repository's folders (DESIGN.md §5).

A verb whose implementation has not landed yet is still listed, with its planned usage in
``--help``; running it says which issue brings it and exits 2. It never fakes a success.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from pathasst import __version__
from pathasst.errors import NotLandedError, PathasstError


@dataclass(frozen=True)
class Verb:
    """One CLI verb.

    Attributes:
        name: the verb.
        help: one line for ``pathasst --help``.
        folder: the repository folder that implements it.
        issue: the issue that brings it, while it has not landed.
        usage: what the verb will accept, shown in ``--help`` before it lands.
        module: ``module:function`` of a landed verb's ``add_arguments(parser)``; the function
            sets ``func`` in the parser defaults.
    """

    name: str
    help: str
    folder: str
    issue: int | None = None
    usage: str = ""
    module: str | None = None


VERBS: tuple[Verb, ...] = (
    Verb("extract", "figure-caption records from PDFs, PMC OA packages, web pages, private folders",
         "dataset_builders", module="pathasst.dataset_builders.extract.cli:add_arguments"),
    Verb("curate", "select, detect subfigures, split/align/refine captions, dedup, decontaminate",
         "dataset_builders", module="pathasst.dataset_builders.curate.cli:add_arguments"),
    Verb("generate", "instruction data (PathInstruct) through any OpenAI-compatible endpoint",
         "dataset_builders", module="pathasst.dataset_builders.generate.cli:add_arguments"),
    Verb("build", "assemble the published datasets (PathCap, PathInstruct, PathSubfig)",
         "dataset_builders", module="pathasst.dataset_builders.build.cli:add_arguments"),
    Verb("train", "train a model family: selector, subfig, splitter, pathclip, pathasst",
         "trainers", module="pathasst.trainers.cli:add_arguments"),
    Verb("bench", "run benchmark tasks, score submissions, build the leaderboard",
         "benchmarks", module="pathasst.benchmarks.cli:add_arguments"),
    Verb("release", "export, verify and push datasets and models to the Hub with rendered cards",
         "hub_release", usage="pathasst release {dataset,model} FOLDER --repo-id ID"),
    Verb("space", "build and run the Gradio Spaces demos", "spaces",
         usage="pathasst space {build,run} NAME"),
    Verb("serve", "serve PathAsst behind an OpenAI-compatible API", "trainers",
         module="pathasst.trainers.serve:add_arguments"),
    Verb("chat", "chat with PathAsst about an image in the terminal", "trainers",
         module="pathasst.trainers.assistant:add_arguments"),
    Verb("tool", "run one pathology tool (zero-shot classify, select, detect, IHC quantify)",
         "trainers", module="pathasst.tools.cli:add_arguments"),
    Verb("demo", "run every stage that exists on the embedded sample and write a run folder",
         "pathasst", module="pathasst.demo:add_arguments"),
)


def _arrival(verb: Verb) -> str:
    return f"it arrives with issue #{verb.issue}" if verb.issue else "it is planned (DESIGN.md §2) and has no issue yet"


def _not_landed(verb: Verb) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise NotLandedError(f"`pathasst {verb.name}` is not available yet: {_arrival(verb)}. Nothing was done.")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathasst",
        description="pathasst: open data toolkit, datasets, models and benchmarks for pathology "
        "multimodal AI. Every verb has --help.",
    )
    parser.add_argument("--version", action="version", version=f"pathasst {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        if verb.module:
            module_name, func_name = verb.module.split(":")
            p = sub.add_parser(verb.name, help=verb.help, description=verb.help.capitalize() + ".")
            getattr(importlib.import_module(module_name), func_name)(p)
        else:
            p = sub.add_parser(
                verb.name,
                help=f"{verb.help} (not yet: {_arrival(verb)})",
                description=f"{verb.help.capitalize()}.\n\nNot available yet: {_arrival(verb)}.\n"
                f"Planned usage: {verb.usage}",
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(func=_not_landed(verb), accepts_anything=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pathasst` console script; returns the exit code."""
    parser = build_parser()
    # verbs that have not landed take any arguments (options included) and say so
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "inputs", None), list) and not any(e.startswith("-") for e in extra):
        args.inputs += extra  # `PATH --out DIR key=value`: positionals after an option
        extra = []
    if extra and not getattr(args, "accepts_anything", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except PathasstError as exc:
        print(f"pathasst {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"pathasst {args.verb}: interrupted; finished work was kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
