"""``medmm <command> [arguments]``: every ``python -m medmm.pipelines.<command>`` under one name.

The commands are the modules of :mod:`medmm.pipelines`; ``medmm --help`` lists them with
the first sentence of each module's docstring, read from the source, so listing them imports
none (their workflows load torch, Lightning and MLflow). ``medmm <command> ...`` imports that
one module and passes the arguments to its ``main``.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

import medmm.pipelines
from medmm.pipelines.command import summary

PIPELINES = Path(medmm.pipelines.__file__).parent
NOT_COMMANDS = {"__init__", "command"}


def commands() -> dict[str, str]:
    """Command name -> one line on what it does, in name order."""
    found = {}
    for path in sorted(PIPELINES.glob("*.py")):
        if path.stem not in NOT_COMMANDS:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            found[path.stem] = summary(doc)
    return found


def usage(listed: dict[str, str]) -> str:
    width = max(map(len, listed), default=0)
    lines = ["usage: medmm <command> [arguments]   (the same as python -m medmm.pipelines.<command>)", "",
             "commands:", *(f"  {name:{width}s}  {what}" for name, what in listed.items()), "",
             "`medmm <command> --help` says what a command reads and writes, with examples and its options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    listed = commands()
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(listed))
        return 0
    name = args[0].replace("-", "_")  # `medmm make-demo` as well as `medmm make_demo`
    if name not in listed:
        print(f"medmm: unknown command {args[0]!r}\n\n{usage(listed)}", file=sys.stderr)
        return 2
    result = importlib.import_module(f"medmm.pipelines.{name}").main(args[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
