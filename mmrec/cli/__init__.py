"""``mmrec`` command line: one subcommand per job.

Each subcommand parses its arguments and calls the library; scripts in ``scripts/`` call into the same functions.

Exit status of every subcommand: 0 success; 1 failed (invalid input or a runtime error: the message names the
field/row; nothing partial is committed beyond completed batches); 2 usage error; 3 finished, but some rows were
rejected (listed in the output).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import warnings
from typing import Callable, Sequence

from .commands import (add_demo_arguments, add_embed_arguments, add_evaluate_arguments, add_refresh_arguments,
                       add_report_arguments, add_train_arguments, demo_command, embed_command, evaluate_command,
                       refresh_command, report_command, train_command)
from .forget import add_forget_arguments, forget_command
from .options import EXIT_FAILED, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, check_device, fail, print_json_last
from .serve import add_serve_arguments, serve_command

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_OK", "EXIT_REJECTED", "EXIT_USAGE", "build_parser", "main", "run_command"]


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "embed": ("embed new or changed catalogue items into a store", add_embed_arguments, embed_command),
    "train": ("train fusion + GRU + scorer on a store's features", add_train_arguments, train_command),
    "evaluate": ("evaluate the store's model under the leave-one-out protocol", add_evaluate_arguments,
                 evaluate_command),
    "demo": ("embed, train, evaluate and recommend on the bundled MovieLens data", add_demo_arguments, demo_command),
    "refresh": ("apply new behaviour events to stored user interest vectors", add_refresh_arguments, refresh_command),
    "report": ("train every model on the same split (3 seeds, warm and cold) and write a quality report",
               add_report_arguments, report_command),
    "serve": ("serve a trained store over HTTP: score, recommend, events, health and metrics", add_serve_arguments,
              serve_command),
    "forget": ("delete users' events, states and cached texts from a store, and keep them out of retraining",
               add_forget_arguments, forget_command),
}


class _Parser(argparse.ArgumentParser):
    """argparse, remembering its last usage error so ``--json`` can report it (subcommand parsers share the class)."""

    last_error: str = ""

    def error(self, message: str):
        _Parser.last_error = message
        super().error(message)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``; a usage error (exit 2) under ``--json`` also prints ``{"error", "exit": 2}``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return parser.parse_args(argv)
    except SystemExit as exit:
        # argparse also accepts an abbreviation such as --js
        if exit.code == EXIT_USAGE and any(len(a) >= 3 and "--json".startswith(a) for a in argv):
            print_json_last({"error": _Parser.last_error, "exit": EXIT_USAGE})
        raise


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="mmrec", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in commands or COMMANDS:
        help_text, add_arguments, _ = COMMANDS[name]
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def run_command(name: str, argv: Sequence[str] | None = None) -> int:
    """Entry point for ``scripts/<name>.py``: the same arguments as ``mmrec <name>``."""
    help_text, add_arguments, run = COMMANDS[name]
    parser = _Parser(description=help_text)
    add_arguments(parser)
    return _guarded(run, _parse(parser, argv))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # the library's warnings are addressed to the user (a leaking text column, a missing modality); the source line
    # Python prints with them is noise on a command line
    print(f"warning: {message}", file=sys.stderr)


def _guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; expected failures (bad input, missing files, no such device) become ``error: ...`` on
    stderr and exit 1, never a traceback. ``MMREC_DEBUG=1`` in the environment lets them raise instead: a torch or
    SQLite error deep inside a run is reported in one line, which is too little to debug it."""
    debug = os.environ.get("MMREC_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            if getattr(args, "device", None) is not None and not getattr(args, "no_train", False):
                check_device(args.device)
            return run(args)
    except (ValueError, KeyError, OSError, RuntimeError, sqlite3.Error) as error:  # ValueError: ModelLoadError too
        if debug:
            raise
        message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
        if hasattr(args, "unknown_items"):  # the library's hint names its keyword; on the command line it's a flag
            message = message.replace("pass unknown_items='drop'", "pass --unknown-items drop")
        return fail(args, message)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    return _guarded(COMMANDS[args.command][2], args)
