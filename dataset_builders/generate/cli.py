"""`pathasst generate SUBCOMMAND DATASET... --out DIR`: data generated through language models."""

from __future__ import annotations

import argparse

from pathasst.subcommands import Subcommand, add_subcommands

SUBCOMMANDS = (
    Subcommand("instruct", "pathasst.dataset_builders.generate.instruct",
               "generate PathInstruct (description, conversation, reasoning, tool dialogues) from PathCap "
               "through any OpenAI-compatible endpoint", 6),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_subcommands(parser, "generate", SUBCOMMANDS)
