"""The ``moorage`` command line (console script ``moorage = manager.cli.main:main``).

Commands are plugged in by module. Each module in :data:`COMMAND_MODULES` defines::

    def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("name", help=...)
        ...
        parser.set_defaults(func=run)          # run(args: argparse.Namespace) -> int (exit status)

Adding a command group is one line in :data:`COMMAND_MODULES`. The modules in :data:`OPTIONAL_COMMAND_MODULES`
are skipped when they do not exist (yet); any other import error is a real error.

Global options (``--endpoint``, ``--access-key``, ``--secret-key``, ``--data-dir``; see
``manager.cli.connection``) go before the command; commands that talk to the manager also accept them after
it (``parents=[connection_parent()]``). A :class:`~manager.cli.connection.CLIError` raised by a command is
printed as ``error: <message>`` on stderr with exit status 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from manager.cli.connection import CLIError, add_connection_options

PROG = "moorage"
COMMAND_MODULES: list[str] = [
    "manager.cli.up",
    "manager.cli.daemons",
    "manager.cli.folder",
    "manager.cli.service",
    "manager.cli.autoscale",  # adds `service autoscale`: after manager.cli.service
    "manager.cli.demo",
    "manager.cli.agents",
    "manager.cli.config_show",
    "manager.cli.keys",
    "manager.cli.usage",
    "manager.cli.prices",
    "manager.cli.console",
]
OPTIONAL_COMMAND_MODULES = frozenset({"manager.cli.up", "manager.cli.daemons"})


def _load_modules() -> list[ModuleType]:
    modules = []
    for name in COMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if name in OPTIONAL_COMMAND_MODULES and exc.name == name:
                continue
            raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Moorage: a self-hosted model-serving control plane (Backend.AI-compatible /services API).",
    )
    add_connection_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _load_modules():
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except CLIError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `moorage service list | head -1`
        return 0


if __name__ == "__main__":
    sys.exit(main())
