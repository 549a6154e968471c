"""Command line: `python -m swimnode COMMAND ...`."""

from __future__ import annotations

import sys

from . import demo

COMMANDS = {"demo": demo.main}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m swimnode {" + ",".join(COMMANDS) + "} [options]")
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"swimnode: unknown command {args[0]!r} (expected one of: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    return command(args[1:])
