"""The ``freightscale`` command.

Subcommands live in their feature's module; this file only registers them.
Each module exposes ``configure(parser)`` (adds its arguments) and
``run(args) -> int`` (the exit status), and is imported only when its
command runs, so ``freightscale --help`` needs no optional extras.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# (command words, module, one-line help)
COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("check-config",), "freightscale.db.budget", "check the database connection budget"),
    (("sessions", "import"), "freightscale.sessions.legacy", "import a legacy file session store"),
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="freightscale", description=__doc__.splitlines()[0])
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    groups[()] = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for words, module, help_text in COMMANDS:
        for depth in range(1, len(words)):
            prefix = words[:depth]
            if prefix not in groups:
                sub = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                groups[prefix] = sub.add_subparsers(
                    dest="_".join(prefix) + "_command", metavar="COMMAND", required=True
                )
        command = groups[words[:-1]].add_parser(words[-1], help=help_text)
        command.set_defaults(_module=module)
        try:
            importlib.import_module(module).configure(command)
        except ImportError as exc:
            command.description = f"(unavailable: {exc})"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    status: int = module.run(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
