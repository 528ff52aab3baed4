"""The ``llmtune`` command: argument parsing and dispatch, no logic of its own.

Every error reaches the user as one line, ``llmtune: error: <what> (<where>)``,
with exit status 2; a traceback only with ``LLMTUNE_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from llmtune import __version__
from llmtune.errors import LlmtuneError

SUBCOMMANDS = ("inspect",)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line in llmtune's format."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (command line; see '{self.prog} --help')")


def _fail(line: str) -> NoReturn:
    from llmtune.textsafe import inert

    print(f"llmtune: error: {inert(line, max_chars=2000)}", file=sys.stderr)
    raise SystemExit(2)


def _app_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmtune",
        description="Will this GGUF model run here, with which llama.cpp settings, and how fast?",
        epilog="Sub-commands: " + ", ".join(SUBCOMMANDS) + " (llmtune COMMAND --help).",
    )
    parser.add_argument("model", nargs="?", help="a .gguf file (default: the demo model)")
    parser.add_argument("--version", action="version", version=f"llmtune {__version__}")
    return parser


def _inspect_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llmtune inspect", description="Show what a GGUF file holds.")
    parser.add_argument("model", help="a .gguf file (the first shard of a split model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def cmd_inspect(argv: Sequence[str]) -> int:
    args = _inspect_parser().parse_args(argv)
    from llmtune.model import read_spec
    from llmtune.model.describe import inspect_dict, inspect_text

    spec = read_spec(args.model)
    if args.json:
        _print_json(inspect_dict(spec))
    else:
        width = min(shutil.get_terminal_size((80, 24)).columns, 100)
        sys.stdout.write(inspect_text(spec, width=width))
    for warning in spec.warnings:
        from llmtune.textsafe import inert

        print(f"llmtune: warning: {inert(warning, max_chars=500)}", file=sys.stderr)
    return 0


def cmd_app(argv: Sequence[str]) -> int:
    args = _app_parser().parse_args(argv)
    from llmtune.model import read_spec
    from llmtune.model.demo import demo_model_path, is_demo_model_present

    path = args.model
    if path is None:
        if not is_demo_model_present():
            raise LlmtuneError(
                "no model given and the demo model is not downloaded yet: "
                "run 'make model' or give a .gguf path",
                str(demo_model_path()),
            )
        path = str(demo_model_path())
    spec = read_spec(path)
    from llmtune.ui.app import make_app

    make_app(spec).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "inspect":
            return cmd_inspect(args[1:])
        return cmd_app(args)
    except LlmtuneError as exc:
        if os.environ.get("LLMTUNE_DEBUG"):
            raise
        _fail(exc.one_line())
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error for the user.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except Exception as exc:  # a bug of ours: still one line, with a way to see more
        if os.environ.get("LLMTUNE_DEBUG"):
            raise
        _fail(
            f"internal error: {type(exc).__name__}: {exc} "
            "(set LLMTUNE_DEBUG=1 for a traceback, and please report it)"
        )


if __name__ == "__main__":
    raise SystemExit(main())
