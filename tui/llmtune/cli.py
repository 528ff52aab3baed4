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
from typing import TYPE_CHECKING, Any, NoReturn

from llmtune import __version__
from llmtune.errors import LlmtuneError

if TYPE_CHECKING:
    from llmtune.fit.settings import Settings
    from llmtune.fit.speed import SpeedModel
    from llmtune.hardware.device import Device

SUBCOMMANDS = ("inspect", "fit", "bench", "quantize", "tune")


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
    parser.add_argument(
        "model", nargs="?", help="a .gguf file (default: a picker over the models found here)"
    )
    parser.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="SPEC",
        help="plan for this GPU instead of this machine's: a profile (rtx3060-12g) or a size "
        "(24GB:1008GB/s); see 'llmtune fit --list-gpus'",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often to sample GPU, RAM and the worker (default 1, at least 0.2)",
    )
    parser.add_argument(
        "--compact", action="store_true", help="the side-pane view of gauges at any width"
    )
    parser.add_argument("--theme", metavar="NAME", help="a Textual theme (textual-dark, nord, ...)")
    parser.add_argument("--version", action="version", version=f"llmtune {__version__}")
    return parser


def _inspect_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llmtune inspect", description="Show what a GGUF file holds.")
    parser.add_argument("model", help="a .gguf file (the first shard of a split model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _int_or_max(text: str) -> int:
    if text.strip().lower() in ("max", "all", "-1"):
        return -1
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number or 'max': {text!r}") from None


def _context_arg(text: str) -> int:
    """A context size; ``max`` (-1): the largest that fits; ``train`` (0): the trained one."""
    word = text.strip().lower()
    if word == "max":
        return -1
    if word in ("train", "trained"):
        return 0
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"context must be at least 1 token, not {value} (or 'max', or 'train')"
        )
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _fit_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmtune fit",
        description="Plan a model on this machine (or on --gpu/--ram) before loading it.",
    )
    _add_settings_options(parser)
    return parser


def _bench_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmtune bench",
        description="Load the model in llama.cpp on this machine and measure it, like llama-bench.",
    )
    _add_settings_options(parser, what_if=False)
    parser.add_argument("--prompt-tokens", type=_whole, default=512, metavar="N")
    parser.add_argument("--gen-tokens", type=_whole, default=128, metavar="N")
    parser.add_argument("--repeat", type=_whole, default=3, metavar="N")
    parser.add_argument(
        "--no-calibrate", action="store_true", help="do not keep the measured speed for fit"
    )
    return parser


def _quantize_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmtune quantize",
        description="Quantize a GGUF model with llama.cpp's quantizer: a dry run first, "
        "then a temporary file that gets its name only when complete.",
    )
    parser.add_argument("model", help="the .gguf file to read (F16/BF16/F32 is best)")
    parser.add_argument(
        "--to", required=True, metavar="FTYPE", help="file type: Q4_K_M, Q8_0, Q2_K, IQ4_XS, ..."
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="the file to write (default: beside MODEL, its quant tag replaced by FTYPE)",
    )
    parser.add_argument(
        "--allow-requantize",
        action="store_true",
        help="quantize an already quantized model (costs quality, as llama.cpp warns)",
    )
    parser.add_argument(
        "--imatrix", metavar="FILE", help="importance matrix from llama-imatrix (.gguf or .dat)"
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--threads", type=_whole, default=0, metavar="N", help="quantizer threads (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _tune_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmtune tune",
        description="Find the fastest llama.cpp settings that fit here, by real loads and "
        "short benchmarks. Settings you give (--ngl, --flash-attn, --cache-type-k/-v, "
        "--ubatch, --n-cpu-moe, --threads) stay fixed; the others are searched.",
    )
    _add_settings_options(parser, what_if=False)
    parser.add_argument(
        "--objective",
        choices=("tg", "pp", "mix"),
        default="tg",
        help="what to maximise: generation speed (default), prompt speed, or both",
    )
    parser.add_argument(
        "--threads",
        metavar="N[,N...]",
        help="thread counts to try (default: 1, 2, 4, ... and the cores)",
    )
    parser.add_argument(
        "--prompt-tokens", type=_whole, metavar="N", help="prompt per trial (tg: 64, else 512)"
    )
    parser.add_argument("--gen-tokens", type=_whole, default=64, metavar="N")
    parser.add_argument("--repeat", type=_whole, default=3, metavar="N", help="runs per trial")
    parser.add_argument("--max-trials", type=_whole, default=40, metavar="N")
    return parser


def _add_settings_options(parser: argparse.ArgumentParser, what_if: bool = True) -> None:
    """The plan's settings. ``what_if=False`` (bench, tune: they run on this
    machine) hides the other-hardware options from the help; they still parse,
    so the command can refuse them in one line."""

    def shown(text: str) -> str:
        return text if what_if else argparse.SUPPRESS

    parser.add_argument("model", help="a .gguf file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--gpu",
        action="append",
        default=[],
        metavar="SPEC",
        help=shown(
            "a GPU profile (rtx3060-12g) or size (12GiB, 24GB:1008GB/s); repeat for more GPUs"
        ),
    )
    parser.add_argument(
        "--list-gpus", action="store_true", help=shown("list the GPU profiles and exit")
    )
    parser.add_argument(
        "--ram", metavar="SIZE", help=shown("host RAM to plan for (default: this machine's)")
    )
    parser.add_argument(
        "--host", metavar="PROFILE", help=shown("host memory profile, e.g. ddr4-3200, ddr5-5600")
    )
    parser.add_argument(
        "--quant",
        metavar="FTYPE",
        help=shown(
            "plan as if quantized to FTYPE (Q4_K_M, Q8_0, ...); 'all' prints every file type"
        ),
    )
    from llmtune.fit.options import add_arguments

    add_arguments(parser)  # --ngl, --ctx, ...: llama.cpp's options, from one table


def _devices_from_args(args: argparse.Namespace) -> tuple[list[Device], bool]:
    """The devices to plan on, and whether they are this machine's own."""
    from llmtune.errors import ConfigError
    from llmtune.hardware.host import host_device
    from llmtune.hardware.profiles import host_profile, parse_gpu_spec
    from llmtune.units import parse_size

    ram = parse_size(args.ram, "--ram") if args.ram else None
    if ram is not None and ram <= 0:
        raise ConfigError("host RAM must be more than 0", "--ram")
    bandwidth = host_profile(args.host).bandwidth_gbps if args.host else None
    if not args.gpu and ram is None and bandwidth is None:
        from llmtune.hardware.detect import detect

        return list(detect()), True
    devices = [parse_gpu_spec(text, index=i) for i, text in enumerate(args.gpu)]
    devices.append(host_device(ram_bytes=ram, bandwidth_gbps=bandwidth))
    return devices, False


def _settings_from_args(args: argparse.Namespace) -> Settings:
    from llmtune.fit.options import settings_from_namespace

    return settings_from_namespace(args)


def _machine_notes(devices: Sequence[Device]) -> tuple[str, ...]:
    """What this machine's GPUs and llama.cpp build mean for the plan, in words."""
    from llmtune.hardware.detect import gpu_build_warning, supports_gpu_offload
    from llmtune.hardware.nvml import nvml_status

    notes: list[str] = []
    available, sentence = nvml_status()
    if not available:
        notes.append(sentence)
    if any(d.is_gpu for d in devices):
        warning = gpu_build_warning(devices, supports_gpu_offload())
        if warning:
            notes.append(warning)
    return tuple(notes)


def _speed_model(this_machine: bool) -> SpeedModel:
    """This machine's calibrated speed model; the defaults for other hardware."""
    from llmtune.fit.speed import DEFAULT_SPEED_MODEL

    if not this_machine:
        return DEFAULT_SPEED_MODEL
    from llmtune.engine.calibration import load
    from llmtune.textsafe import inert

    speed, notice = load()
    if notice:
        print(f"llmtune: warning: {inert(notice, max_chars=500)}", file=sys.stderr)
    return speed


def cmd_fit(argv: Sequence[str]) -> int:
    if "--list-gpus" in argv:
        from llmtune.hardware.profiles import GPU_PROFILES

        for p in GPU_PROFILES:
            print(
                f"{p.key:<15} {p.memory_mib / 1024:6.1f} GiB {p.bandwidth_gbps:7.0f} GB/s  {p.name}"
            )
        return 0
    args = _fit_parser().parse_args(argv)
    from llmtune.errors import ConfigError
    from llmtune.fit.plan import plan
    from llmtune.fit.report import plan_dict, plan_text
    from llmtune.model import read_spec

    devices, this_machine = _devices_from_args(args)
    settings = _settings_from_args(args)
    speed = _speed_model(this_machine)
    spec = read_spec(args.model)
    if args.quant and args.quant.lower() == "all":
        if args.ctx == -1:
            raise ConfigError(
                "--quant all plans every file type at one context; give a size, or drop "
                "--quant all for the largest context of this file",
                "--ctx max",
            )
        from llmtune.fit.report import quant_json, quant_text
        from llmtune.fit.whatif import quant_rows

        rows = quant_rows(spec, devices, settings, speed=speed)
        if args.json:
            _print_json(quant_json(spec, rows))
        else:
            width = min(shutil.get_terminal_size((80, 24)).columns, 100)
            sys.stdout.write(quant_text(spec, rows, width=width))
        return 0
    if args.quant:
        from llmtune.fit.quant import requantize

        spec = requantize(spec, args.quant)
    if args.ctx == -1:
        from llmtune.fit.plan import max_context

        largest = max_context(spec, devices, settings.with_(n_ctx=256))
        if largest == 0:
            raise ConfigError(
                "not even 256 tokens of context fit at this offload; lower --ngl", "--ctx max"
            )
        settings = settings.with_(n_ctx=largest)
    fit_plan = plan(spec, devices, settings, speed)
    if this_machine:
        import dataclasses

        machine = _machine_notes(devices)
        fit_plan = dataclasses.replace(fit_plan, notes=machine + fit_plan.notes)
        if not args.json:
            for note in machine:
                if "CPU-only" in note and "reinstall" in note:
                    print(f"llmtune: warning: {note}", file=sys.stderr)
    if args.json:
        _print_json(plan_dict(spec, fit_plan))
    else:
        width = min(shutil.get_terminal_size((80, 24)).columns, 100)
        sys.stdout.write(plan_text(spec, fit_plan, width=width))
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    args = _bench_parser().parse_args(argv)
    from llmtune.engine.bench import run_bench
    from llmtune.engine.calibration import measurement_of, record
    from llmtune.engine.config import RunConfig
    from llmtune.engine.report import bench_dict, bench_text
    from llmtune.errors import ConfigError
    from llmtune.fit.plan import plan
    from llmtune.model import read_spec

    if args.gpu or args.ram or args.host or args.quant or args.list_gpus:
        raise ConfigError(
            "bench runs the model on this machine; --gpu, --list-gpus, --ram, --host and "
            "--quant are for fit",
            "llmtune bench",
        )
    if args.ctx == -1:
        raise ConfigError("give bench a context size; fit --ctx max finds one", "--ctx")
    for flag, value in (("--prompt-tokens", args.prompt_tokens), ("--gen-tokens", args.gen_tokens)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1", flag)
    if not 1 <= args.repeat <= 100:
        raise ConfigError("--repeat must be 1 to 100", "--repeat")
    devices, _ = _devices_from_args(args)
    settings = _settings_from_args(args)
    speed = _speed_model(True)
    spec = read_spec(args.model)
    fit_plan = plan(spec, devices, settings, speed)
    config = RunConfig.from_settings(spec.path, fit_plan.settings)
    interactive = sys.stderr.isatty() and not args.json

    def progress(line: str) -> None:
        if interactive:
            sys.stderr.write(f"\r\x1b[2K{line}")
            sys.stderr.flush()

    try:
        result = run_bench(
            config,
            fit_plan,
            prompt_tokens=args.prompt_tokens,
            gen_tokens=args.gen_tokens,
            repeat=args.repeat,
            on_progress=progress,
        )
    finally:
        if interactive:
            sys.stderr.write("\r\x1b[2K")
    calibrated = None
    all_on_one_kind = fit_plan.n_gpu_layers in (0, fit_plan.n_layer + 1) and len(fit_plan.gpus) <= 1
    if not args.no_calibrate and all_on_one_kind:
        host_measured = any(d.bandwidth_measured for d in devices if d.kind == "cpu")
        measurement = measurement_of(fit_plan, result.tg.mean, result.pp.mean, host_measured)
        calibrated = record(measurement, speed)
    if args.json:
        _print_json(bench_dict(spec, fit_plan, result, calibrated is not None))
    else:
        width = min(shutil.get_terminal_size((80, 24)).columns, 100)
        sys.stdout.write(bench_text(spec, fit_plan, result, calibrated is not None, width=width))
    return 0


class _ProgressLine:
    """Progress on stderr: one rewritten line on a terminal, else a line per tenth."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.tenths = -1

    def show(self, line: str, fraction: float) -> None:
        if not self.enabled:
            return
        if self.interactive:
            sys.stderr.write(f"\r\x1b[2K{line}")
            sys.stderr.flush()
        elif int(fraction * 10) > self.tenths:
            self.tenths = int(fraction * 10)
            print(line, file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.interactive:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def cmd_quantize(argv: Sequence[str]) -> int:
    args = _quantize_parser().parse_args(argv)
    import contextlib

    from llmtune.engine.quantize import (
        QuantizePlan,
        QuantizeResult,
        QuantizeStep,
        prepare_quantize,
        run_quantize,
    )
    from llmtune.engine.report import (
        quantize_dict,
        quantize_plan_lines,
        quantize_result_line,
        quantize_step_line,
    )

    job = prepare_quantize(
        args.model,
        args.to,
        args.output,
        allow_requantize=args.allow_requantize,
        imatrix=args.imatrix,
        force=args.force,
        threads=args.threads,
    )
    if not args.json:
        for warning in job.warnings:
            print(f"llmtune: warning: {warning}", file=sys.stderr)
    progress = _ProgressLine(not args.json)
    result = None
    try:
        with contextlib.closing(run_quantize(job)) as updates:
            for update in updates:
                if isinstance(update, QuantizePlan) and not args.json:
                    print("\n".join(quantize_plan_lines(update)), flush=True)
                elif isinstance(update, QuantizeStep):
                    progress.show(quantize_step_line(update, job), update.fraction)
                elif isinstance(update, QuantizeResult):
                    result = update
    except KeyboardInterrupt:
        progress.clear()
        print("llmtune: quantization cancelled; nothing was written", file=sys.stderr)
        return 130
    finally:
        progress.clear()
    assert result is not None
    if args.json:
        _print_json(quantize_dict(result))
    else:
        print(quantize_result_line(result))
    return 0


def _given(argv: Sequence[str], *flags: str) -> bool:
    """Whether the user wrote one of ``flags`` (as ``--flag value`` or ``--flag=value``)."""
    return any(a == f or a.startswith(f + "=") for a in argv for f in flags)


def cmd_tune(argv: Sequence[str]) -> int:
    args = _tune_parser().parse_args(argv)
    from llmtune.engine.report import trial_row, tune_dict, tune_header_lines, tune_summary_lines
    from llmtune.engine.tune import DEFAULT_UBATCHES, Trial, TrialBench, Tuner, TuneSpace
    from llmtune.errors import ConfigError, WorkerError
    from llmtune.model import read_spec

    if args.gpu or args.ram or args.host or args.quant or args.list_gpus:
        raise ConfigError(
            "tune runs the model on this machine; --gpu, --list-gpus, --ram, --host and "
            "--quant are for fit",
            "llmtune tune",
        )
    threads: tuple[int, ...] = ()
    if args.threads:
        try:
            threads = tuple(sorted({int(x) for x in args.threads.split(",") if x.strip()}))
        except ValueError:
            raise ConfigError(
                f"not a list of whole numbers: {args.threads!r}", "--threads"
            ) from None
        if not threads or min(threads) < 1:
            raise ConfigError("thread counts must be 1 or more", "--threads")
    for flag, value in (
        ("--gen-tokens", args.gen_tokens),
        ("--repeat", args.repeat),
        ("--max-trials", args.max_trials),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1", flag)
    if args.prompt_tokens is not None and args.prompt_tokens < 1:
        raise ConfigError("--prompt-tokens must be at least 1", "--prompt-tokens")
    devices, _ = _devices_from_args(args)
    settings = _settings_from_args(args)
    if threads and len(threads) == 1:
        settings = settings.with_(threads=threads[0])
    from llmtune.fit.options import given_fields

    given = given_fields(args)  # what the user fixed; the rest is searched
    space = TuneSpace(
        threads=threads,
        flash_attn=(settings.flash_attn,) if "flash_attn" in given else ("on", "off"),
        ubatch=(settings.n_ubatch,) if "n_ubatch" in given else DEFAULT_UBATCHES,
        cache_types=() if given & {"cache_type_k", "cache_type_v"} else ("f16", "q8_0", "q4_0"),
        gpu_layers="n_gpu_layers" not in given,
        moe="n_cpu_moe" not in given,
    )
    bench = TrialBench.for_objective(args.objective)
    bench = TrialBench(
        prompt_tokens=args.prompt_tokens or bench.prompt_tokens,
        gen_tokens=args.gen_tokens,
        repeat=args.repeat,
    )
    spec = read_spec(args.model)
    progress = _ProgressLine(not args.json and sys.stderr.isatty())
    printed_header = [False]

    def on_trial(trial: Trial) -> None:
        progress.clear()
        if args.json:
            return
        if not printed_header[0]:
            printed_header[0] = True
            header = tune_header_lines(spec.name, spec.file_type_name, tuner.n_ctx, args.objective)
            print("\n".join(header))
        print(trial_row(trial), flush=True)

    tuner = Tuner(
        spec,
        devices,
        settings,
        objective=args.objective,
        space=space,
        bench=bench,
        speed=_speed_model(True),
        max_trials=args.max_trials,
        on_trial=on_trial,
        on_progress=lambda line: progress.show(line, 0.0),
    )
    try:
        result = tuner.run()
    finally:
        progress.clear()
    if result.best is None and not result.cancelled:
        why = next((t.reason for t in result.trials if t.reason), "no trial ran")
        raise WorkerError(f"no configuration ran here: {why}", "llmtune tune")
    if args.json:
        _print_json(tune_dict(result, spec))
    else:
        print()
        print("\n".join(tune_summary_lines(result)))
    if result.cancelled:
        print("llmtune: tuning cancelled; the best so far is above", file=sys.stderr)
        return 130
    return 0


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
    import math

    from llmtune.errors import ConfigError

    args = _app_parser().parse_args(argv)
    if not math.isfinite(args.interval) or args.interval <= 0:
        what = f"the interval must be a positive number of seconds, not {args.interval}"
        raise ConfigError(what, "--interval")
    from llmtune.model import read_spec
    from llmtune.ui.app import AppOptions, LlmtuneApp, default_sampler_factory, machine_hardware

    spec = read_spec(args.model) if args.model else None
    theme = args.theme
    if theme is not None:
        from textual.theme import BUILTIN_THEMES

        if theme not in BUILTIN_THEMES:
            from llmtune.hardware.profiles import close_names

            close = close_names(theme, list(BUILTIN_THEMES))
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown theme {theme!r}{hint}", "--theme")
    hardware = machine_hardware(args.gpu)
    app = LlmtuneApp(
        spec,
        os.path.abspath(args.model) if args.model else None,
        hardware,
        options=AppOptions(interval_s=max(0.2, args.interval), compact=args.compact, theme=theme),
        sampler_factory=default_sampler_factory,
    )
    app.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "inspect":
            return cmd_inspect(args[1:])
        if args and args[0] == "fit":
            return cmd_fit(args[1:])
        if args and args[0] == "bench":
            return cmd_bench(args[1:])
        if args and args[0] == "quantize":
            return cmd_quantize(args[1:])
        if args and args[0] == "tune":
            return cmd_tune(args[1:])
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
