"""`pathasst curate SUBCOMMAND DATASET... --out DIR`: the curation stages, one module each."""

from __future__ import annotations

import argparse

from pathasst.subcommands import Subcommand, add_subcommands

SUBCOMMANDS = (
    Subcommand("select", "pathasst.dataset_builders.curate.select",
               "score every record with the pathology-image selector; records under the threshold go to the ledger", 4),
    Subcommand("detect", "pathasst.dataset_builders.curate.detect",
               "detect subfigures and write subfigure records (crop, bbox, parent figure, panel letter)", 4),
    Subcommand("split", "pathasst.dataset_builders.curate.split",
               "split compound captions into sub-captions (rules, or an LLM: --model)", 5),
    Subcommand("align", "pathasst.dataset_builders.curate.align", "align sub-captions with detected panels", 5),
    Subcommand("refine", "pathasst.dataset_builders.curate.refine",
               "refine captions with rules (or an LLM: --model)", 5),
    Subcommand("splitter-data", "pathasst.dataset_builders.curate.sft",
               "build SFT pairs for `train splitter` from rule splits plus hand corrections", 5),
    Subcommand("dedup", "pathasst.dataset_builders.curate.dedup", "remove near-duplicate images and captions", 5),
    Subcommand("decontam", "pathasst.dataset_builders.curate.decontam",
               "remove records that overlap benchmark test sets", 5),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_subcommands(parser, "curate", SUBCOMMANDS)
