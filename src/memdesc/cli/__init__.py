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
    "memdesc.cli.timing",      # timing
)
#: The module that registers each sub-command, so a command imports only its own module
#: (tests/test_cli_lazy.py checks this against what the modules register).
COMMANDS = {
    "survey": "memdesc.cli.survey",
    "kpageflags": "memdesc.cli.snapshot", "snapshot": "memdesc.cli.snapshot",
    "stages": "memdesc.cli.stages",
    "simulate": "memdesc.cli.simulate",
    "record": "memdesc.cli.trace", "trace-info": "memdesc.cli.trace",
    "replay": "memdesc.cli.trace",
    "fleet": "memdesc.cli.fleet",
    "path-status": "memdesc.cli.path_status",
    "timing": "memdesc.cli.timing",
}


def _modules_for(argv: list[str] | None) -> tuple[str, ...]:
    """The command modules to register for ``argv``: the named command's own module, or every
    module (``--help``, no command, an unknown command: argparse lists them all)."""
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in COMMANDS:
        return (COMMANDS[words[0]],)
    return COMMAND_MODULES


def build_parser(argv: list[str] | None = None, *, every: bool = True
                 ) -> argparse.ArgumentParser:
    """The parser; with ``every=False`` only the module of the command ``argv`` names is
    imported and registered (each command module imports its heavy code -- numba,
    matplotlib, dask, rich tables -- inside its run functions)."""
    parser = argparse.ArgumentParser(
        prog="memdesc",
        description="What each step of the memdesc Path costs on a real machine, snapshot "
                    "or trace.",
    )
    parser.add_argument("--version", action="version", version=f"memdesc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES if every else _modules_for(argv):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a command not built yet
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv, every=False)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
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
