"""`pathasst build DATASET --out DIR ...`: assemble the published datasets."""

from __future__ import annotations

import argparse

from pathasst.subcommands import Subcommand, add_subcommands

SUBCOMMANDS = (
    Subcommand("subfig", "pathasst.dataset_builders.build.subfig",
               "build PathSubfig from Labelme, COCO and synthetic compound figures (optionally a YOLO export)", 4),
    Subcommand("pathcap", "pathasst.dataset_builders.build.pathcap",
               "assemble PathCap from curated folders (dedup and decontamination applied)", 5),
    Subcommand("instruct", "pathasst.dataset_builders.build.instruct",
               "assemble PathInstruct from generated instruction data", 6),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_subcommands(parser, "build", SUBCOMMANDS)
