"""``llmtune inspect MODEL``: what a GGUF file holds (a remote one: only its header is read)."""

from __future__ import annotations

import argparse
import json
import sys

from llmtune.commands.common import print_json, text_width, traffic_note, warn


def run(args: argparse.Namespace) -> int:
    from llmtune.model.describe import (
        inspect_dict,
        inspect_text,
        key_value,
        tensor_dicts,
        tensor_lines,
    )
    from llmtune.model.source import open_spec

    opened = open_spec(args.model, args.hf)
    spec = opened.spec
    if args.key is not None:
        type_name, value = key_value(spec, args.key)
        if args.json:
            print_json({"key": args.key, "type": type_name, "value": value})
        elif isinstance(value, str):
            sys.stdout.write(value + "\n")
        else:
            sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        return 0
    if args.json:
        obj = inspect_dict(spec)
        if args.tensors:
            obj["tensors"] = tensor_dicts(spec)
        print_json(obj)
    elif args.tensors:
        sys.stdout.write("\n".join(tensor_lines(spec, width=text_width())) + "\n")
    else:
        sys.stdout.write(inspect_text(spec, width=text_width()))
    for warning in spec.warnings:
        warn(warning)
    traffic_note(opened)
    return 0
