"""`pathasst train FAMILY --recipe NAME_OR_FILE [key=value ...]`: dispatch to a family's main(argv)."""

from __future__ import annotations

import argparse

from pathasst.trainers import registry  # cheap: families are import paths until one runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    listing = "; ".join(
        f"{f.name}: {f.description}" + ("" if f.landed else f" (arrives with issue #{f.issue})")
        for f in registry.families()
    )
    parser.usage = "pathasst train FAMILY --recipe NAME_OR_FILE [key=value ...]"
    parser.description = (
        "Train a model family. A bare recipe NAME resolves to trainers/recipes/FAMILY/NAME.yaml; every "
        "family has a `tiny` recipe. The keys data=, output_dir=, max_steps= and seed= mean the same "
        "thing in every family. Multi-GPU: `accelerate launch --config_file "
        "trainers/recipes/accelerate/ddp.yaml -m pathasst.cli train ...`. Families: " + listing
    )
    parser.add_argument("family", metavar="FAMILY", help=", ".join(f.name for f in registry.families()))
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="--recipe NAME key=value",
                        help="the recipe and overrides, passed to the family")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return registry.run(args.family, list(args.rest))
