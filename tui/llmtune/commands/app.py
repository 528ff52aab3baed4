"""``llmtune [MODEL]``: the app."""

from __future__ import annotations

import argparse
import math

from llmtune.errors import ConfigError


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.interval) or args.interval <= 0:
        what = f"the interval must be a positive number of seconds, not {args.interval}"
        raise ConfigError(what, "--interval")
    from llmtune.hardware.machine import MachineOptions, machine, parse_network_speed
    from llmtune.model.source import open_spec
    from llmtune.model.spec import location
    from llmtune.ui.app import AppOptions, LlmtuneApp, default_sampler_factory

    spec = None
    if args.hf or args.model:
        # A URL or --hf plans from the header alone (a file in the HF cache is read from disk).
        spec = open_spec(args.model, args.hf).spec
    theme = args.theme
    if theme is not None:
        from textual.theme import BUILTIN_THEMES

        if theme not in BUILTIN_THEMES:
            from llmtune.hardware.profiles import close_names

            close = close_names(theme, list(BUILTIN_THEMES))
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown theme {theme!r}{hint}", "--theme")
    options = MachineOptions(
        gpus=tuple(args.gpu),
        ram=args.ram,
        host=args.host,
        rpc=tuple(args.rpc),
        network=args.network,
    )
    # --rpc hosts are asked here, before the screen opens: one that cannot be used
    # is a one-line error, like any other bad option.
    hardware = machine(options, for_worker=True)
    network = parse_network_speed(args.network) if args.network is not None else None
    app = LlmtuneApp(
        spec,
        location(spec.path) if spec is not None else None,
        hardware,
        options=AppOptions(
            interval_s=max(0.2, args.interval),
            compact=args.compact,
            theme=theme,
            network_bytes_per_s=network,  # the link for hosts added in the app too
        ),
        sampler_factory=default_sampler_factory,
    )
    app.run()
    return 0
