"""`pathasst tool list` and `pathasst tool run NAME IMAGE [key=value ...]`."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tool_command", metavar="COMMAND", required=True)
    p = sub.add_parser("list", help="the registered tools, whether each can run here, and what it does")
    p.add_argument("--json", action="store_true", help="print the OpenAI function-tool schemas as JSON")
    p.set_defaults(func=_list)
    p = sub.add_parser(
        "run", help="run one tool on an image and print its JSON result",
        description="Run one tool on an image and print its JSON result. Arguments are key=value, values "
        "read as YAML scalars (0.05, true, [a, b]); `pathasst tool list --json` shows each tool's schema.",
    )
    p.add_argument("name", metavar="NAME", help="the tool, e.g. ihc_quantify")
    p.add_argument("image", metavar="IMAGE", help="the image file")
    p.add_argument("arguments", nargs="*", metavar="key=value", help="tool arguments")
    p.set_defaults(func=_run)


def _list(args: argparse.Namespace) -> int:
    from pathasst.tools import list_tools, openai_schema

    tools = list_tools()
    if args.json:
        print(json.dumps([openai_schema(t) for t in tools], indent=2))
        return 0
    width = max(len(t.name) for t in tools)
    for tool in tools:
        ok, reason = tool.available()
        state = "available" if ok else f"unavailable ({reason})"
        print(f"{tool.name:<{width}}  {tool.description.split('. ')[0].rstrip('.')}.  [{state}]")
    return 0


def _run(args: argparse.Namespace) -> int:
    from pathasst.config import parse_overrides
    from pathasst.tools import get

    tool = get(args.name)
    arguments = parse_overrides(args.arguments)
    result = tool.run(args.image, **arguments)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
