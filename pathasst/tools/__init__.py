"""Pathology tools that PathAsst can call and PathInstruct teaches it to call (issues #6 and #9).

``from pathasst.tools import get, list_tools, openai_schema``; see :mod:`pathasst.tools.registry`.
Importing this package registers the built-in tools without importing any heavy stack.
"""

from pathasst.tools.registry import (
    Tool,
    ToolArgumentError,
    ToolError,
    ToolResultError,
    ToolUnavailable,
    check_schema,
    get,
    list_tools,
    openai_schema,
    register,
)

__all__ = [
    "Tool",
    "ToolArgumentError",
    "ToolError",
    "ToolResultError",
    "ToolUnavailable",
    "check_schema",
    "get",
    "list_tools",
    "openai_schema",
    "register",
]
