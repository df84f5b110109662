"""The CLI builds its parser without the heavy modules, and each command imports only its own
command module (memdesc.cli.COMMANDS)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from memdesc import cli


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_commands_table_matches_what_modules_register():
    assert _commands(cli.build_parser()) == set(cli.COMMANDS)
    for name, module in cli.COMMANDS.items():
        assert name in _commands(cli.build_parser([name], every=False)), (name, module)
    assert set(cli.COMMANDS.values()) == set(cli.COMMAND_MODULES)


def test_a_command_registers_only_its_module():
    assert _commands(cli.build_parser(["replay", "x"], every=False)) == {
        "record", "trace-info", "replay"}
    # --help, no command or an unknown one: every command, so argparse can list them
    for argv in (["--help"], [], ["nonsense"]):
        assert _commands(cli.build_parser(argv, every=False)) == set(cli.COMMANDS)


def test_parser_imports_no_numba_rich_progress_or_matplotlib():
    code = ("import sys; from memdesc.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numba', 'matplotlib', 'dask', 'rich.progress', "
            "'memdesc.analysis.replay', 'memdesc.ingest.ftrace') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
