"""``llmtune inspect MODEL``: what a GGUF file holds."""

from __future__ import annotations

import argparse
import sys

from llmtune.commands.common import print_json, text_width, warn


def run(args: argparse.Namespace) -> int:
    from llmtune.model import read_spec
    from llmtune.model.describe import inspect_dict, inspect_text

    spec = read_spec(args.model)
    if args.json:
        print_json(inspect_dict(spec))
    else:
        sys.stdout.write(inspect_text(spec, width=text_width()))
    for warning in spec.warnings:
        warn(warning)
    return 0
