"""The ``memdesc`` command. Each sub-command lives in its own module with ``register(sub)``.

A module registers its parsers and sets ``func`` on them; ``func(args) -> int`` is the exit
status. User-facing problems are raised as :class:`memdesc.errors.MemdescError` and printed here
as one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from memdesc import __version__
from memdesc.errors import MemdescError

#: Sub-command modules, in the order `memdesc --help` lists them.
COMMAND_MODULES = (
    "memdesc.cli.survey",      # survey
    "memdesc.cli.snapshot",    # kpageflags, snapshot save
    "memdesc.cli.stages",      # stages
    "memdesc.cli.simulate",    # simulate
    "memdesc.cli.trace",       # record, trace-info, replay
    "memdesc.cli.fleet",       # fleet survey
    "memdesc.cli.path_status",  # path-status
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memdesc",
        description="What each step of the memdesc Path costs on a real machine, snapshot "
                    "or trace.",
    )
    parser.add_argument("--version", action="version", version=f"memdesc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a command not built yet
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MemdescError as e:
        print(f"memdesc: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("memdesc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
